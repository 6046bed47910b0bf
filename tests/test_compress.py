"""sparsebert.compress: formats per config, task heads, the measured choice, the calibrated INT8
ladder, the timing cache, atomic failure, and bad input."""

import copy
import json
import re
import sys
import warnings

import pytest
import torch
from torch import nn

import sparsebert
from sparsebert import CompressConfig, Int8Linear, SparseInt8Linear, SparseLinear, compress
from sparsebert.compress import STATE_ATTR, min_cosine, pooled_output
from sparsebert.hf import fuse_layer_norms, unfuse_layer_norms
from sparsebert.prune import block_magnitude_mask
from sparsebert.report import format_report
from model_helpers import HEADS, first_output, tiny_bert, tiny_inputs

CONVERTED = (SparseLinear, Int8Linear, SparseInt8Linear)
compress_mod = sys.modules["sparsebert.compress"]  # the module (the package attribute is the function)


def encoder_linears(model):
    return {n: m for n, m in model.named_modules() if ".encoder." in f".{n}" and
            (type(m) is nn.Linear or isinstance(m, CONVERTED))}


def pruned_copy(model, sparsity, block_size):
    """The reference: every encoder Linear pruned by block magnitude, dense."""
    ref = copy.deepcopy(model)
    for name, m in encoder_linears(ref).items():
        with torch.no_grad():
            m.weight.mul_(block_magnitude_mask(m.weight, sparsity, block_size))
    return ref


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("head", HEADS)
def test_sparse_fp32_equals_the_pruned_model(head):
    model = tiny_bert(head)
    ref = pruned_copy(model, 0.5, (16, 16))
    compress(model, CompressConfig(sparsity=0.5, block_size=(16, 16), kernel="sparse"))
    layers = encoder_linears(model)  # query, key and value as one layer (fuse_qkv)
    assert len(layers) == 8 and all(isinstance(m, SparseLinear) for m in layers.values())
    assert all(m.sparsity == pytest.approx(0.5) for m in layers.values())
    inputs = tiny_inputs()
    out, expect = first_output(model, inputs), first_output(ref, inputs)
    keep = inputs["attention_mask"].bool()
    if out.dim() == 3:  # compare real tokens (padding positions are not defined)
        out, expect = out[keep], expect[keep]
    assert rel_err(out, expect) < 1e-5
    # heads and pooler stay nn.Linear (the default skip patterns)
    for name, m in model.named_modules():
        if any(k in name for k in ("classifier", "pooler", "cls.")) and isinstance(m, nn.Module) and hasattr(m, "weight"):
            assert not isinstance(m, CONVERTED), name


@pytest.mark.parametrize("head", HEADS)
def test_sparse_int8_is_close_to_the_pruned_model(head):
    model = tiny_bert(head)
    ref = pruned_copy(model, 0.5, (16, 16))
    compress(model, CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic", kernel="sparse"))
    assert all(isinstance(m, SparseInt8Linear) for m in encoder_linears(model).values())
    inputs = tiny_inputs(padded=False)
    # int8 error of 12 chained layers: a few percent (each layer ~1%, tests/test_int8_modules.py)
    assert rel_err(first_output(model, inputs), first_output(ref, inputs)) < 0.06


@pytest.mark.parametrize("int8,cls,weight_only", [("dynamic", Int8Linear, False), ("weight_only", Int8Linear, True)])
def test_dense_int8(int8, cls, weight_only):
    model = tiny_bert()
    ref = copy.deepcopy(model)
    compress(model, CompressConfig(int8=int8, kernel="dense"))
    layers = encoder_linears(model)
    assert all(isinstance(m, cls) and m.weight_only == weight_only for m in layers.values())
    inputs = tiny_inputs(padded=False)
    assert rel_err(first_output(model, inputs), first_output(ref, inputs)) < (0.01 if weight_only else 0.06)


def test_auto_keeps_the_fastest_measured_candidate_and_reports_why():
    model = tiny_bert()
    compress(model, CompressConfig(sparsity=0.9, block_size=(16, 16), int8="dynamic"))
    rep = sparsebert.report(model)
    assert isinstance(rep, list) and len(rep) == 12
    for row in rep:
        # the choice is the fastest measured candidate, and dense is a candidate
        assert row["speedup"] >= 1.0, row
        assert row["format"] in ("dense", "int8", "sparse_int8") and row["reason"]
        timings = model.sparsebert_state["layers"][row["name"]]["timings"]
        assert timings[row["format"]] == min(timings[f] for f in ("dense", "int8", "sparse_int8"))
    assert rep.totals["slower_than_dense"] == []


def test_per_layer_sparsity_patterns():
    model = tiny_bert()
    compress(model, CompressConfig(sparsity={"*.intermediate.dense": 0.75, "*.attention.*": 0.5},
                                   block_size=(16, 16), kernel="sparse"))
    for name, m in encoder_linears(model).items():
        want = 0.75 if name.endswith("intermediate.dense") else 0.5 if ".attention." in name else 0.0
        assert m.sparsity == pytest.approx(want), name


def test_filter_fn_and_skip():
    model = tiny_bert()
    compress(model, CompressConfig(int8="dynamic", kernel="dense", skip=("*.output.dense",)),
             filter_fn=lambda module, name: "layer.0." in name)
    converted = {n for n, m in model.named_modules() if isinstance(m, CONVERTED)}
    assert converted == {f"encoder.layer.0.{s}" for s in ("attention.self.qkv", "intermediate.dense")}


def test_attention_settings():
    inputs = tiny_inputs()
    keep = inputs["attention_mask"].bool()
    for attention, impl in (("sparsebert", "sparsebert"), (None, "sdpa")):
        model = tiny_bert()
        expect = first_output(model, inputs)
        compress(model, CompressConfig(attention=attention, kernel="dense"))
        assert model.config._attn_implementation == impl
        assert rel_err(first_output(model, inputs)[keep], expect[keep]) < 1e-5
    model = tiny_bert()
    expect = first_output(model, inputs)
    compress(model, CompressConfig(attention="unpadded", kernel="dense"))
    out = first_output(model, inputs)
    assert rel_err(out[keep], expect[keep]) < 1e-5
    assert torch.count_nonzero(out[~keep]) == 0  # padding positions are zeros on the packed path


def test_bfloat16():
    model = tiny_bert()
    ref = pruned_copy(model, 0.5, (16, 16))
    compress(model, CompressConfig(sparsity=0.5, block_size=(16, 16), kernel="sparse", dtype="bfloat16"))
    inputs = tiny_inputs(padded=False)
    out = first_output(model, inputs)
    assert out.dtype == torch.bfloat16
    assert all(m.values.dtype == torch.bfloat16 for m in encoder_linears(model).values())
    assert rel_err(out, first_output(ref, inputs)) < 0.03  # bf16 rounding through 2 layers


def test_calibrated_ladder_holds_the_budget():
    model = tiny_bert()
    ref = copy.deepcopy(model)
    calib = tiny_inputs(batch=8, seq=16, seed=3)
    compress(model, CompressConfig(int8="dynamic", kernel="dense", min_cosine=0.9999), example_inputs=calib)
    cal = model.sparsebert_state["calibration"]
    assert cal["met"] and cal["min_cosine"] >= cal["target"] >= 0.9999
    with torch.inference_mode():
        got = min_cosine(pooled_output(model(**calib), calib["attention_mask"]),
                         pooled_output(ref(**calib), calib["attention_mask"]))
    assert got == pytest.approx(cal["min_cosine"], abs=1e-6)  # the summary is what the model does
    formats = {r["format"] for r in list(sparsebert.report(model))}
    assert formats <= {"int8", "int8_weight_only", "dense"}


def test_calibration_keeps_the_fastest_mode_when_the_budget_allows():
    model = tiny_bert()
    calib = tiny_inputs(batch=8, seq=16, seed=3)
    compress(model, CompressConfig(int8="dynamic", kernel="dense", min_cosine=0.5), example_inputs=calib)
    rows = list(sparsebert.report(model))
    assert all(r["format"] == "int8" and r["act_quant"] == "per_token" and not r["smooth"] for r in rows)
    assert model.sparsebert_state["calibration"]["steps"] == 0


def test_timing_cache_makes_the_second_compress_measure_nothing(tmp_path, monkeypatch):
    calls = []
    real = compress_mod.time_methods
    monkeypatch.setattr(compress_mod, "time_methods", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "t.json"
    compress(tiny_bert(), CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic"), cache=str(cache))
    assert calls and cache.is_file()
    calls.clear()
    compress(tiny_bert(seed=5), CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic"), cache=str(cache))
    assert calls == []
    cache.write_text("{not json")  # a damaged cache is an empty one
    compress(tiny_bert(), CompressConfig(int8="dynamic"), cache=str(cache))
    assert calls


def test_formats_are_compared_only_within_one_timing_run(tmp_path, monkeypatch):
    # A time cached by one compress is never set against a time taken by another: the second
    # compress asks for a new group of formats (INT8 added), so it times dense again beside them.
    groups = []
    real = compress_mod.time_methods
    monkeypatch.setattr(compress_mod, "time_methods",
                        lambda methods, **k: groups.append({m.name for m in methods}) or real(methods, **k))
    cache = tmp_path / "t.json"
    compress(tiny_bert(), CompressConfig(sparsity=0.5, block_size=(16, 16)), cache=str(cache))
    assert groups and all(g == {"dense", "sparse"} for g in groups)
    groups.clear()
    compress(tiny_bert(), CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic"), cache=str(cache))
    assert groups and all("dense" in g and len(g) > 1 for g in groups), groups


def test_one_slow_cached_time_does_not_decide_later_compresses(tmp_path):
    # Caches of the earlier format (one entry per format, whatever run it came from) are
    # dropped: a 10 s time left there for INT8 no longer keeps a layer dense.
    from sparsebert.measure import TimingCache

    cache = tmp_path / "t.json"
    old = TimingCache(None)
    key = json.loads(old.key(format="int8", shape=[64, 64], tokens=128, dtype="float32", block=None, density=None))
    cache.write_text(json.dumps({"version": 1, "timings": {json.dumps(key, sort_keys=True): 10.0}}))
    model = compress(tiny_bert(), CompressConfig(int8="dynamic", kernel="auto"), cache=str(cache))
    layers = model.sparsebert_state["layers"]
    assert all(t < 1.0 for info in layers.values() for t in info["timings"].values()), layers
    assert json.loads(cache.read_text())["version"] == TimingCache.VERSION == 2
    assert all('"group"' in k for k in json.loads(cache.read_text())["timings"])


def test_unstructured_zeros_warn():
    model = tiny_bert()
    for m in encoder_linears(model).values():
        with torch.no_grad():
            m.weight.mul_(torch.rand_like(m.weight) > 0.9)  # ~90% unstructured
    with pytest.warns(UserWarning) as record:
        compress(model, CompressConfig(block_size=(16, 16)))
    texts = [str(w.message) for w in record]
    assert len(texts) == 12  # one per layer, each naming it and both shares
    assert all(re.search(r"^encoder\.layer\.\d\.\S+: (8|9)\d\.\d% of the weight is zeros but only 0\.0% lies in "
                         r"empty 16x16 blocks", t) for t in texts), texts
    assert all("Prune in blocks" in t for t in texts)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()],
            model.config._attn_implementation)


def assert_unchanged(model, snap):
    state, types, attn = snap
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    assert [type(m) for m in model.modules()] == types
    assert model.config._attn_implementation == attn
    assert getattr(model, STATE_ATTR, None) is None and getattr(model, "hf_quantizer", None) is None


def test_failure_leaves_the_model_unchanged(monkeypatch):
    model = tiny_bert()
    snap = snapshot(model)
    real, n = compress_mod._build, []

    def failing(*a, **k):
        n.append(1)
        if len(n) == 20:
            raise RuntimeError("injected failure")
        return real(*a, **k)

    monkeypatch.setattr(compress_mod, "_build", failing)
    with pytest.raises(RuntimeError, match="injected"):
        compress(model, CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic", attention="unpadded"),
                 example_inputs=tiny_inputs(batch=4))
    assert_unchanged(model, snap)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), r"sparsity must be a number in \[0, 1\), got 1.0"),
    (dict(sparsity=-0.1), r"sparsity must be a number in \[0, 1\), got -0.1"),
    (dict(sparsity="90%"), r"sparsity must be a number in \[0, 1\), got '90%'"),
    (dict(sparsity={"*.query": 2}), r"sparsity\['\*.query'\] must be a number in \[0, 1\), got 2"),
    (dict(block_size=(0, 32)), r"block_size must be a pair of positive ints, got \(0, 32\)"),
    (dict(block_size=(32,)), r"block_size must be a pair \(block_rows, block_cols\), got \(32,\)"),
    (dict(int8="fp8"), r"int8 must be one of \('dynamic', 'weight_only'\) or None, got 'fp8'"),
    (dict(act_quant="per_row"), r"act_quant must be one of .* got 'per_row'"),
    (dict(dtype="float16"), r"dtype must be one of \['float32', 'bfloat16'\], got 'float16'"),
    (dict(attention="flash"), r"attention must be one of \('sparsebert', 'unpadded'\) or None, got 'flash'"),
    (dict(kernel="fast"), r"kernel must be one of \('auto', 'sparse', 'dense'\), got 'fast'"),
    (dict(kernel="sparse", int8="weight_only"), r"no block-sparse weight-only kernel"),
    (dict(min_cosine=1.5), r"min_cosine must be a number in \[-1, 1\], got 1.5"),
    (dict(tokens=0), r"tokens must be a positive int or None, got 0"),
    (dict(compile="yes"), r"compile must be True or False, got 'yes'"),
    (dict(fuse=1), r"fuse must be True or False, got 1"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompressConfig(**kwargs)


def test_bad_model_and_inputs():
    with pytest.raises(TypeError, match="expects a Hugging Face BERT-family model .* got Sequential"):
        compress(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(TypeError, match="config must be a CompressConfig, got dict"):
        compress(tiny_bert(), {"sparsity": 0.5})
    model = tiny_bert()
    snap = snapshot(model)
    with pytest.raises(ValueError, match="example_inputs must be a dict of tokenized model inputs .* got Tensor"):
        compress(model, CompressConfig(int8="dynamic"), example_inputs=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"example_inputs\['input_ids'\] must be a non-empty 2-D tensor"):
        compress(model, CompressConfig(int8="dynamic"), example_inputs={"input_ids": torch.ones(3, dtype=torch.long)})
    with pytest.raises(TypeError, match="filter_fn must be callable"):
        compress(model, filter_fn="encoder")
    cfg = CompressConfig()
    cfg.sparsity = 3.0  # mutated after construction: validated again by compress
    with pytest.raises(ValueError, match="sparsity must be a number in"):
        compress(model, cfg)
    assert_unchanged(model, snap)
    compress(model)
    with pytest.raises(ValueError, match="already compressed"):
        compress(model)


def test_non_bert_transformers_model():
    from transformers import GPT2Config, GPT2Model

    gpt = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=16))
    with pytest.raises(TypeError, match="BERT-family model"):
        compress(gpt)


@pytest.mark.parametrize("family", ["distilbert", "albert"])
def test_encoders_laid_out_otherwise_are_refused_untouched(family):
    # DistilBERT (transformer.layer of q_lin/k_lin/v_lin) and ALBERT (shared layer groups) are
    # not BERT-style: compress says so, naming itself, the model and what it accepts.
    import transformers as T

    if family == "distilbert":
        model = T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=16))
    else:
        model = T.AlbertModel(T.AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=16))
    snap = snapshot(model)
    with pytest.raises(TypeError, match=rf"^compress expects a BERT-family model .*RoBERTa.*, got {type(model).__name__}$"):
        compress(model, CompressConfig(sparsity=0.5, int8="dynamic"))
    assert_unchanged(model, snap)
    with pytest.raises(TypeError, match=rf"^sparsebert.prune expects a BERT-family model .*got {type(model).__name__}$"):
        sparsebert.prune.prune_model(model, 0.5, (16, 16))
    assert_unchanged(model, snap)
    if family == "distilbert":  # a sequence classifier: what recover trains
        from sparsebert.recover import Recipe, recover

        data = [{"input_ids": torch.randint(5, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long),
                 "labels": torch.tensor([0, 1])}]
        with pytest.raises(TypeError, match=rf"^recover expects a BERT-family model .*got {type(model).__name__}$"):
            recover(model, copy.deepcopy(model), data, Recipe(sparsity=0.5, block_size=(16, 16), steps=2))
        assert_unchanged(model, snap)


def test_skip_pattern_that_matches_nothing_warns():
    with pytest.warns(UserWarning, match="skip pattern 'decoder.*' matches no module of BertModel"):
        model = compress(tiny_bert(), CompressConfig(skip=("decoder.*",), kernel="dense"))
    assert len(sparsebert.report(model)) == 13  # the pattern skipped nothing: 12 encoder Linears + the pooler
    with pytest.warns(UserWarning, match="sparsity pattern '\\*.nothing' matches no module"):
        compress(tiny_bert(), CompressConfig(sparsity={"*.nothing": 0.5}, kernel="dense"))


def test_decompress_gives_the_weights_it_multiplies_by():
    model = tiny_bert("BertForSequenceClassification")
    compress(model, CompressConfig(sparsity=0.5, block_size=(16, 16), kernel="sparse"))
    dense = sparsebert.decompress(model)
    assert not sparsebert.is_compressed(dense) and sparsebert.is_compressed(model)
    assert not any(isinstance(m, CONVERTED) for m in dense.modules())
    inputs = tiny_inputs(padded=False)
    assert rel_err(first_output(dense, inputs), first_output(model, inputs)) < 1e-5


def test_ffn_gelu_is_fused_into_the_int8_up_projection():
    cfg = dict(sparsity=0.5, block_size=(16, 16), int8="dynamic", kernel="sparse")
    model = tiny_bert("BertForSequenceClassification")
    unfused = compress(copy.deepcopy(model), CompressConfig(**cfg, fuse=False))
    fused = compress(model, CompressConfig(**cfg))
    names = [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    assert getattr(fused, STATE_ATTR)["fused"] == names and getattr(unfused, STATE_ATTR)["fused"] == []
    rows = {r["name"]: r for r in sparsebert.report(fused)}
    assert [n for n, r in rows.items() if r["activation"] == "gelu"] == names
    assert "sparse_int8 per_token +gelu" in format_report(sparsebert.report(fused))
    for layer in fused.bert.encoder.layer:
        assert isinstance(layer.intermediate.intermediate_act_fn, nn.Identity)
        assert layer.intermediate.dense.activation == "gelu" and layer.output.dense.activation == "none"
    inputs = tiny_inputs(padded=False)
    # the same math: only the next layer's INT8 rounding can flip
    assert rel_err(first_output(fused, inputs), first_output(unfused, inputs)) < 5e-3
    dense = sparsebert.decompress(fused)
    assert isinstance(dense.bert.encoder.layer[0].intermediate.intermediate_act_fn, nn.GELU)
    assert rel_err(first_output(dense, inputs), first_output(fused, inputs)) < 0.06
    # by hand: unfused, the model is the fuse=False one exactly; fused again, as compress left it
    out = first_output(fused, inputs)
    assert sparsebert.unfuse_activations(fused) == names
    norms = unfuse_layer_norms(fused)  # compress(fuse=True) fuses each residual add + LayerNorm too
    assert len(norms) == 4
    assert torch.equal(first_output(fused, inputs), first_output(unfused, inputs))
    assert sparsebert.fuse_activations(fused) == names and sparsebert.fuse_activations(fused) == []
    assert fuse_layer_norms(fused) == norms
    assert torch.equal(first_output(fused, inputs), out)


@pytest.mark.parametrize("cfg,act", [(dict(int8="weight_only", kernel="dense"), "gelu"),
                                     (dict(sparsity=0.5, block_size=(16, 16), kernel="sparse"), "gelu"),
                                     (dict(int8="dynamic", kernel="dense"), "gelu_new")])
def test_what_is_not_fused(cfg, act):
    # weight-only and float layers have no activation epilogue; tanh GELU is not the kernels' GELU
    model = compress(tiny_bert(hidden_act=act), CompressConfig(**cfg))
    assert getattr(model, STATE_ATTR)["fused"] == []
    assert not isinstance(model.encoder.layer[0].intermediate.intermediate_act_fn, nn.Identity)


@pytest.mark.parametrize("attention", ["sparsebert", "unpadded"])
def test_bf16_attention_precision(attention):
    """attention_precision="bf16" reaches every layer's attention (the outputs move by bf16
    rounding, no more), the training path rounds the same way, and decompress drops it."""
    from sparsebert.hf import attention_precision, set_attention_precision

    cfg = dict(sparsity=0.5, block_size=(16, 16), kernel="sparse", attention=attention)
    base = compress(tiny_bert(), CompressConfig(**cfg))
    model = compress(tiny_bert(), CompressConfig(**cfg, attention_precision="bf16"))
    assert attention_precision(base) == "fp32" and attention_precision(model) == "bf16"
    assert getattr(model, STATE_ATTR)["config"]["attention_precision"] == "bf16"
    inputs = tiny_inputs(padded=False)
    out, ref = first_output(model, inputs), first_output(base, inputs)
    assert not torch.equal(out, ref) and rel_err(out, ref) < 2e-2
    with torch.enable_grad():  # the references, rounding as the kernel does
        model.train(False)
        inputs_grad = {**inputs}
        emb = model.get_input_embeddings()
        emb.weight.requires_grad_(True)
        try:
            train_out = model(**inputs_grad).last_hidden_state
        finally:
            emb.weight.requires_grad_(False)
    assert rel_err(train_out.detach(), out) < rel_err(out, ref)
    set_attention_precision(model, "fp32")
    assert torch.equal(first_output(model, inputs), ref)
    set_attention_precision(model, "bf16")
    dense = sparsebert.decompress(model)
    assert attention_precision(dense) == "fp32" and attention_precision(model) == "bf16"


@pytest.mark.parametrize("attention", ["sparsebert", "unpadded"])
def test_int8_attention_precision(attention):
    """attention_precision="int8" reaches every layer's attention (the outputs move by the
    quantization of q, k, v and the probabilities: more than bf16, a few percent at most), training
    through it raises a clear error, and decompress drops it."""
    from sparsebert.hf import attention_precision, set_attention_precision

    cfg = dict(sparsity=0.5, block_size=(16, 16), kernel="sparse", attention=attention)
    base = compress(tiny_bert(), CompressConfig(**cfg))
    model = compress(tiny_bert(), CompressConfig(**cfg, attention_precision="int8"))
    assert attention_precision(model) == "int8"
    assert getattr(model, STATE_ATTR)["config"]["attention_precision"] == "int8"
    inputs = tiny_inputs(padded=False)
    out, ref = first_output(model, inputs), first_output(base, inputs)
    set_attention_precision(model, "bf16")
    bf16 = first_output(model, inputs)
    set_attention_precision(model, "int8")
    assert rel_err(bf16, ref) < rel_err(out, ref) < 5e-2
    emb = model.get_input_embeddings()
    emb.weight.requires_grad_(True)
    try:
        with torch.enable_grad(), pytest.raises(ValueError, match="precision='int8' attention is inference-only"):
            model(**inputs)
    finally:
        emb.weight.requires_grad_(False)
    set_attention_precision(model, "fp32")
    assert torch.equal(first_output(model, inputs), ref)
    set_attention_precision(model, "int8")
    dense = sparsebert.decompress(model)
    assert attention_precision(dense) == "fp32" and attention_precision(model) == "int8"


def test_bad_attention_precision():
    with pytest.raises(ValueError, match="attention_precision must be one of \\('fp32', 'bf16', 'int8'\\), got 'fp16'"):
        CompressConfig(attention_precision="fp16")
    with pytest.raises(ValueError, match="attention_precision='bf16' needs sparsebert attention"):
        CompressConfig(attention=None, attention_precision="bf16")
    from sparsebert.hf import set_attention_precision

    with pytest.raises(ValueError, match="got 'half'"):
        set_attention_precision(tiny_bert(), "half")
    with pytest.raises(TypeError, match="Linear"):
        set_attention_precision(nn.Linear(2, 2), "bf16")


def test_progress_bar_goes_to_stderr(capsys):
    compress(tiny_bert(), CompressConfig(kernel="dense"), progress=True)
    captured = capsys.readouterr()
    assert "choosing kernels" in captured.err and captured.out == ""


def test_no_warnings_on_a_clean_block_pruned_model():
    model = tiny_bert()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        compress(model, CompressConfig(sparsity=0.75, block_size=(16, 16)))
    assert len(sparsebert.report(model)) == 12


def test_ladder_keeps_int8_modes_and_drops_dominated_formats():
    ladder = compress_mod._ladder("int8", True, "per_token")
    labels = [c.label() for c in ladder]
    assert labels == ["int8 per_token", "int8 per_token_asym smoothquant", "int8_weight_only", "dense"]
    pruned = compress_mod._prune_ladder(ladder, {"int8": 1.0, "int8_weight_only": 2.0, "dense": 1.5})
    assert [c.label() for c in pruned] == labels[:2] + ["dense"]  # weight-only: slower than fp32, less exact
    kept = compress_mod._prune_ladder(ladder, {"int8": 1.0, "int8_weight_only": 1.2, "dense": 1.5})
    assert [c.label() for c in kept] == labels
    # Within LADDER_MIN_GAIN of fp32 a less exact rung is not worth its error: a timing's noise
    # must not decide it.
    gain = compress_mod.LADDER_MIN_GAIN
    close = compress_mod._prune_ladder(ladder, {"int8": 1.0, "int8_weight_only": 2.0, "dense": 2.0 * (1 + gain) * 0.999})
    assert [c.label() for c in close] == labels[:2] + ["dense"]
    clear = compress_mod._prune_ladder(ladder, {"int8": 1.0, "int8_weight_only": 2.0, "dense": 2.0 * (1 + gain) * 1.001})
    assert [c.label() for c in clear] == labels
    # INT8 only marginally faster than fp32: the SmoothQuant rung goes too, the first rung stays.
    marginal = compress_mod._prune_ladder(ladder, {"int8": 1.0, "int8_weight_only": 2.0, "dense": 1.05})
    assert [c.label() for c in marginal] == [labels[0], "dense"]
    assert [c.label() for c in compress_mod._ladder("sparse_int8", True, "per_token")] == [
        "sparse_int8 per_token", "sparse_int8 per_token_asym smoothquant", "sparse"]


def test_a_bf16_model_with_the_default_config_runs():
    model = tiny_bert().to(torch.bfloat16)
    compress(model, CompressConfig(int8="dynamic", kernel="dense"), example_inputs=tiny_inputs(batch=4))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the config's dtype, throughout
    out = first_output(model, tiny_inputs())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_failure_while_committing_restores_the_model(monkeypatch):
    import sparsebert.hf

    model = tiny_bert().to(torch.bfloat16)
    snap = snapshot(model)

    def broken(model, enabled=True):
        if enabled:
            raise RuntimeError("injected while committing")
        return model

    monkeypatch.setattr(sparsebert.hf, "use_unpadded", broken)
    with pytest.raises(RuntimeError, match="injected while committing"):
        compress(model, CompressConfig(sparsity=0.5, block_size=(16, 16), attention="unpadded", kernel="sparse"))
    assert_unchanged(model, snap)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_compile_option_compiles_in_place_and_survives_save_and_load(tmp_path):
    """compile=True: the same model object, compiled in place; its outputs are the eager ones up
    to INT8 rounding flips; a saved model loads compiled; decompress gives an eager baseline."""
    cfg = dict(sparsity=0.5, block_size=(16, 16), int8="dynamic", kernel="sparse", attention="unpadded")
    base = tiny_bert(seed=3)
    inputs = tiny_inputs(padded=True)
    eager = compress(copy.deepcopy(base), CompressConfig(**cfg), cache=False)
    model = copy.deepcopy(base)
    out = compress(model, CompressConfig(**cfg, compile=True), cache=False)
    assert out is model and model._compiled_call_impl is not None
    with torch.inference_mode():
        ref = first_output(eager, inputs)
        got = first_output(model, inputs)
    mask = inputs["attention_mask"].bool()
    assert rel_err(got[mask], ref[mask]) < 2e-2
    sparsebert.save(model, tmp_path / "m")
    loaded = sparsebert.load(tmp_path / "m")
    assert loaded._compiled_call_impl is not None
    assert loaded.sparsebert_state["config"]["compile"] is True
    with torch.inference_mode():
        again = first_output(loaded, inputs)
    assert rel_err(again[mask], ref[mask]) < 2e-2
    dense = sparsebert.decompress(model)
    assert dense._compiled_call_impl is None
