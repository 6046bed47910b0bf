"""sparsebert::attention and sparsebert::attention_varlen against float64 eager attention, on
every ISA path, with every mask form; compile/export plumbing; bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import sparsebert
from sparsebert.ops import attention, attention_reference, attention_varlen, attention_varlen_reference


def sdpa_mask(mask, shape):
    """The same mask in the form F.scaled_dot_product_attention takes (bool True = keep, or additive)."""
    if mask is None:
        return None
    if mask.dim() == 2:
        return (mask != 0)[:, None, None, :].expand(shape[0], 1, shape[2], mask.shape[1])
    return mask


def assert_attention_close(out, q, k, v, mask=None, scale=None, precision="fp32"):
    """flash-attention's rule: the error against float64 eager attention is at most twice the
    error of torch's own scaled_dot_product_attention in the same dtype, plus a few rounding units
    of the output scale. A wrong key, row or mask gives errors of order 1. precision="bf16": the
    float64 attention of the bf16-rounded inputs (the op's definition), against twice the error of
    torch's bf16 attention on them."""
    assert out.dtype == q.dtype and out.shape == q.shape
    ref = attention_reference(q.double(), k.double(), v.double(), mask, scale, precision)
    if ref.numel() == 0:
        return
    dt = torch.bfloat16 if precision == "bf16" else q.dtype
    same = F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), attn_mask=sdpa_mask(mask, q.shape),
                                          scale=scale)
    same = same.nan_to_num(0.0)  # torch versions differ on rows with no kept key
    err = (out.double() - ref).abs().max().item()
    base = (same.double() - ref).abs().max().item()
    # fp32: 8 units. Scores reach |s| ~ 8 on unit-normal inputs; a rounding of q * scale (relative
    # eps) becomes a relative error of |s| eps in exp(s), so a few ulps of the output scale are the
    # kernel's honest floor where torch's own error happens to be smaller (the long fuzz found 4
    # units exceeded by 14% on a 5-token sequence).
    unit = (8 if dt == torch.float32 else 4) * torch.finfo(dt).eps * max(1.0, ref.abs().max().item())
    assert err <= 2 * base + unit, f"max error {err:.3g} > 2 * torch's {base:.3g} + {unit:.3g}"


def qkv(b, h, sq, d, dtype=torch.float32, sk=None):
    sk = sq if sk is None else sk
    return (torch.randn(b, h, sq, d).to(dtype), torch.randn(b, h, sk, d).to(dtype), torch.randn(b, h, sk, d).to(dtype))


def padding_mask(b, s, lengths=None, dtype=torch.long):
    lengths = torch.randint(0, s + 1, (b,)) if lengths is None else torch.tensor(lengths)
    return (torch.arange(s)[None, :] < lengths[:, None]).to(dtype)


MASKS = ["none", "padding", "bool4d", "additive"]


def make_mask(kind, b, h, sq, sk, dtype):
    if kind == "none":
        return None
    if kind == "padding":
        return padding_mask(b, sk)
    if kind == "bool4d":
        return torch.rand(b, 1, sq, sk) > 0.3
    return (torch.randn(b, h, sq, sk) * 2).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("s,d", [(1, 32), (7, 59), (97, 64), (513, 80), (97, 128), (7, 256), (130, 64)])
@pytest.mark.parametrize("mask_kind", MASKS)
def test_attention_matches_reference(isa, dtype, s, d, mask_kind):
    b, h = 2, 3
    q, k, v = qkv(b, h, s, d, dtype)
    mask = make_mask(mask_kind, b, h, s, s, dtype)
    assert_attention_close(attention(q, k, v, mask), q, k, v, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_lengths_and_scale(isa, dtype):
    q, k, v = qkv(2, 2, 7, 64, dtype, sk=97)
    mask = padding_mask(2, 97, [50, 97])
    assert_attention_close(attention(q, k, v, mask, scale=0.3), q, k, v, mask, scale=0.3)
    assert_attention_close(attention(q, k, v, None, scale=-0.2), q, k, v, None, scale=-0.2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_mask_form_agrees(isa, dtype):
    """The same padding as [B, S] long / bool / float, [B, 1, 1, S] and [B, 1, S, S] bool, and an
    additive -inf mask: one answer."""
    b, h, s = 3, 2, 70
    q, k, v = qkv(b, h, s, 32, dtype)
    keep = padding_mask(b, s, [70, 33, 64], torch.bool)
    forms = [
        keep.long(), keep, keep.float(),
        keep[:, None, None, :], keep[:, None, None, :].expand(b, 1, s, s),
        torch.zeros(b, 1, 1, s).masked_fill(~keep[:, None, None, :], float("-inf")),
    ]
    outs = [attention(q, k, v, m) for m in forms]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=0)
    assert_attention_close(outs[0], q, k, v, keep)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows(isa, dtype):
    """No kept key: zeros, as torch's SDPA and Hugging Face's default (sdpa) BERT give. An
    additive finfo.min mask (Hugging Face eager) is finite: the row averages every value."""
    q, k, v = qkv(2, 2, 9, 16, dtype)
    pad = padding_mask(2, 9, [0, 9])
    out = attention(q, k, v, pad)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert_attention_close(out, q, k, v, pad)
    bool4d = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    bool4d[1, :, 3] = False  # one query row with nothing kept
    out = attention(q, k, v, bool4d)
    assert torch.equal(out[1, :, 3], torch.zeros_like(out[1, :, 3]))
    eager_min = torch.zeros(2, 1, 1, 9).masked_fill(pad[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    out = attention(q, k, v, eager_min)
    expect = v[0].float().mean(dim=1, keepdim=True).expand(2, 9, 16)
    torch.testing.assert_close(out[0].float(), expect, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)


@pytest.mark.parametrize("s,d", [(1, 32), (7, 59), (97, 64), (300, 64), (33, 128), (5, 256)])
@pytest.mark.parametrize("mask_kind", MASKS)
def test_bf16_precision(isa, s, d, mask_kind):
    """precision="bf16" on float32 inputs: the attention of the bf16-rounded q, k and v (bf16 dot
    products where the CPU has them, the fp32 kernel on rounded inputs elsewhere), output in
    float32. It is that, and not the fp32 attention: much closer to the rounded inputs' answer."""
    b, h = 2, 3
    q, k, v = qkv(b, h, s, d)
    mask = make_mask(mask_kind, b, h, s, s, torch.float32)
    out = attention(q, k, v, mask, precision="bf16")
    assert_attention_close(out, q, k, v, mask, precision="bf16")
    exact = attention_reference(q.double(), k.double(), v.double(), mask)
    rounded = attention_reference(q.double(), k.double(), v.double(), mask, None, "bf16")
    assert (out.double() - rounded).abs().max() < 0.5 * (out.double() - exact).abs().max()


def test_bf16_precision_on_bf16_inputs_is_the_bf16_op(isa):
    """Rounding bf16 inputs changes nothing: the same answer as the plain bf16 op, within the rule."""
    q, k, v = qkv(2, 2, 70, 64, torch.bfloat16)
    mask = padding_mask(2, 70, [70, 31])
    out = attention(q, k, v, mask, precision="bf16")
    assert out.dtype == torch.bfloat16
    assert_attention_close(out, q, k, v, mask)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_ignores_padding(isa, precision):
    """Padded keys are never read at bf16 and int8 precision either (NaN there changes nothing)."""
    q, k, v = qkv(2, 2, 100, 64)
    pad = padding_mask(2, 100, [41, 100])
    out = attention(q, k, v, pad, precision=precision)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 41:] = float("nan")
    v2[0, :, 41:] = float("nan")
    torch.testing.assert_close(attention(q, k2, v2, pad, precision=precision), out, rtol=0, atol=0)


def test_padding_changes_only_what_it_should(isa):
    """Keys past a sequence's length do not affect it: garbage there changes nothing."""
    q, k, v = qkv(2, 2, 100, 64)
    pad = padding_mask(2, 100, [40, 100])
    out = attention(q, k, v, pad)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 40:] = 1e4
    v2[0, :, 40:] = float("nan")
    torch.testing.assert_close(attention(q, k2, v2, pad), out, rtol=0, atol=0)


def test_strided_inputs(isa):
    """Hugging Face's layout ([B, S, H, D] transposed to [B, H, S, D]) and a non-unit last stride."""
    b, s, h, d = 2, 33, 4, 32
    x = torch.randn(3, b, s, h, d)
    q, k, v = (t.transpose(1, 2) for t in x)
    mask = padding_mask(b, s, [33, 20])
    assert_attention_close(attention(q, k, v, mask), q, k, v, mask)
    qt = torch.randn(b, h, d, s).transpose(-1, -2)  # last-dim stride s
    assert_attention_close(attention(qt, k, v, mask), qt, k, v, mask)


def test_threads_do_not_change_results():
    q, k, v = qkv(3, 5, 150, 64)
    mask = padding_mask(3, 150, [150, 3, 77])
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attention(q, k, v, mask)
        torch.set_num_threads(2)
        two = attention(q, k, v, mask)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one, two)


def test_empty_shapes():
    for b, h, s in [(0, 2, 5), (2, 0, 5), (2, 2, 0)]:
        q, k, v = qkv(b, h, s, 16)
        assert attention(q, k, v).shape == (b, h, s, 16)
    q, _, _ = qkv(1, 2, 4, 16)
    k = v = torch.randn(1, 2, 0, 16)
    assert torch.equal(attention(q, k, v), torch.zeros(1, 2, 4, 16))


# --- precision="int8" ------------------------------------------------------------------------------


def assert_int8_close(out, q, k, v, mask=None, scale=None):
    """precision="int8" against its definition, attention_reference(precision="int8"): every path
    computes the same integers, so the outputs agree to float rounding except where an exp that
    differs in its last bits moves a probability across a rounding boundary of 1/255; each such
    flip moves an output by at most max|v| / 255 (the row sum l is >= 1), and a flip moves the
    whole row. At most a few flips per row, on 1% of the outputs (or two rows' worth, in small
    cases): a wrong key, scale, mask or quantization moves most of them."""
    assert out.dtype == q.dtype and out.shape == q.shape
    ref = attention_reference(q, k, v, mask, scale, "int8").float()
    if ref.numel() == 0:
        return
    err = (out.float() - ref).abs()
    rounding = (2.0 ** -7 if q.dtype == torch.bfloat16 else 1e-5) * max(1.0, ref.abs().max().item())
    flip = v.float().abs().max().item() / 255
    assert err.max().item() <= 3 * flip + rounding, f"max error {err.max().item():.3g} > 3 flips of {flip:.3g}"
    off = int((err > rounding).sum())
    assert off <= max(0.01 * err.numel(), 2 * q.shape[-1]), \
        f"{off} of {err.numel()} outputs differ from the definition by more than rounding"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("s,d", [(1, 32), (7, 59), (97, 64), (300, 64), (33, 128), (5, 256)])
@pytest.mark.parametrize("mask_kind", MASKS)
def test_int8_precision(isa, dtype, s, d, mask_kind):
    b, h = 2, 3
    q, k, v = qkv(b, h, s, d, dtype)
    mask = make_mask(mask_kind, b, h, s, s, dtype)
    assert_int8_close(attention(q, k, v, mask, precision="int8"), q, k, v, mask)


def test_int8_precision_is_int8_not_fp32(isa):
    """The int8 answer is the quantized definition's, not fp32 attention's, and its distance from
    fp32 attention is the quantization's: ~1% of the output scale on unit-normal inputs (bf16: ~0.3%)."""
    q, k, v = qkv(2, 4, 128, 64)
    out = attention(q, k, v, precision="int8")
    exact = attention_reference(q.double(), k.double(), v.double())
    defined = attention_reference(q, k, v, precision="int8").double()
    assert (out.double() - defined).abs().max() < 0.2 * (out.double() - exact).abs().max()
    rel = ((out.double() - exact).norm() / exact.norm()).item()
    assert 1e-3 < rel < 3e-2, rel


def test_int8_scale_and_cross_lengths(isa):
    q, k, v = qkv(2, 2, 7, 64, sk=97)
    mask = padding_mask(2, 97, [50, 97])
    assert_int8_close(attention(q, k, v, mask, scale=0.3, precision="int8"), q, k, v, mask, scale=0.3)
    assert_int8_close(attention(q, k, v, None, scale=-0.2, precision="int8"), q, k, v, None, scale=-0.2)


def test_int8_fully_masked_rows_and_zero_inputs(isa):
    q, k, v = qkv(2, 2, 9, 16)
    pad = padding_mask(2, 9, [0, 9])
    out = attention(q, k, v, pad, precision="int8")
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert_int8_close(out, q, k, v, pad)
    zero = attention(torch.zeros_like(q), k, torch.zeros_like(v), pad, precision="int8")
    assert torch.equal(zero, torch.zeros_like(zero))
    uniform = attention(torch.zeros_like(q), k, v, None, precision="int8")  # every key weighted alike
    torch.testing.assert_close(uniform, v.mean(dim=2, keepdim=True).expand_as(v), atol=2 * v.abs().max().item() / 127,
                               rtol=0)


def test_int8_propagates_nan(isa):
    """A NaN in a row of q makes that output row NaN, in a kept key's k every row, in a column of v
    that column (padded keys: test_precision_ignores_padding)."""
    q, k, v = qkv(2, 2, 100, 64)
    pad = padding_mask(2, 100, [41, 100])
    out = attention(q, k, v, pad, precision="int8")
    q3 = q.clone()
    q3[1, 0, 5, 3] = float("nan")
    o3 = attention(q3, k, v, pad, precision="int8")
    assert o3[1, 0, 5].isnan().all() and not o3[1, 0, :5].isnan().any() and torch.equal(o3[0], out[0])
    k3 = k.clone()
    k3[1, 1, 7, 0] = float("nan")
    assert attention(q, k3, v, pad, precision="int8")[1, 1].isnan().all()
    v3 = v.clone()
    v3[1, 1, 7, 2] = float("nan")
    o3 = attention(q, k, v3, pad, precision="int8")
    assert o3[1, 1, :, 2].isnan().all() and not o3[1, 1, :, 3].isnan().any()


def test_int8_reference_is_inference_only():
    q, k, v = qkv(1, 1, 4, 8)
    with pytest.raises(ValueError, match="precision='int8' attention is inference-only"):
        attention_reference(q.requires_grad_(), k, v, precision="int8")


# --- varlen ---------------------------------------------------------------------------------------


def packed(lengths, h, d, dtype=torch.float32):
    t = sum(lengths)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    return tuple(torch.randn(t, h, d).to(dtype) for _ in range(3)) + (cu,)


def assert_varlen_close(out, q, k, v, cu, scale=None, precision="fp32"):
    """Each sequence checked like the padded op: against float64, within twice torch's SDPA error."""
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        sl = slice(start, end)
        per = [t[sl].transpose(0, 1)[None] for t in (q, k, v)]
        assert_attention_close(out[sl].transpose(0, 1)[None], *per, scale=scale, precision=precision)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 59, 64, 128])
def test_varlen_matches_reference(isa, dtype, d):
    q, k, v, cu = packed([5, 0, 130, 1, 64, 97], 3, d, dtype)
    out = attention_varlen(q, k, v, cu, 130)
    assert out.shape == q.shape and out.dtype == dtype
    assert_varlen_close(out, q, k, v, cu)
    torch.testing.assert_close(out.float(), attention_varlen_reference(q, k, v, cu, 130).float(),
                               atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)


# Tasks run first on the thread whose share of the rows holds the sequence's middle token, then
# on any thread that is free: whichever thread computes a task, the result is the same.
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_varlen_same_result_on_any_threads(isa, precision):
    q, k, v, cu = packed([300, 1, 0, 7, 64, 129, 5, 33], 2, 64)
    old = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            outs.append(attention_varlen(q, k, v, cu, 300, precision=precision))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert_varlen_close(outs[0], q, k, v, cu, precision=precision)


@pytest.mark.parametrize("d", [32, 59, 64])
def test_varlen_bf16_precision(isa, d):
    q, k, v, cu = packed([5, 0, 130, 1, 64, 97, 300], 3, d)
    out = attention_varlen(q, k, v, cu, 300, precision="bf16")
    assert out.dtype == torch.float32
    assert_varlen_close(out, q, k, v, cu, precision="bf16")
    torch.testing.assert_close(out, attention_varlen_reference(q, k, v, cu, 300, precision="bf16"),
                               atol=2e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 59, 64])
def test_varlen_int8_precision(isa, dtype, d):
    q, k, v, cu = packed([5, 0, 130, 1, 64, 97, 300], 3, d, dtype)
    out = attention_varlen(q, k, v, cu, 300, precision="int8")
    assert out.dtype == dtype
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            per = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]
            assert_int8_close(out[start:end].transpose(0, 1)[None], *per)
    ref = attention_varlen_reference(q, k, v, cu, 300, precision="int8")
    assert (out.float() - ref.float()).abs().max() <= 3 * v.float().abs().max() / 255 + 1e-2


def test_varlen_equals_padded_on_real_tokens(isa):
    lengths = [17, 64, 3]
    q, k, v, cu = packed(lengths, 2, 64)
    out = attention_varlen(q, k, v, cu, 64, scale=0.2)
    s = max(lengths)
    pad = torch.zeros(3, 3, 2, s, 64)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        for j, t in enumerate((q, k, v)):
            pad[j, i, :, : b - a] = t[a:b].transpose(0, 1)
    keep = padding_mask(3, s, lengths)
    ref = attention(pad[0], pad[1], pad[2], keep, scale=0.2)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        torch.testing.assert_close(out[a:b], ref[i, :, : b - a].transpose(0, 1), atol=1e-6, rtol=1e-5)


def test_varlen_strided_heads():
    """q, k, v as views of one fused [T, 3, H, D] projection."""
    qkv_ = torch.randn(40, 3, 4, 32)
    q, k, v = qkv_.unbind(1)
    cu = torch.tensor([0, 10, 40], dtype=torch.int32)
    assert_varlen_close(attention_varlen(q, k, v, cu, 30), q, k, v, cu)


# --- compile, export, opcheck ---------------------------------------------------------------------


def test_opcheck():
    q, k, v = qkv(2, 3, 20, 32)
    torch.library.opcheck(torch.ops.sparsebert.attention.default, (q, k, v, padding_mask(2, 20, [20, 5]), None))
    torch.library.opcheck(torch.ops.sparsebert.attention.default, (q, k, v, None, 0.5))
    qp, kp, vp, cu = packed([5, 15], 3, 32)
    torch.library.opcheck(torch.ops.sparsebert.attention_varlen.default, (qp, kp, vp, cu, 15, None))
    torch.library.opcheck(torch.ops.sparsebert.attention.default, (q, k, v, None, None, "bf16"))
    torch.library.opcheck(torch.ops.sparsebert.attention_varlen.default, (qp, kp, vp, cu, 15, None, "bf16"))
    torch.library.opcheck(torch.ops.sparsebert.attention.default, (q, k, v, None, None, "int8"))
    torch.library.opcheck(torch.ops.sparsebert.attention_varlen.default, (qp, kp, vp, cu, 15, None, "int8"))


def test_torch_compile_fullgraph():
    q, k, v = qkv(2, 3, 20, 32)
    mask = padding_mask(2, 20, [20, 5])
    fn = torch.compile(lambda q, k, v, m: attention(q, k, v, m) * 2, fullgraph=True)
    torch.testing.assert_close(fn(q, k, v, mask), attention(q, k, v, mask) * 2)
    qp, kp, vp, cu = packed([5, 15], 3, 32)
    fv = torch.compile(lambda q, k, v, cu: attention_varlen(q, k, v, cu, 15) + 1, fullgraph=True)
    torch.testing.assert_close(fv(qp, kp, vp, cu), attention_varlen(qp, kp, vp, cu, 15) + 1)


def test_no_autograd():
    q, k, v = qkv(1, 1, 4, 8)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="sparsebert::attention is inference-only"):
        attention(q, k, v).sum().backward()
    with torch.no_grad():
        assert attention(q, k, v).shape == q.shape


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.randn(2, 3, 5), None), "batch, heads, seq"),
        (lambda: (*qkv(2, 3, 5, 16)[:1], torch.randn(2, 4, 5, 16), torch.randn(2, 4, 5, 16), None), r"k must be \[2, 3"),
        (lambda: (*qkv(2, 3, 5, 16)[:2], torch.randn(2, 3, 6, 16), None), "v must have k's shape"),
        (lambda: (*qkv(2, 3, 5, 300), None), "head_dim must be in 1..256, got 300"),
        (lambda: (*qkv(2, 3, 5, 16, torch.float16), None), "float32 and bfloat16, got q of dtype"),
        (lambda: (*qkv(2, 3, 5, 16)[:2], torch.randn(2, 3, 5, 16).bfloat16(), None), "one dtype"),
        (lambda: (*qkv(2, 3, 5, 16), torch.ones(2, 6)), r"key-padding mask and must be \[batch, key_seq\] = \[2, 5\]"),
        (lambda: (*qkv(2, 3, 5, 16), torch.ones(3, 5)), r"= \[2, 5\], got \[3, 5\]"),
        (lambda: (*qkv(2, 3, 5, 16), torch.full((2, 5), 2.0)), "holds 1 \\(keep\\) and 0 \\(padding\\) only"),
        (lambda: (*qkv(2, 3, 5, 16), torch.zeros(2, 2, 5, 5)), r"broadcastable to \[batch, heads, q_seq, key_seq\] = \[2, 3, 5, 5\]"),
        (lambda: (*qkv(2, 3, 5, 16), torch.zeros(2, 1, 5, 5, dtype=torch.float64)), "additive mask must be float32"),
        (lambda: (*qkv(2, 3, 5, 16), torch.zeros(1, 5, 5)), "got 3-D"),
    ],
)
def test_bad_input(make, match):
    q, k, v, mask = make()
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, mask)


def test_bad_precision():
    q, k, v = qkv(1, 1, 3, 8)
    for bad in ("fp16", "BF16", ""):
        with pytest.raises(ValueError, match=f"precision must be 'fp32', 'bf16' or 'int8', got '{bad}'"):
            attention(q, k, v, precision=bad)
        with pytest.raises(ValueError, match=f"precision must be 'fp32', 'bf16' or 'int8', got '{bad}'"):
            attention_varlen(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                             torch.tensor([0, 3], dtype=torch.int32), 3, precision=bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        attention_reference(q, k, v, precision="fp16")


def test_bad_scale():
    with pytest.raises(ValueError, match="scale must be finite, got inf"):
        attention(*qkv(1, 1, 3, 8), None, math.inf)


@pytest.mark.parametrize(
    "cu, max_len, match",
    [
        ([0, 5, 3, 10], 10, r"non-decreasing, got cu_seqlens\[1\] = 5 > cu_seqlens\[2\] = 3"),
        ([0, 5, 9], 10, "must end at the number of tokens 10, got 9"),
        ([1, 5, 10], 10, "must start at 0, got 1"),
        ([0, 5, 10], 4, r"at least the longest sequence \(5\), got 4"),
    ],
)
def test_varlen_bad_cu_seqlens(cu, max_len, match):
    q = torch.randn(10, 2, 16)
    with pytest.raises(ValueError, match=match):
        attention_varlen(q, q, q, torch.tensor(cu, dtype=torch.int32), max_len)


def test_varlen_bad_input():
    q = torch.randn(10, 2, 16)
    with pytest.raises(ValueError, match="1-D int32 tensor"):
        attention_varlen(q, q, q, torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match="packed tokens"):
        attention_varlen(q, q, torch.randn(11, 2, 16), torch.tensor([0, 10], dtype=torch.int32), 10)
    with pytest.raises(ValueError, match="head_dim must be in 1..256"):
        z = torch.randn(4, 1, 257)
        attention_varlen(z, z, z, torch.tensor([0, 4], dtype=torch.int32), 4)


def test_isa_reported():
    assert sparsebert.active_isa() in ("scalar", "avx2", "avx512", "avx512bf16", "amx")
