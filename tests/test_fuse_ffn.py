"""An FFN's two block-sparse INT8 projections as one op: ``sparsebert::bsr_int8_ffn`` gives the
numbers of the two ``bsr_int8_linear`` calls bit for bit (the fused CPU path runs from 128 rows on
2 threads with the AVX-512 VNNI or AMX kernels; below that, and elsewhere, the two ops run one
after the other), matches the reference, refuses what it does not fuse, and ``fuse_ffn`` through
compress, both encoders, save / load and decompress."""

import copy
import json

import pytest
import torch
from torch import nn

import sparsebert
from model_helpers import first_output, tiny_bert, tiny_inputs
from sparsebert import CompressConfig
from sparsebert.hf import ffn_fusable, fuse_ffn, fused_ffn, unfuse_ffn
from sparsebert.nn import Int8Linear, SparseInt8Linear, ffn_mismatch, int8_ffn
from sparsebert.ops import add_layer_norm, bsr_int8_ffn, bsr_int8_ffn_reference, bsr_int8_linear
from sparsebert.prune import block_magnitude_mask
from sparsebert.serialize import MANIFEST

HIDDEN, INNER = 64, 256


def _layer(k: int, n: int, seed: int, sparsity: float = 0.75, act_quant: str = "per_token") -> SparseInt8Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.mul_(block_magnitude_mask(lin.weight, sparsity, (32, 32)))
    return SparseInt8Linear.from_dense(lin, (32, 32), act_quant=act_quant)


def _pair(act_quant: str = "per_token", dtype=torch.float32):
    up, down = _layer(HIDDEN, INNER, 0, act_quant=act_quant), _layer(INNER, HIDDEN, 1, act_quant=act_quant)
    up.activation = "gelu"
    return up.to(dtype), down.to(dtype)


def _args(layer):
    b = layer._buffers
    return (b["values"], b["weight_scale"], b["weight_sum"], b["crow_indices"], b["col_indices"], b["bias"],
            layer.shape, layer.block_size)


@pytest.mark.parametrize("rows", [1, 37, 128, 300])
@pytest.mark.parametrize("act_quant", ["per_token", "per_token_asym"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_op_is_the_two_linears_bit_for_bit(two_threads, rows, act_quant, dtype):
    up, down = _pair(act_quant, dtype)
    torch.manual_seed(rows)
    x = (torch.randn(rows, HIDDEN) * 3).to(dtype)
    with torch.inference_mode():
        two = down(up(x))
        one = bsr_int8_ffn(x, _args(up), _args(down), act_quant)
        assert torch.equal(one, int8_ffn(x, up, down))
    assert one.dtype == dtype and one.shape == (rows, HIDDEN)
    assert torch.equal(one, two)
    # the definition: the two references one after the other; a hidden value the kernel rounds
    # differently in its last bit may flip one int8 step of the down projection's input
    ref = bsr_int8_ffn_reference(x, *_args(up), *_args(down), act_quant)
    two_ref = bsr_int8_linear(bsr_int8_linear(x, *_args(up), act_quant, "gelu"), *_args(down), act_quant)
    assert torch.equal(two_ref, two)
    scale = ref.float().abs().max().item()
    assert (one.float() - ref.float()).abs().max().item() <= 0.02 * scale


@pytest.mark.parametrize("rows", [5, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_residual_add_and_layer_norm_are_add_layer_norm_bit_for_bit(two_threads, rows, dtype):
    up, down = _pair(dtype=dtype)
    ln = nn.LayerNorm(HIDDEN, eps=1e-5).to(dtype)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.2, 0.2)
    x = torch.randn(rows, HIDDEN).to(dtype)
    with torch.inference_mode():
        out = int8_ffn(x, up, down, ln)
        assert torch.equal(out, add_layer_norm(down(up(x)), x, ln.weight, ln.bias, ln.eps))
        ref = bsr_int8_ffn_reference(x, *_args(up), *_args(down), "per_token", "gelu", ln.weight, ln.bias, ln.eps)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=0.05)  # LayerNorm'd: unit scale


def test_leading_dimensions_and_an_activation_of_none(two_threads):
    up, down = _pair()
    up.activation = "none"
    x = torch.randn(2, 80, HIDDEN)
    with torch.inference_mode():
        out = int8_ffn(x, up, down)
        assert out.shape == (2, 80, HIDDEN)
        assert torch.equal(out, down(up(x)))


def test_non_finite_rows_are_named(two_threads):
    up, down = _pair()
    x = torch.randn(200, HIDDEN)
    x[150, 3] = float("nan")
    with pytest.raises(ValueError, match="row 150"):
        int8_ffn(x, up, down)
    # a hidden activation that overflows: x is finite, up's output is not. The fused path (AVX-512
    # VNNI and AMX kernels) names the hidden activation; the two ops one after the other, down's input
    big = torch.randn(200, HIDDEN)
    big[170] = 3e38
    up.bias.data.fill_(3e38)  # row 170's products plus this bias overflow; the other rows' stay finite
    fused = sparsebert.active_isa() in ("avx512bf16", "amx")
    with pytest.raises(ValueError, match=("hidden activation .*" if fused else "") + "row 170"):
        int8_ffn(big, up, down)


def test_what_the_op_does_not_fuse_is_refused():
    up, down = _pair()
    x = torch.randn(4, HIDDEN)
    with pytest.raises(ValueError, match="per_tensor.* is not fused by bsr_int8_ffn"):
        bsr_int8_ffn(x, _args(up), _args(down), "per_tensor")
    with pytest.raises(ValueError, match="per_tensor.* is not fused by bsr_int8_ffn"):
        torch.ops.sparsebert.bsr_int8_ffn(x, *_args(up)[:6], list(up.shape), list(up.block_size), *_args(down)[:6],
                                          list(down.shape), list(down.block_size), "per_tensor", "gelu")
    wrong = _layer(2 * INNER, HIDDEN, 2)
    with pytest.raises(ValueError, match=r"down's in_features \(512\) must equal up's out_features \(256\)"):
        bsr_int8_ffn(x, _args(up), _args(wrong))
    with pytest.raises(ValueError, match="in_features=64"):
        bsr_int8_ffn(torch.randn(4, HIDDEN + 1), _args(up), _args(down))


def test_a_norm_the_op_cannot_take_is_refused():
    up, down = _pair()
    x = torch.randn(4, HIDDEN)
    ln = nn.LayerNorm(HIDDEN)
    with pytest.raises(ValueError, match="together or not at all"):
        torch.ops.sparsebert.bsr_int8_ffn(x, *_args(up)[:6], list(up.shape), list(up.block_size), *_args(down)[:6],
                                          list(down.shape), list(down.block_size), "per_token", "gelu", ln.weight,
                                          None)
    with pytest.raises(ValueError, match="must have x's dtype"):
        bsr_int8_ffn(x, _args(up), _args(down), norm=(ln.weight.double(), ln.bias.double(), 1e-5))
    with pytest.raises(ValueError, match="norm must be an nn.LayerNorm over the last dim"):
        int8_ffn(x, up, down, nn.LayerNorm(HIDDEN + 1))
    wide = _layer(INNER, 2 * HIDDEN, 3)
    with pytest.raises(ValueError, match="the residual add needs down's out_features"):
        bsr_int8_ffn(x, _args(up), _args(wide), norm=(torch.ones(2 * HIDDEN), torch.zeros(2 * HIDDEN), 1e-5))
    torch.manual_seed(0)
    smoothed = SparseInt8Linear.from_dense(nn.Linear(HIDDEN, INNER), (32, 32), act_absmax=torch.rand(HIDDEN) + 0.5)
    with pytest.raises(ValueError, match="SmoothQuant factors, so its input is not the residual"):
        int8_ffn(x, smoothed, down, ln)


def test_what_the_module_function_does_not_fuse_is_named():
    up, down = _pair()
    assert ffn_mismatch(up, down) is None
    dense = Int8Linear.from_dense(nn.Linear(INNER, HIDDEN))
    assert "down is a Int8Linear" in ffn_mismatch(up, dense)
    assert "act_quant" in ffn_mismatch(up, _layer(INNER, HIDDEN, 1, act_quant="per_token_asym"))
    down.activation = "gelu"
    assert "down has activation='gelu'" == ffn_mismatch(up, down)
    down.activation = "none"
    handle = down.register_forward_hook(lambda *a: None)
    assert "hooks" in ffn_mismatch(up, down)
    with pytest.raises(ValueError, match="int8_ffn cannot fuse these layers: down has hooks"):
        int8_ffn(torch.randn(3, HIDDEN), up, down)
    handle.remove()


def test_compiles(two_threads):
    up, down = _pair()
    x = torch.randn(130, HIDDEN)
    with torch.inference_mode():
        compiled = torch.compile(lambda t: int8_ffn(t, up, down), fullgraph=True, dynamic=False)
        assert torch.equal(compiled(x), int8_ffn(x, up, down))


def test_backward_raises():
    up, down = _pair()
    x = torch.randn(3, HIDDEN, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        int8_ffn(x, up, down).sum().backward()


# --- the model level ----------------------------------------------------------------------------

CFG = dict(sparsity=0.75, block_size=(32, 32), int8="dynamic", kernel="sparse")
LAYERS = ["bert.encoder.layer.0", "bert.encoder.layer.1"]


def _compressed(fuse=True, attention="unpadded"):
    return sparsebert.compress(tiny_bert("BertForSequenceClassification", intermediate_size=INNER),
                               CompressConfig(**CFG, attention=attention, fuse=fuse), cache=False)


@pytest.mark.parametrize("attention", ["sparsebert", "unpadded"])
def test_compress_fuses_the_ffn_with_the_same_outputs(two_threads, attention):
    model = _compressed(attention=attention)
    assert fused_ffn(model) == LAYERS and model.sparsebert_state["fused_ffn"] == LAYERS
    assert fused_ffn(_compressed(fuse=False)) == []
    inputs = tiny_inputs(batch=12, seq=24)  # 288 tokens: the fused path
    out = first_output(model, inputs)
    assert unfuse_ffn(model) == LAYERS and fused_ffn(model) == []
    assert torch.equal(first_output(model, inputs), out)
    assert fuse_ffn(model) == LAYERS and fuse_ffn(model) == []
    assert torch.equal(first_output(model, inputs), out)


def test_a_layer_changed_after_fusing_runs_unfused(two_threads):
    model = _compressed()
    inputs = tiny_inputs(batch=12, seq=24)
    fused_out = first_output(model, inputs)
    sparsebert.unfuse_activations(model)  # the GELU back as a module: the fused forward must not skip it
    plain = copy.deepcopy(model)
    unfuse_ffn(plain)
    assert torch.equal(first_output(model, inputs), first_output(plain, inputs))
    sparsebert.fuse_activations(model)
    assert torch.equal(first_output(model, inputs), fused_out)


def test_what_is_not_fused_is_named():
    model = _compressed(fuse=False)
    layer = model.bert.encoder.layer[0]
    assert "activation is a module of its own" in ffn_fusable(layer)
    sparsebert.fuse_activations(model)
    assert ffn_fusable(layer) is None
    handle = layer.output.register_forward_hook(lambda *a: None)
    assert "hooks" in ffn_fusable(layer)
    assert fuse_ffn(model) == ["bert.encoder.layer.1"]
    handle.remove()
    assert "already replaced" in ffn_fusable(model.bert.encoder.layer[1])
    assert "not transformers' BertLayer" in ffn_fusable(layer.output)
    int8_only = sparsebert.compress(tiny_bert(intermediate_size=INNER),
                                    CompressConfig(int8="dynamic", kernel="dense"), cache=False)
    assert fused_ffn(int8_only) == [] and "Int8Linear" in ffn_fusable(int8_only.encoder.layer[0])


def test_save_load_and_decompress_of_a_fused_model(two_threads, tmp_path):
    model = _compressed()
    inputs = tiny_inputs(batch=12, seq=24)
    out = first_output(model, inputs)
    sparsebert.save(model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["fused_ffn"] == LAYERS
    loaded = sparsebert.load(tmp_path / "m")
    assert fused_ffn(loaded) == LAYERS and loaded.sparsebert_state["fused_ffn"] == LAYERS
    assert torch.equal(first_output(loaded, inputs), out)
    dense = sparsebert.decompress(loaded)
    assert fused_ffn(dense) == [] and type(dense.bert.encoder.layer[0].output.dense) is nn.Linear

    manifest["fused_ffn"] = LAYERS + ["bert.encoder.layer.7"]
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="lists the FFN fused into one op in"):
        sparsebert.load(tmp_path / "m")
