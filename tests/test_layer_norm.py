"""sparsebert::add_layer_norm against float64 LayerNorm(x + residual), on every ISA path; bad
input; compile plumbing; the model-level fusion (fuse_layer_norms) and its round trips."""

import copy

import pytest
import torch
import torch.nn.functional as F

import sparsebert
from sparsebert.ops import add_layer_norm, add_layer_norm_reference


def inputs(shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = (torch.randn(shape, generator=g) * scale + 0.5).to(dtype)
    r = (torch.randn(shape, generator=g) * scale).to(dtype)
    w = (1 + 0.3 * torch.randn(n, generator=g)).to(dtype)
    b = (0.1 * torch.randn(n, generator=g)).to(dtype)
    return x, r, w, b


def assert_ln_close(out, x, r, w, b, eps):
    """The error against float64 (of the sum as the dtype rounds it) is at most twice torch's own
    add + layer_norm in the same dtype, plus a few rounding units of the output scale."""
    assert out.dtype == x.dtype and out.shape == x.shape
    s = (x + r).double()  # the sum in x's dtype, as the op defines it
    ref = F.layer_norm(s, (x.shape[-1],), w.double(), b.double(), eps)
    same = add_layer_norm_reference(x, r, w, b, eps)
    err = (out.double() - ref).abs().max().item()
    base = (same.double() - ref).abs().max().item()
    unit = 4 * torch.finfo(x.dtype).eps * max(1.0, ref.abs().max().item())
    assert err <= 2 * base + unit, f"max error {err:.3g} > 2 * torch's {base:.3g} + {unit:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 768), (2, 33, 384), (1024, 768), (4, 1000), (2, 4096)])
def test_matches_reference(isa, dtype, shape):
    x, r, w, b = inputs(shape, dtype)
    assert_ln_close(add_layer_norm(x, r, w, b, 1e-12), x, r, w, b, 1e-12)


def test_large_offset_and_eps(isa):
    """A row with a large common offset (the variance from deviations, not E[x^2] - E[x]^2) and
    a constant row (variance 0: eps alone)."""
    x, r, w, b = inputs((6, 256), scale=1e-3)
    x = x + 1000.0
    x[3] = 7.0
    r[3] = 0.0
    for eps in (1e-5, 0.5):
        out = add_layer_norm(x, r, w, b, eps)
        assert_ln_close(out, x, r, w, b, eps)
    torch.testing.assert_close(add_layer_norm(x, r, w, b, 1e-5)[3], b, rtol=0, atol=1e-6)


def test_strided_inputs_and_empty(isa):
    x, r, w, b = inputs((8, 96))
    xt = x.t().contiguous().t()  # column-major
    assert_ln_close(add_layer_norm(xt, r[:, :], w, b, 1e-5), x, r, w, b, 1e-5)
    wide = torch.randn(8, 200)[:, :96]
    assert_ln_close(add_layer_norm(wide, r, w, b, 1e-5), wide, r, w, b, 1e-5)
    empty = torch.empty(0, 96)
    assert add_layer_norm(empty, empty, w, b, 1e-5).shape == (0, 96)


def test_threads_do_not_change_results():
    x, r, w, b = inputs((300, 768))
    torch.set_num_threads(1)
    try:
        one = add_layer_norm(x, r, w, b, 1e-12)
    finally:
        torch.set_num_threads(2)
    assert torch.equal(add_layer_norm(x, r, w, b, 1e-12), one)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x, r, w, b: (x.double(), r.double(), w.double(), b.double(), 1e-5), "float32 and bfloat16, got x of dtype"),
        (lambda x, r, w, b: (x, r[:2], w, b, 1e-5), r"residual must have x's shape \[3, 8\], got \[2, 8\]"),
        (lambda x, r, w, b: (x, r.bfloat16(), w, b, 1e-5), "residual must have x's dtype .*, got .*BFloat16|bfloat16"),
        (lambda x, r, w, b: (x, r, w.bfloat16(), b, 1e-5), "weight must have x's dtype"),
        (lambda x, r, w, b: (x, r, w[:4], b, 1e-5), r"weight and bias must be \[8\] \(x's last dim\), got \[4\]"),
        (lambda x, r, w, b: (x, r, w, b[None], 1e-5), r"got \[8\] and \[1, 8\]"),
        (lambda x, r, w, b: (x, r, w, b, -1.0), "eps must be finite and >= 0, got -1"),
        (lambda x, r, w, b: (x, r, w, b, float("nan")), "eps must be finite and >= 0, got nan"),
        (lambda x, r, w, b: (x[:, :0], r[:, :0], w[:0], b[:0], 1e-5), "last \\(normalized\\) dim of size >= 1"),
    ],
)
def test_bad_input(make, match):
    args = make(*inputs((3, 8)))
    with pytest.raises(ValueError, match=match):
        add_layer_norm(*args)


def test_opcheck_compile_and_no_autograd():
    x, r, w, b = inputs((4, 32))
    torch.library.opcheck(torch.ops.sparsebert.add_layer_norm.default, (x, r, w, b, 1e-5))
    fn = torch.compile(lambda x, r: add_layer_norm(x, r, w, b, 1e-5) * 2, fullgraph=True)
    torch.testing.assert_close(fn(x, r), add_layer_norm(x, r, w, b, 1e-5) * 2)
    xg = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="add_layer_norm is inference-only"):
        add_layer_norm(xg, r, w, b, 1e-5).sum().backward()


# --- model level ------------------------------------------------------------------------------------


def test_fuse_layer_norms_on_a_bert():
    """Every BertSelfOutput / BertOutput runs the op (padded and unpadded encoder alike) within
    LayerNorm rounding of the unfused model; under gradients the modules add and normalize as
    before (bit-equal); unfuse restores the forward; fusing twice fuses nothing more."""
    from model_helpers import tiny_bert, tiny_inputs
    from sparsebert.hf import fuse_layer_norms, fused_layer_norms, unfuse_layer_norms

    model = tiny_bert()
    inputs_ = tiny_inputs()
    with torch.inference_mode():
        ref = model(**inputs_).last_hidden_state
    names = fuse_layer_norms(model)
    assert names == [f"encoder.layer.{i}.{m}" for i in range(2) for m in ("attention.output", "output")]
    assert fused_layer_norms(model) == names and fuse_layer_norms(model) == []
    keep = inputs_["attention_mask"].bool()
    for unpadded in (False, True):
        sparsebert.use_unpadded(model, enabled=unpadded)
        with torch.inference_mode():
            out = model(**inputs_).last_hidden_state
        torch.testing.assert_close(out[keep], ref[keep], rtol=1e-5, atol=1e-5)
    sparsebert.use_unpadded(model, enabled=False)
    out = model(**inputs_).last_hidden_state  # grad mode on, parameters require grad: the modules' own
    assert torch.equal(out.detach(), ref) and out.requires_grad
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # mixed dtypes: the unfused math
        auto = model(**inputs_).last_hidden_state
    unfused = copy.deepcopy(model)
    unfuse_layer_norms(unfused)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(unfused(**inputs_).last_hidden_state, auto)
    copied = copy.deepcopy(model)
    assert fused_layer_norms(copied) == names
    assert unfuse_layer_norms(model) == names and fused_layer_norms(model) == []
    with torch.inference_mode():
        assert torch.equal(model(**inputs_).last_hidden_state, ref)


def test_compress_fuses_and_decompress_unfuses(tmp_path):
    from model_helpers import first_output, tiny_bert, tiny_inputs
    from sparsebert.hf import fused_layer_norms

    cfg = dict(sparsity=0.5, block_size=(16, 16), int8="dynamic", kernel="sparse", attention="unpadded")
    model = sparsebert.compress(tiny_bert(), sparsebert.CompressConfig(**cfg))
    unfused = sparsebert.compress(tiny_bert(), sparsebert.CompressConfig(**cfg, fuse=False))
    assert len(fused_layer_norms(model)) == 4 and fused_layer_norms(unfused) == []
    assert model.sparsebert_state["fused_norms"] == fused_layer_norms(model)
    inputs_ = tiny_inputs()
    out = first_output(model, inputs_)
    # the same math: only the next layer's INT8 rounding can flip
    assert (out - first_output(unfused, inputs_)).abs().max() < 5e-3 * out.abs().max()
    sparsebert.save(model, tmp_path / "m")
    loaded = sparsebert.load(tmp_path / "m")
    assert fused_layer_norms(loaded) == fused_layer_norms(model)
    assert torch.equal(first_output(loaded, inputs_), out)
    assert fused_layer_norms(sparsebert.decompress(model)) == []
