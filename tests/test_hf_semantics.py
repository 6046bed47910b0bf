"""Hugging Face semantics kept: BERT models on the "sparsebert" attention implementation and on the
unpadded encoder behave like the same weights on "sdpa" (and "eager") in what transformers' own
BERT tests check: every task head, batching, cross-attention, the KV cache, generation,
save/load, switching implementations, output_attentions, and training (gradients, dropout,
gradient checkpointing). Tiny random models, padded batches."""

import pytest
import torch
import transformers
from transformers import BertConfig

import sparsebert
import sparsebert.hf

VOCAB, SEQ = 100, 9
LENGTHS = (9, 5, 1)  # right padding, as BERT tokenizers pad
ENCODER_HEADS = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
                 "BertForQuestionAnswering", "BertForMultipleChoice", "BertForNextSentencePrediction",
                 "BertForPreTraining")


def config(**kw) -> BertConfig:
    args = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, num_labels=3)
    args.update(kw)
    return BertConfig(**args)


def model_of(head: str, impl: str = "sdpa", seed: int = 0, **kw):
    if head == "BertForQuestionAnswering":
        kw.setdefault("num_labels", 2)  # start and end logits
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config(**kw)).eval()
    model.set_attn_implementation(impl)
    return model


def padded(lengths=LENGTHS, seq=SEQ, seed=1, left=False):
    """input_ids / token_type_ids / attention_mask of a padded batch, and its [batch, seq] keep-mask."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    if left:
        keep = keep.flip(1)
    ids = torch.randint(5, VOCAB, (len(lengths), seq), generator=g) * keep
    types = (torch.arange(seq)[None, :] >= seq // 2).long().expand_as(ids) * keep
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": keep.long()}, keep


def head_inputs(head: str):
    """Inputs with labels for a task head (padding labelled -100), and the keep-mask of its
    per-token outputs (None when outputs are per sequence)."""
    inputs, keep = padded()
    b = keep.shape[0]
    g = torch.Generator().manual_seed(2)
    token_labels = torch.randint(0, VOCAB, keep.shape, generator=g).masked_fill(~keep, -100)
    if head == "BertForMaskedLM":
        inputs["labels"] = token_labels
    elif head == "BertForTokenClassification":
        inputs["labels"] = torch.randint(0, 3, keep.shape, generator=g).masked_fill(~keep, -100)
    elif head == "BertForSequenceClassification":
        inputs["labels"] = torch.tensor([0, 2, 1])
    elif head == "BertForQuestionAnswering":
        inputs["start_positions"], inputs["end_positions"] = torch.tensor([1, 0, 0]), torch.tensor([4, 3, 0])
    elif head == "BertForNextSentencePrediction":
        inputs["labels"] = torch.tensor([0, 1, 1])
    elif head == "BertForPreTraining":
        inputs["labels"], inputs["next_sentence_label"] = token_labels, torch.tensor([1, 0, 1])
    elif head == "BertForMultipleChoice":
        second, keep2 = padded(lengths=(3, 9, 6), seed=3)
        inputs = {k: torch.stack([inputs[k], second[k]], 1) for k in inputs}  # (B, choices, S)
        inputs["labels"] = torch.tensor([1, 0, 1])
        return inputs, None
    elif head == "BertLMHeadModel":
        inputs["labels"] = token_labels
    assert b == 3
    return inputs, keep


def assert_close(out, ref, keep=None, tol=1e-5):
    """|out - ref| <= tol * max(1, max |ref|) at the kept positions (all when keep is None):
    float32 rounding of a few reductions of size <= 64, scaled to the outputs' magnitude."""
    if keep is not None and out.shape[: keep.dim()] == keep.shape:
        out, ref = out[keep], ref[keep]
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), f"max abs diff {err:.3g}"


def assert_outputs_close(out, ref, keep=None, tol=1e-5, skip=()):
    tensors = [k for k, v in ref.items() if isinstance(v, torch.Tensor)]
    assert tensors and tensors == [k for k, v in out.items() if isinstance(v, torch.Tensor)]
    for key in tensors:
        if key not in skip:
            assert_close(out[key], ref[key], keep, tol)


def infer(model, inputs, **kw):
    with torch.inference_mode():
        return model(**inputs, **kw)


# --- every task head ------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ENCODER_HEADS)
def test_encoder_head_matches_sdpa(head):
    """Padded sparsebert attention and the unpadded encoder against sdpa: every output tensor
    (loss included) at real tokens; padded sparsebert also at padding positions."""
    model = model_of(head)
    inputs, keep = head_inputs(head)
    ref = infer(model, inputs)
    model.set_attn_implementation("sparsebert")
    assert_outputs_close(infer(model, inputs), ref)
    sparsebert.use_unpadded(model)
    # Question answering's loss is a softmax over every position, padding included: it reads the
    # padding positions, which the unpadded encoder leaves at zero (documented in use_unpadded).
    skip = ("loss",) if head == "BertForQuestionAnswering" else ()
    assert_outputs_close(infer(model, inputs), ref, keep, skip=skip)


def test_decoder_head_matches_sdpa_and_refuses_unpadded():
    model = model_of("BertLMHeadModel", is_decoder=True)
    inputs, keep = head_inputs("BertLMHeadModel")
    ref = infer(model, inputs, use_cache=False)
    model.set_attn_implementation("sparsebert")
    assert_outputs_close(infer(model, inputs, use_cache=False), ref, keep)
    model.set_attn_implementation("eager")
    assert_outputs_close(infer(model, inputs, use_cache=False), ref, keep)
    with pytest.raises(TypeError, match="layer 0 is a decoder layer; only bidirectional encoders are supported"):
        sparsebert.use_unpadded(model)
    assert model.config._attn_implementation == "eager"  # refused before changing anything


def test_hidden_states_padded_and_unpadded():
    """output_hidden_states: per layer as sdpa on the padded path; packed [1, tokens, hidden] on the
    unpadded encoder, as use_unpadded documents."""
    model = model_of("BertModel")
    inputs, keep = padded()
    ref = infer(model, inputs, output_hidden_states=True).hidden_states
    model.set_attn_implementation("sparsebert")
    out = infer(model, inputs, output_hidden_states=True).hidden_states
    assert len(out) == len(ref) == 3
    for o, r in zip(out, ref):
        assert_close(o, r)
    sparsebert.use_unpadded(model)
    out = infer(model, inputs, output_hidden_states=True).hidden_states
    assert_close(out[-1], ref[-1], keep)
    for o, r in zip(out[:-1], ref[:-1]):  # the embeddings' output and each layer's but the last
        assert o.shape == (1, int(keep.sum()), 32)
        assert_close(o[0], r[keep])


def test_inputs_embeds_position_ids_and_tuple_outputs():
    """inputs_embeds instead of input_ids, explicit position_ids, return_dict=False: as sdpa."""
    model = model_of("BertForTokenClassification")
    inputs, keep = padded()
    inputs["inputs_embeds"] = model.get_input_embeddings()(inputs.pop("input_ids"))
    inputs["position_ids"] = torch.arange(SEQ).flip(0).expand(3, SEQ)
    ref = infer(model, inputs, return_dict=False)
    for unpadded in (False, True):
        if unpadded:
            sparsebert.use_unpadded(model)
        else:
            model.set_attn_implementation("sparsebert")
        out = infer(model, inputs, return_dict=False)
        assert isinstance(out, tuple) and len(out) == len(ref) == 1
        assert_close(out[0], ref[0], keep)


# --- batching -------------------------------------------------------------------------------------


@pytest.mark.parametrize("unpadded", [False, True])
def test_batch_rows_equal_sequences_alone(unpadded):
    model = model_of("BertModel", "sparsebert")
    if unpadded:
        sparsebert.use_unpadded(model)
    inputs, keep = padded(lengths=(9, 5, 1, 7))
    out = infer(model, inputs)
    for i, n in enumerate(keep.sum(1).tolist()):
        alone = infer(model, {k: v[i : i + 1, :n] for k, v in inputs.items() if k != "attention_mask"})
        assert_close(out.last_hidden_state[i, :n], alone.last_hidden_state[0])
        assert_close(out.pooler_output[i], alone.pooler_output[0])


# --- decoder: cross-attention, KV cache, generation -------------------------------------------------


def encoder_states(b=3, s=6, hidden=32):
    g = torch.Generator().manual_seed(4)
    states = torch.randn(b, s, hidden, generator=g)
    mask = (torch.arange(s)[None, :] < torch.tensor([6, 2, 4])[:, None]).long()
    return {"encoder_hidden_states": states, "encoder_attention_mask": mask}


def test_cross_attention_matches_sdpa_and_eager():
    model = model_of("BertModel", is_decoder=True, add_cross_attention=True)
    inputs, keep = padded()
    inputs.update(encoder_states())
    ref = infer(model, inputs, use_cache=False).last_hidden_state
    for impl in ("sparsebert", "eager"):
        model.set_attn_implementation(impl)
        assert_close(infer(model, inputs, use_cache=False).last_hidden_state, ref, keep)
    # Garbage in the encoder's padding changes nothing: the encoder mask reaches the kernel.
    model.set_attn_implementation("sparsebert")
    noisy = {**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"].clone()}
    noisy["encoder_hidden_states"][1, 2:] = 1e3
    assert_close(infer(model, noisy, use_cache=False).last_hidden_state, ref, keep)


def test_unpadded_refuses_encoder_states():
    """An encoder-only BERT ignores encoder_hidden_states on sdpa; the unpadded encoder says so."""
    model = sparsebert.use_unpadded(model_of("BertModel"))
    inputs, _ = padded()
    with pytest.raises(ValueError, match="unpadded encoder runs bidirectional self-attention only"):
        infer(model, {**inputs, **encoder_states()})


@pytest.mark.parametrize("cross", [False, True])
def test_kv_cache_steps_equal_full_forward(cross):
    """Prefix, then one token at a time with past_key_values: the logits of every step equal the
    full forward's at that position (left-padded batch, the mask grown by one each step)."""
    model = model_of("BertLMHeadModel", "sparsebert", is_decoder=True, add_cross_attention=cross)
    inputs, keep = padded(lengths=(9, 6, 3), left=True)
    inputs.pop("token_type_ids")
    extra = encoder_states() if cross else {}
    full = infer(model, {**inputs, **extra}, use_cache=False).logits
    model.set_attn_implementation("sdpa")
    assert_close(full, infer(model, {**inputs, **extra}, use_cache=False).logits, keep)
    model.set_attn_implementation("sparsebert")
    ids, mask, prefix = inputs["input_ids"], inputs["attention_mask"], 5
    out = infer(model, {"input_ids": ids[:, :prefix], "attention_mask": mask[:, :prefix], **extra}, use_cache=True)
    assert_close(out.logits, full[:, :prefix], keep[:, :prefix])
    past = out.past_key_values
    for t in range(prefix, SEQ):
        out = infer(model, {"input_ids": ids[:, t : t + 1], "attention_mask": mask[:, : t + 1], **extra},
                    past_key_values=past, use_cache=True)
        past = out.past_key_values
        assert past.get_seq_length() == t + 1
        assert_close(out.logits[:, 0], full[:, t], keep[:, t])


def test_generate_greedy_equals_sdpa():
    model = model_of("BertLMHeadModel", is_decoder=True)
    inputs, _ = padded(lengths=(7, 4, 2), seq=7, left=True)
    inputs.pop("token_type_ids")
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        ref = model.generate(**inputs, **kw)
        model.set_attn_implementation("sparsebert")
        out = model.generate(**inputs, **kw)
        no_cache = model.generate(**inputs, **kw, use_cache=False)
    assert ref.shape == (3, 12)
    assert torch.equal(out, ref)
    assert torch.equal(no_cache, ref)


# --- save / load, switching implementations ---------------------------------------------------------


def test_save_pretrained_round_trip_keeps_implementation(tmp_path):
    model = model_of("BertForSequenceClassification", "sparsebert")
    inputs, _ = padded()
    ref = infer(model, inputs).logits
    model.save_pretrained(tmp_path)
    loaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="sparsebert")
    assert loaded.config._attn_implementation == "sparsebert"
    assert all(layer.attention.self.config._attn_implementation == "sparsebert" for layer in loaded.bert.encoder.layer)
    assert torch.equal(infer(loaded.eval(), inputs).logits, ref)
    auto = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="sparsebert")
    assert auto.config._attn_implementation == "sparsebert"
    assert torch.equal(infer(auto.eval(), inputs).logits, ref)


def test_switching_implementations_back_and_forth():
    model = model_of("BertModel")
    inputs, keep = padded()
    ref = infer(model, inputs).last_hidden_state
    for impl in ("sparsebert", "sdpa", "eager", "sparsebert", "eager"):
        model.set_attn_implementation(impl)
        assert model.config._attn_implementation == impl
        assert_close(infer(model, inputs).last_hidden_state, ref, keep)


def test_unpadded_restores_each_previous_implementation():
    """use_unpadded then enabled=False returns to whatever ran before (eager, then sdpa), which
    then runs; while unpadded, the model runs sparsebert."""
    model = model_of("BertModel", "eager")
    inputs, keep = padded()
    ref = infer(model, inputs).last_hidden_state
    for before in ("eager", "sdpa"):
        model.set_attn_implementation(before)
        sparsebert.use_unpadded(model)
        assert model.config._attn_implementation == "sparsebert"
        assert_close(infer(model, inputs).last_hidden_state, ref, keep)
        sparsebert.use_unpadded(model, enabled=False)
        assert model.config._attn_implementation == before
        assert_close(infer(model, inputs).last_hidden_state, ref, keep)
    model.set_attn_implementation("eager")
    assert_close(infer(model, inputs).last_hidden_state, ref, keep)


# --- output_attentions ----------------------------------------------------------------------------


def test_output_attentions_raises_clearly():
    """transformers' "sdpa" logs a warning and returns no weights for output_attentions=True; the
    sparsebert implementation refuses instead, padded and unpadded, pointing to "eager"."""
    model = model_of("BertModel", "sparsebert")
    inputs, keep = padded()
    match = r"never materializes attention weights: output_attentions=True is not supported. Use the 'eager'"
    with pytest.raises(ValueError, match=match):
        infer(model, inputs, output_attentions=True)
    assert infer(model, inputs, output_attentions=False).attentions is None
    sparsebert.use_unpadded(model)
    with pytest.raises(ValueError, match=match):
        infer(model, inputs, output_attentions=True)
    sparsebert.use_unpadded(model, enabled=False)
    with pytest.raises(ValueError, match="not supported when using the `attn_implementation` set to sparsebert"):
        model.config.output_attentions = True  # transformers' own check, for every implementation but eager
    model.set_attn_implementation("eager")
    attentions = infer(model, inputs, output_attentions=True).attentions
    assert len(attentions) == 2 and attentions[0].shape == (3, 4, SEQ, SEQ)


# --- training ---------------------------------------------------------------------------------------


def gradients(model, inputs):
    model.zero_grad()
    model(**inputs).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("head", ["BertForSequenceClassification", "BertForMaskedLM"])
@pytest.mark.parametrize("unpadded", [False, True])
def test_gradients_match_sdpa(head, unpadded):
    """d loss / d every parameter (dropout off), through the differentiable references."""
    model = model_of(head)
    inputs, _ = head_inputs(head)
    ref = gradients(model, inputs)
    if unpadded:
        sparsebert.use_unpadded(model)
    else:
        model.set_attn_implementation("sparsebert")
    got = gradients(model, inputs)
    assert got.keys() == ref.keys() and any("attention.self.query" in n for n in got)
    for name in ref:
        err = (got[name] - ref[name]).abs().max().item()
        assert err <= 1e-5 * max(1.0, ref[name].abs().max().item()), f"{name}: max abs diff {err:.3g}"


@pytest.mark.parametrize("unpadded", [False, True])
def test_train_mode_attention_dropout(unpadded):
    """model.train() with attention dropout: runs, differs from eval, is reproducible under a
    seed; on the padded path it draws the same dropout mask as sdpa, so it equals sdpa's output."""
    model = model_of("BertModel", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.3)
    inputs, keep = padded()
    sdpa_eval = infer(model, inputs).last_hidden_state
    model.train()
    torch.manual_seed(5)
    sdpa_train = model(**inputs).last_hidden_state
    if unpadded:
        sparsebert.use_unpadded(model)
    else:
        model.set_attn_implementation("sparsebert")
    model.eval()
    assert_close(infer(model, inputs).last_hidden_state, sdpa_eval, keep)
    model.train()
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        with torch.no_grad():  # dropout alone selects the training path
            runs.append(model(**inputs).last_hidden_state)
    assert torch.equal(runs[0], runs[1])
    assert (runs[0] - runs[2])[keep].abs().max() > 1e-2
    assert (runs[0] - sdpa_eval)[keep].abs().max() > 1e-2
    if not unpadded:
        assert_close(runs[0], sdpa_train, keep)


@pytest.mark.parametrize("unpadded", [False, True])
def test_gradient_checkpointing_train_step(unpadded):
    """With gradient checkpointing, a train step (dropout on) gives the gradients of the same step
    without it, and the optimizer step changes the loss."""
    model = model_of("BertForSequenceClassification", "sparsebert")
    if unpadded:
        sparsebert.use_unpadded(model)
    inputs, _ = head_inputs("BertForSequenceClassification")
    model.train()
    torch.manual_seed(7)
    ref = gradients(model, inputs)
    model.activation_checkpointing_enable()  # transformers 5's name for gradient_checkpointing_enable
    assert model.is_activation_checkpointing
    torch.manual_seed(7)
    got = gradients(model, inputs)
    for name in ref:
        assert_close(got[name], ref[name])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.eval()
    before = model(**inputs).loss.item()
    opt.zero_grad()
    model(**inputs).loss.backward()
    opt.step()
    assert model(**inputs).loss.item() < before


def test_inference_routes_to_kernels_training_to_references(monkeypatch):
    calls = {}

    def counted(name):
        fn = getattr(sparsebert.hf, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        monkeypatch.setattr(sparsebert.hf, name, wrapper)

    for name in ("attention", "attention_reference", "attention_varlen", "attention_varlen_reference"):
        counted(name)
    model = model_of("BertModel", "sparsebert", attention_probs_dropout_prob=0.1)
    inputs, _ = padded()

    def used(run):
        calls.clear()
        run()
        return dict(calls)

    assert used(lambda: infer(model, inputs)) == {"attention": 2}
    with torch.no_grad():
        assert used(lambda: model(**inputs)) == {"attention": 2}
    assert used(lambda: model(**inputs)) == {"attention_reference": 2}  # grad mode on, parameters need grad
    model.requires_grad_(False)
    assert used(lambda: model(**inputs)) == {"attention": 2}  # nothing needs a gradient
    model.train()
    assert used(lambda: infer(model, inputs)) == {"attention_reference": 2}  # attention dropout
    model.eval().requires_grad_(True)
    sparsebert.use_unpadded(model)
    assert used(lambda: infer(model, inputs)) == {"attention_varlen": 2}
    assert used(lambda: model(**inputs)) == {"attention_varlen_reference": 2}
    model.train()
    assert used(lambda: infer(model, inputs)) == {"attention_varlen_reference": 2}
