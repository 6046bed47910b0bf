"""The Triton kernels (sparsebert.kernels), run by Triton's interpreter on CPU tensors
(TRITON_INTERPRET=1, set in conftest.py), against the same references as the CPU kernels.
Their lowering to real PTX for sm_80/sm_90 is checked by ``make gpu-check``."""

import pytest
import torch

pytest.importorskip("triton")

from conftest import assert_linear_close  # noqa: E402
from test_attention import assert_attention_close, padding_mask  # noqa: E402

from sparsebert import kernels  # noqa: E402
from sparsebert.kernels import _common  # noqa: E402
from sparsebert.ops import (  # noqa: E402
    attention_reference,
    attention_varlen_reference,
    bsr_int8_linear_reference,
    bsr_to_dense,
    int8_linear_reference,
    pack_bsr,
)
from sparsebert.ops._cuda import IMPLS  # noqa: E402
from sparsebert.ops.int8_format import (  # noqa: E402
    pack_int8_bsr,
    pack_int8_dense,
    quantize_activations,
    quantize_symmetric,
    weight_sum,
)


def assert_int8_close(y, ref):
    """Same integers, so only the epilogue differs: fp32 here, float64 in the reference, then
    one rounding to the output dtype (one bf16 ulp of the output scale)."""
    assert y.dtype == ref.dtype and y.shape == ref.shape
    if ref.numel() == 0:
        return
    ulp = torch.finfo(ref.dtype).eps * max(1.0, ref.float().abs().max().item())
    torch.testing.assert_close(y.float(), ref.float(), rtol=0, atol=ulp)


def test_interpreter_is_on():
    assert _common.INTERPRET


def sparse_weight(n, k, block, dtype, density=0.5):
    w = torch.randn(n, k)
    br, bc = block
    keep = torch.rand((n + br - 1) // br, (k + bc - 1) // bc) < density
    keep[0, 0] = True
    mask = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:n, :k]
    return (w * mask).to(dtype)


# --- bsr_linear -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [(16, 16), (32, 64), (64, 32), (16, 64)])
@pytest.mark.parametrize("m", [1, 7, 33])
def test_bsr_linear(dtype, block, m):
    n, k = 70, 90  # not multiples of any block
    w = sparse_weight(n, k, block, dtype)
    vals, crow, col = pack_bsr(w, block)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    y = kernels.bsr_linear(x, vals, crow, col, bias, (n, k), block)
    assert_linear_close(y, x, w, bias)


def test_bsr_linear_even_shapes_nd_input_and_empty_rows():
    w = sparse_weight(64, 64, (32, 32), torch.float32, density=0.3)
    w[32:] = 0  # an empty block row
    vals, crow, col = pack_bsr(w, (32, 32))
    x = torch.randn(2, 16, 64)
    y = kernels.bsr_linear(x, vals, crow, col, None, (64, 64), (32, 32))
    assert y.shape == (2, 16, 64)
    assert_linear_close(y.reshape(-1, 64), x.reshape(-1, 64), w, None)
    assert torch.equal(y[..., 32:], torch.zeros_like(y[..., 32:]))


def test_bsr_linear_matches_the_op():
    w = sparse_weight(48, 80, (16, 16), torch.float32)
    vals, crow, col = pack_bsr(w, (16, 16))
    x = torch.randn(5, 80)
    args = (x, vals, crow, col, None, [48, 80], [16, 16])
    torch.testing.assert_close(IMPLS["bsr_linear"](*args), torch.ops.sparsebert.bsr_linear(*args))


# --- INT8 -----------------------------------------------------------------------------------------


def test_quantize_per_token_integers_exact():
    x = torch.randn(9, 300)
    x[0, :4] = torch.tensor([127.0, 2.5, -3.5, 0.5])  # amax 127: exact .5 ties round to even
    x[1] = 0.0
    q, s = kernels.quantize_per_token(x)
    q_ref, s_ref = quantize_activations(x, "per_token")
    assert torch.equal(q.int(), q_ref) and torch.equal(s, s_ref)
    assert q[0, :4].tolist() == [127, 2, -4, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,m", [(70, 90, 1), (64, 128, 16), (33, 7, 5)])
def test_int8_linear(dtype, n, k, m):
    q_w, scale = quantize_symmetric(torch.randn(n, k))
    weight, ws = pack_int8_dense(q_w), weight_sum(q_w)
    x, bias = torch.randn(m, k).to(dtype), torch.randn(n).to(dtype)
    y = kernels.int8_linear(x, weight, scale, ws, bias, (n, k))
    assert_int8_close(y, int8_linear_reference(x, weight, scale, ws, bias, (n, k)))


@pytest.mark.parametrize("block", [(16, 32), (32, 32), (64, 64), (32, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bsr_int8_linear(block, dtype):
    n, k, m = 96, 100, 9
    q_w, scale = quantize_symmetric(sparse_weight(n, k, block, torch.float32))
    vals, crow, col = pack_int8_bsr(q_w, block)
    ws = weight_sum(q_w)
    x, bias = torch.randn(m, k).to(dtype), torch.randn(n).to(dtype)
    args = (x, vals, scale, ws, crow, col, bias, [n, k], list(block), "per_token")
    y = kernels.bsr_int8_linear(*args)
    assert_int8_close(y, bsr_int8_linear_reference(*args))
    torch.testing.assert_close(IMPLS["bsr_int8_linear"](*args), y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_epilogue(dtype):
    n, k, m = 64, 96, 11
    q_w, scale = quantize_symmetric(sparse_weight(n, k, (32, 32), torch.float32))
    vals, crow, col = pack_int8_bsr(q_w, (32, 32))
    ws = weight_sum(q_w)
    x, bias = (torch.randn(m, k) / 4).to(dtype), torch.randn(n).to(dtype)
    args = (x, vals, scale, ws, crow, col, bias, [n, k], [32, 32], "per_token", "gelu")
    y = kernels.bsr_int8_linear(*args)
    assert_int8_close(y, bsr_int8_linear_reference(*args))
    assert (y < 0).any() and not torch.equal(y, kernels.bsr_int8_linear(*args[:-1]))
    dense = (x, pack_int8_dense(q_w), scale, ws, bias, [n, k], "per_token", "gelu")
    assert_int8_close(kernels.int8_linear(*dense), int8_linear_reference(*dense))


# --- attention ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("s,d", [(1, 16), (17, 40), (40, 64), (23, 128)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention(dtype, s, d, masked):
    q, k, v = (torch.randn(2, 3, s, d).to(dtype) for _ in range(3))
    mask = padding_mask(2, s, [s, max(0, s // 2)]) if masked else None
    assert_attention_close(kernels.attention(q, k, v, mask), q, k, v, mask)


def test_attention_fully_padded_row_and_scale():
    q, k, v = (torch.randn(2, 2, 9, 16) for _ in range(3))
    mask = padding_mask(2, 9, [0, 9])
    out = kernels.attention(q, k, v, mask, 0.3)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert_attention_close(out, q, k, v, mask, scale=0.3)
    torch.testing.assert_close(IMPLS["attention"](q, k, v, mask, 0.3), out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_varlen(dtype):
    lengths = [5, 0, 40, 1, 17]
    t = sum(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v = (torch.randn(t, 2, 32).to(dtype) for _ in range(3))
    out = kernels.attention_varlen(q, k, v, cu, 40)
    ref = attention_varlen_reference(q, k, v, cu, 40)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)
    torch.testing.assert_close(IMPLS["attention_varlen"](q, k, v, cu, 40, None), out)


def test_attention_bf16_precision():
    """precision="bf16" on float32 inputs: the attention of the bf16-rounded inputs, float32 out."""
    q, k, v = (torch.randn(2, 2, 37, 32) for _ in range(3))
    mask = padding_mask(2, 37, [37, 20])
    out = kernels.attention(q, k, v, mask, None, "bf16")
    assert out.dtype == torch.float32
    assert_attention_close(out, q, k, v, mask, precision="bf16")
    exact = attention_reference(q.double(), k.double(), v.double(), mask)
    rounded = attention_reference(q.double(), k.double(), v.double(), mask, None, "bf16")
    assert (out.double() - rounded).abs().max() < 0.5 * (out.double() - exact).abs().max()
    lengths = [5, 0, 40, 1]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    qp, kp, vp = (torch.randn(sum(lengths), 2, 32) for _ in range(3))
    outp = IMPLS["attention_varlen"](qp, kp, vp, cu, 40, None, "bf16")
    torch.testing.assert_close(outp, attention_varlen_reference(qp, kp, vp, cu, 40, precision="bf16"),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        kernels.attention(q, k, v, mask, None, "fp16")
    with pytest.raises(ValueError, match="precision='int8' runs on the CPU only"):
        kernels.attention(q, k, v, mask, None, "int8")


@pytest.mark.parametrize("shape", [(3, 7), (5, 768), (2, 3, 100)])
def test_add_layer_norm(shape):
    from test_layer_norm import assert_ln_close, inputs

    x, r, w, b = inputs(shape)
    out = kernels.add_layer_norm(x, r, w, b, 1e-5)
    assert_ln_close(out, x, r, w, b, 1e-5)
    torch.testing.assert_close(IMPLS["add_layer_norm"](x, r, w, b, 1e-5), out)
    with pytest.raises(ValueError, match="weight and bias must be"):
        kernels.add_layer_norm(x, r, w[:2], b, 1e-5)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_names_the_constraint(monkeypatch):
    w = sparse_weight(32, 32, (16, 16), torch.float32)
    vals, crow, col = pack_bsr(w, (16, 16))
    x = torch.randn(2, 32)
    with pytest.raises(ValueError, match=r"blocks of 16, 32 or 64 rows and columns, got \(8, 8\)"):
        v8, c8, i8 = pack_bsr(w, (8, 8))
        kernels.bsr_linear(x, v8, c8, i8, None, (32, 32), (8, 8))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16, got torch.float64"):
        kernels.bsr_linear(x.double(), vals, crow, col, None, (32, 32), (16, 16))
    q_w, scale = quantize_symmetric(w)
    with pytest.raises(ValueError, match="per_token only, got act_quant='per_tensor'"):
        kernels.int8_linear(x, pack_int8_dense(q_w), scale, weight_sum(q_w), None, (32, 32), "per_tensor")
    v16, c16, i16 = pack_int8_bsr(q_w, (32, 16))
    with pytest.raises(ValueError, match=r"at least 32 columns for int8, got \(32, 16\)"):
        kernels.bsr_int8_linear(x, v16, scale, weight_sum(q_w), c16, i16, None, (32, 32), (32, 16))
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="key-padding mask \\[batch, key_seq\\] or none, got a 4-D mask"):
        kernels.attention(q, q, q, torch.ones(1, 1, 4, 4, dtype=torch.bool))
    monkeypatch.setattr(_common, "INTERPRET", False)
    with pytest.raises(ValueError, match="take CUDA tensors \\(or CPU tensors with TRITON_INTERPRET=1\\), got cpu"):
        kernels.bsr_linear(x, vals, crow, col, None, (32, 32), (16, 16))


def test_every_cuda_op_is_registered():
    for op in ("bsr_linear", "int8_linear", "bsr_int8_linear", "attention", "attention_varlen", "add_layer_norm"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsebert::{op}", "CUDA"), op
