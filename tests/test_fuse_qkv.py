"""Q, K and V as one layer: ``cat_outputs`` / ``split_outputs`` move the stored values exactly, and
``fuse_qkv`` through compress, the lean and padded encoders, save / load, report and decompress."""

import copy
import json

import pytest
import torch
from torch import nn

import sparsebert
from model_helpers import first_output, tiny_bert, tiny_inputs
from sparsebert import CompressConfig
from sparsebert.hf import _lean_path_applies, fuse_layer_norms, fuse_qkv, fused_qkv, qkv_parts, unfuse_qkv
from sparsebert.nn import Int8Linear, SparseInt8Linear, SparseLinear, cat_outputs, split_outputs
from sparsebert.prune import block_magnitude_mask
from sparsebert.report import format_report
from sparsebert.serialize import MANIFEST

SIZES = (48, 32, 40)  # 40 rows: blocks of 16 (and the INT8 layout's 32 rows) straddle two parts
K = 64


def _pruned(n: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(K, n)
    with torch.no_grad():
        lin.weight.mul_(block_magnitude_mask(lin.weight, 0.5, (16, 16)))
    return lin


BUILD = {
    "linear": lambda lin: copy.deepcopy(lin),
    "sparse": lambda lin: SparseLinear.from_dense(lin, (16, 16)),
    "sparse_bf16": lambda lin: SparseLinear.from_dense(lin, (16, 16)).to(torch.bfloat16),
    "int8": lambda lin: Int8Linear.from_dense(lin),
    "int8_asym": lambda lin: Int8Linear.from_dense(lin, act_quant="per_token_asym"),
    "int8_weight_only": lambda lin: Int8Linear.from_dense(lin, weight_only=True),
    "sparse_int8": lambda lin: SparseInt8Linear.from_dense(lin, (16, 16)),
}


def _parts(kind: str):
    return [BUILD[kind](_pruned(n, seed)) for seed, n in enumerate(SIZES)]


def _dense(layer) -> torch.Tensor:
    return layer.weight.detach() if type(layer) is nn.Linear else layer.to_dense()


@pytest.mark.parametrize("kind", list(BUILD))
def test_cat_outputs_computes_what_the_parts_compute(kind):
    parts = _parts(kind)
    fused = cat_outputs(parts)
    assert type(fused) is type(parts[0]) and fused.out_features == sum(SIZES) and fused.in_features == K
    # the weight it multiplies by is the parts' weights stacked, exactly (no re-quantization)
    assert torch.equal(_dense(fused), torch.cat([_dense(p) for p in parts]))
    x = torch.randn(7, K).to(_dense(parts[0]).dtype if kind == "sparse_bf16" else torch.float32)
    with torch.inference_mode():
        ref = torch.cat([p(x) for p in parts], -1).float()
        out = fused(x).float()
    # the same per-token activation quantization and the same products: only the summation order
    # of a wider GEMM may differ
    eps = torch.finfo(torch.bfloat16 if kind == "sparse_bf16" else torch.float32).eps
    torch.testing.assert_close(out, ref, rtol=8 * eps, atol=8 * eps * ref.abs().max().item())


@pytest.mark.parametrize("kind", list(BUILD))
def test_split_outputs_gives_the_parts_back_exactly(kind):
    parts = _parts(kind)
    back = split_outputs(cat_outputs(parts), SIZES)
    x = torch.randn(5, K).to(torch.bfloat16 if kind == "sparse_bf16" else torch.float32)
    for p, b in zip(parts, back):
        assert type(b) is type(p) and (b.out_features, b.in_features) == (p.out_features, p.in_features)
        assert torch.equal(_dense(b), _dense(p))
        if p.bias is not None:
            assert torch.equal(b.bias, p.bias)
        for attr in ("weight_scale", "weight_sum"):
            if hasattr(p, attr):
                assert torch.equal(getattr(b, attr), getattr(p, attr))
        with torch.inference_mode():
            assert torch.equal(b(x), p(x))


def test_what_cannot_be_stacked_is_refused_with_the_reason():
    lin = [_pruned(n, s) for s, n in enumerate(SIZES)]
    with pytest.raises(ValueError, match="layer 1 has type='Int8Linear', layer 0 type='SparseInt8Linear'"):
        cat_outputs([SparseInt8Linear.from_dense(lin[0], (16, 16)), Int8Linear.from_dense(lin[1])])
    with pytest.raises(ValueError, match="layer 1 has act_quant='per_token_asym', layer 0 act_quant='per_token'"):
        cat_outputs([Int8Linear.from_dense(lin[0]), Int8Linear.from_dense(lin[1], act_quant="per_token_asym")])
    with pytest.raises(ValueError, match="layer 1 has block_size=\\(32, 32\\), layer 0 block_size=\\(16, 16\\)"):
        with pytest.warns(UserWarning, match="do not form blocks of this size"):
            other = SparseLinear.from_dense(lin[1], (32, 32))
        cat_outputs([SparseLinear.from_dense(lin[0], (16, 16)), other])
    with pytest.raises(ValueError, match="layer 1 takes 32 input features, layer 0 64"):
        cat_outputs([lin[0], nn.Linear(32, 8)])
    with pytest.raises(ValueError, match="layer 1 has bias=False"):
        cat_outputs([lin[0], nn.Linear(K, 8, bias=False)])
    absmax = torch.rand(K) + 0.5
    with pytest.raises(ValueError, match="other SmoothQuant factors"):
        cat_outputs([Int8Linear.from_dense(lin[0], act_absmax=absmax), Int8Linear.from_dense(lin[1], act_absmax=absmax)])
    with pytest.raises(ValueError, match="layer 0 is a Conv1d"):
        cat_outputs([nn.Conv1d(1, 1, 1)])
    with pytest.raises(ValueError, match="no layers"):
        cat_outputs([])
    fused = cat_outputs(lin)
    for sizes in ([48, 32], [48, 32, 40, 0], [48.0, 32, 40], []):
        with pytest.raises(ValueError, match="sizes must be positive ints adding up to out_features=120"):
            split_outputs(fused, sizes)
    with pytest.raises(TypeError, match="split_outputs expects one of"):
        split_outputs(nn.Conv1d(1, 1, 1), [1])


def _compressed(fuse=True, int8="dynamic", attention="unpadded", head="BertForSequenceClassification", **kw):
    cfg = CompressConfig(sparsity=0.5, block_size=(16, 16), int8=int8, kernel="sparse", attention=attention,
                         fuse=fuse, **kw)
    return sparsebert.compress(tiny_bert(head), cfg, cache=False)


SELF = ["bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self"]


@pytest.mark.parametrize("attention", ["sparsebert", "unpadded"])
@pytest.mark.parametrize("int8", [None, "dynamic"])
def test_compress_fuses_qkv_with_the_same_outputs(attention, int8):
    fused, plain = _compressed(True, int8, attention), _compressed(False, int8, attention)
    assert fused_qkv(fused) == SELF and fused.sparsebert_state["fused_qkv"] == SELF
    assert fused_qkv(plain) == [] and plain.sparsebert_state["fused_qkv"] == []
    fuse_layer_norms(plain)  # everything fuse=True does but the projections
    sparsebert.fuse_activations(plain)
    sa = fused.bert.encoder.layer[0].attention.self
    assert not hasattr(sa, "query") and type(sa.qkv) is (SparseInt8Linear if int8 else SparseLinear)
    inputs = tiny_inputs()
    a, b = first_output(fused, inputs), first_output(plain, inputs)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    # back to three layers: the outputs of the never-fused model, split exactly
    assert unfuse_qkv(fused) == SELF and fused_qkv(fused) == []
    assert torch.equal(first_output(fused, inputs), b)
    assert fuse_qkv(fused) == SELF
    assert torch.equal(first_output(fused, inputs), a)


def test_the_lean_encoder_runs_the_fused_projection():
    model = _compressed()
    inputs = tiny_inputs()
    with torch.inference_mode():
        assert _lean_path_applies(model.bert.encoder, {})
    lean = first_output(model, inputs)
    handle = model.bert.encoder.layer[0].register_forward_hook(lambda *a: None)  # transformers' layer forward
    try:
        assert torch.equal(first_output(model, inputs), lean)
    finally:
        handle.remove()


def test_save_load_report_and_decompress_of_a_fused_model(tmp_path):
    model = _compressed()
    inputs = tiny_inputs()
    out = first_output(model, inputs)
    sparsebert.save(model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert list(manifest["fused_qkv"]) == SELF
    assert manifest["fused_qkv"][SELF[0]]["type"] == "SparseInt8Linear"
    assert manifest["fused_qkv"][SELF[0]]["out_features"] == 3 * 64
    assert f"{SELF[0]}.qkv" not in manifest["layers"] and "spec" not in manifest["layers"][f"{SELF[0]}.query"]
    loaded = sparsebert.load(tmp_path / "m")
    assert fused_qkv(loaded) == SELF and loaded.sparsebert_state["fused_qkv"] == SELF
    assert torch.equal(first_output(loaded, inputs), out)

    rows = {r["name"]: r for r in sparsebert.report(loaded)}
    assert len(rows) == 12  # every layer compress decided on, the fused projections included
    q = rows[f"{SELF[0]}.query"]
    assert q["fused_into"] == f"{SELF[0]}.qkv" and q["shape"] == [64, 64] and q["format"] == "sparse_int8"
    assert rows[f"{SELF[0]}.query"]["density"] == pytest.approx(0.5)
    assert rows["bert.encoder.layer.0.intermediate.dense"]["fused_into"] is None
    unfused = copy.deepcopy(loaded)
    unfuse_qkv(unfused)
    assert sparsebert.report(unfused).totals["converted_bytes_after"] == pytest.approx(
        sparsebert.report(loaded).totals["converted_bytes_after"], rel=0.01)
    text = format_report(sparsebert.report(loaded))
    assert f"| {SELF[0]}.query | 64x64 | sparse_int8 per_token (fused qkv) |" in text

    dense = sparsebert.decompress(loaded)
    sa = dense.bert.encoder.layer[0].attention.self
    assert fused_qkv(dense) == [] and all(type(getattr(sa, n)) is nn.Linear for n in ("query", "key", "value"))
    ref = sparsebert.decompress(_compressed(fuse=False))
    for name, p in ref.state_dict().items():
        torch.testing.assert_close(dense.state_dict()[name], p, rtol=0, atol=0)


def test_layers_converted_differently_are_not_fused():
    only_qk = sparsebert.compress(tiny_bert(), CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic",
                                                              kernel="sparse"),
                                  filter_fn=lambda m, name: not name.endswith(".value"), cache=False)
    assert fused_qkv(only_qk) == [] and only_qk.sparsebert_state["fused_qkv"] == []
    model = sparsebert.compress(tiny_bert(), CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic",
                                                            kernel="sparse", fuse=False), cache=False)
    model.encoder.layer[1].attention.self.key.register_forward_hook(lambda *a: None)
    assert fuse_qkv(model) == ["encoder.layer.0.attention.self"]  # hooks on layer 1's key would stop running


def test_qkv_parts_of_an_unfused_module_is_refused():
    with pytest.raises(ValueError, match="is not fused by fuse_qkv"):
        qkv_parts(tiny_bert().encoder.layer[0].attention.self)


def test_a_tampered_fused_qkv_manifest_is_refused(tmp_path):
    sparsebert.save(_compressed(), tmp_path / "m")
    path = tmp_path / "m" / MANIFEST
    good = json.loads(path.read_text())
    edits = {
        "does not match the model's projections": lambda m: m["fused_qkv"][SELF[0]].update(out_features=190),
        "is not a module of": lambda m: m["fused_qkv"].update({"bert.encoder.layer.9.attention.self":
                                                               m["fused_qkv"][SELF[0]]}),
        "is not a BertSelfAttention": lambda m: m["fused_qkv"].update({"bert.encoder.layer.0.attention":
                                                                       m["fused_qkv"][SELF[0]]}),
        "unknown module spec": lambda m: m["fused_qkv"][SELF[0]].update(type="Bogus"),
        "fused_qkv must be an object": lambda m: m.update(fused_qkv=[1]),
    }
    for match, edit in edits.items():
        m = json.loads(json.dumps(good))
        edit(m)
        path.write_text(json.dumps(m))
        with pytest.raises(ValueError, match=match):
            sparsebert.load(tmp_path / "m")
