"""int8_linear / bsr_int8_linear against dequantize-then-matmul, every ISA path (every INT8 path:
each level with and without the CPU's VNNI, see conftest.INT8_PATHS).

The reference quantizes activations with the same rule as the kernels, so the integers agree
exactly and the comparison measures only the kernel (its fp32 epilogue and output rounding);
quantization error itself is measured against nn.Linear in test_int8_modules.py.
"""

import pytest
import torch

import sparsebert

from conftest import assert_linear_close, int8_path_params, set_int8_path
from sparsebert.ops import (
    bsr_int8_linear,
    bsr_int8_linear_reference,
    int8_linear,
    int8_linear_reference,
    int8_weight_only_linear,
    int8_weight_only_linear_reference,
)
from sparsebert.ops.int8_format import (
    pack_int8_bsr,
    pack_int8_dense,
    pack_int8_weight_only,
    quantize_activations,
    quantize_symmetric,
    unpack_int8_dense,
    unpack_int8_weight_only,
    weight_sum,
)
from sparsebert.prune import block_magnitude_mask

DTYPES = (torch.float32, torch.bfloat16)


@pytest.fixture(params=int8_path_params())
def isa(request, monkeypatch):
    """conftest's `isa` for this file's tests, over the INT8 paths rather than the ISA levels."""
    set_int8_path(monkeypatch, request.param)
    return request.param


def assert_matches_reference(out, ref):
    """Max error within one unit in the last place at the output's largest magnitude (bf16),
    or eight (fp32: the epilogue rounds int32 -> fp32 and multiplies twice)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if ref.numel() == 0:
        return
    eps = torch.finfo(ref.dtype).eps
    scale = max(1.0, ref.float().abs().max().item())
    tol = (8 if ref.dtype == torch.float32 else 1) * eps * scale
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


def dense_case(n, k, dtype, bias=True):
    w = torch.randn(n, k)
    q, s = quantize_symmetric(w)
    b = torch.randn(n).to(dtype) if bias else None
    return pack_int8_dense(q), s, weight_sum(q), b


def run_dense(x, n, k, bias=True):
    packed, s, sums, b = dense_case(n, k, x.dtype, bias)
    out = int8_linear(x, packed, s, sums, b, (n, k))
    return out, int8_linear_reference(x, packed, s, sums, b, (n, k))


def run_bsr(x, n, k, block_size, sparsity=0.5, bias=True):
    w = torch.randn(n, k)
    q, s = quantize_symmetric(w)
    q = q * block_magnitude_mask(w, sparsity, block_size)
    values, crow, col = pack_int8_bsr(q, block_size)
    b = torch.randn(n).to(x.dtype) if bias else None
    args = (values, s, weight_sum(q), crow, col, b, (n, k), block_size)
    return bsr_int8_linear(x, *args), bsr_int8_linear_reference(x, *args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [0, 1, 3, 7, 97])
@pytest.mark.parametrize("n,k", [(96, 128), (70, 33), (1, 1), (130, 257), (64, 768)])
def test_int8_linear(isa, dtype, m, n, k):
    assert_matches_reference(*run_dense(torch.randn(m, k).to(dtype), n, k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [(32, 32), (16, 16), (16, 4), (16, 1), (8, 3), (64, 64), (32, 128)])
@pytest.mark.parametrize("m", [1, 13, 48, 97])
def test_bsr_int8_linear(isa, dtype, block_size, m):
    assert_matches_reference(*run_bsr(torch.randn(m, 256).to(dtype), 80, 256, block_size))


# Blocks of one output row (fine-grained pruning): on AVX-512 VNNI levels a kernel vectorized over
# rows of x, whose tiles are 16 outputs x 16..64 rows: shapes on both sides of every edge.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [(1, 4), (1, 8), (1, 32)])
@pytest.mark.parametrize("m", [1, 15, 16, 17, 64, 65, 130])
@pytest.mark.parametrize("n,k,sparsity", [(48, 256, 0.9), (17, 100, 0.5), (1, 4, 0.0), (33, 770, 0.99)])
def test_bsr_int8_one_output_blocks(isa, dtype, block_size, m, n, k, sparsity):
    assert_matches_reference(*run_bsr(torch.randn(m, k).to(dtype), n, k, block_size, sparsity))


@pytest.mark.parametrize("mode", ["per_token_asym", "per_tensor"])
def test_bsr_int8_one_output_blocks_modes_and_layout(isa, mode):
    # 3-D input with a row stride, empty output rows, no bias, every act_quant family.
    x = torch.randn(3, 23, 96 + 7)[..., 7:]
    w = torch.randn(40, 96)
    w[5:9] = 0
    q, s = quantize_symmetric(w)
    q = q * block_magnitude_mask(w, 0.8, (1, 4))
    values, crow, col = pack_int8_bsr(q, (1, 4))
    args = (values, s, weight_sum(q), crow, col, None, (40, 96), (1, 4), mode)
    out = bsr_int8_linear(x, *args)
    assert out.shape == (3, 23, 40)
    assert_matches_reference(out, bsr_int8_linear_reference(x, *args))
    assert torch.equal(out[..., 5:9], torch.zeros(3, 23, 4))


@pytest.mark.parametrize("sparsity", [0.0, 1.0])
def test_bsr_int8_dense_and_empty_patterns(isa, sparsity):
    out, ref = run_bsr(torch.randn(20, 64), 48, 64, (16, 16), sparsity)
    assert_matches_reference(out, ref)


def test_leading_dims_strides_no_bias(isa):
    x = torch.randn(2, 9, 64 + 5)[..., 5:]  # 3-D, row stride 69
    out, ref = run_dense(x, 40, 64, bias=False)
    assert out.shape == (2, 9, 40)
    assert_matches_reference(out, ref)


def test_saturation_cases(isa):
    # Huge activations, all-equal rows, a zero row, one outlier per row: every row quantizes on
    # its own scale, and the int32 sums of u8 x s8 never saturate (no int16 step).
    k = 512
    x = torch.randn(6, k)
    x[0] *= 1e30
    x[1] = 3.0
    x[2] = 0.0
    x[3, 7] = 1e4
    x[4] = -127.0
    x[5] = torch.where(torch.arange(k) % 2 == 0, 1.0, -1.0)
    packed, s, sums, b = dense_case(32, k, torch.float32)
    packed.fill_(127)  # every weight at +127 with the largest activations: worst-case sums
    sums = torch.full((32,), 127 * k, dtype=torch.int32)
    out = int8_linear(x, packed, s, sums, b, (32, k))
    assert torch.isfinite(out).all()
    assert_matches_reference(out, int8_linear_reference(x, packed, s, sums, b, (32, k)))
    assert torch.equal(out[2], b)  # zero row: scale 0, exactly the bias


def test_zero_weight_rows(isa):
    w = torch.randn(32, 64)
    w[5] = 0
    q, s = quantize_symmetric(w)
    assert s[5] == 0
    b = torch.randn(32)
    x = torch.randn(4, 64)
    out = int8_linear(x, pack_int8_dense(q), s, weight_sum(q), b, (32, 64))
    assert torch.equal(out[:, 5], b[5].expand(4))


# Outputs of 8 MiB and more are written with non-temporal stores (whole, 64-byte aligned vectors
# only): n = 4096 keeps every vector aligned, n = 4088 misaligns every other row and leaves a
# partial vector at each row's end; (1, 4) blocks take the kernel vectorized over rows.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [4096, 4088])
@pytest.mark.parametrize("block_size", [None, (32, 32), (1, 4)])
def test_large_outputs_streamed(isa, dtype, n, block_size):
    m, k = 1041, 32
    assert m * n * torch.finfo(dtype).bits // 8 >= 8 << 20
    x = torch.randn(m, k).to(dtype)
    out, ref = run_dense(x, n, k) if block_size is None else run_bsr(x, n, k, block_size, 0.5)
    assert_matches_reference(out, ref)


# GELU in the epilogue (activation="gelu") of every kernel family: dense, blocks of 32 and 16
# outputs (both tile widths), odd blocks, and one-output blocks (the kernel vectorized over rows);
# row scales from 0.01 to 3 put outputs in the negative tail, on the curve and on the linear part.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [None, (32, 32), (16, 16), (8, 3), (1, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_gelu_epilogue(isa, dtype, block_size, bias):
    m, n, k = 37, 80, 256
    x = (torch.randn(m, k) * torch.logspace(-2, 0.5, m)[:, None] / 16).to(dtype)
    w = torch.randn(n, k)
    q, s = quantize_symmetric(w)
    b = torch.randn(n).to(dtype) if bias else None
    if block_size is None:
        args = (pack_int8_dense(q), s, weight_sum(q), b, (n, k), "per_token")
        op, ref = int8_linear, int8_linear_reference
    else:
        q = q * block_magnitude_mask(w, 0.5, block_size)
        values, crow, col = pack_int8_bsr(q, block_size)
        args = (values, s, weight_sum(q), crow, col, b, (n, k), block_size, "per_token")
        op, ref = bsr_int8_linear, bsr_int8_linear_reference
    out = op(x, *args, "gelu")
    expected = ref(x, *args, "gelu")
    assert_matches_reference(out, expected)
    plain = op(x, *args)
    assert (plain < -1).any() and ((plain > -0.5) & (plain < 0.5)).any()  # both regimes are exercised
    assert not torch.equal(out, plain)


@pytest.mark.parametrize("mode", ["per_token_asym", "per_tensor"])
def test_gelu_epilogue_with_other_act_quant(isa, mode):
    x = torch.randn(2, 9, 64) / 4
    packed, s, sums, b = dense_case(48, 64, torch.float32)
    args = (packed, s, sums, b, (48, 64), mode, "gelu")
    assert_matches_reference(int8_linear(x, *args), int8_linear_reference(x, *args))


def test_threads_agree(isa):
    x = torch.randn(70, 128)
    packed, s, sums, b = dense_case(96, 128, torch.float32)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(int8_linear(x, packed, s, sums, b, (96, 128)))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])


def _with_threads(threads, fn):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return fn()
    finally:
        torch.set_num_threads(old)


# The row-pipelined split (AVX-512 VNNI and AMX kernels, two or more threads, at least 128 rows,
# weights up to 1 MiB): each thread quantizes and multiplies its own rows a chunk at a time. K =
# 1536 gives chunks of 120 rows (AMX: 96), so a thread's share of 601 rows runs several and a short
# last one (K = 256: 612 rows, one; AMX: 224); one thread takes the default split, and the two must
# agree bit for bit.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["per_token", "per_token_asym", "per_tensor"])
@pytest.mark.parametrize("block_size", [None, (32, 32), (16, 4)])
@pytest.mark.parametrize("m", [128, 301, 601])
@pytest.mark.parametrize("n,k", [(96, 1536), (768, 256)])
def test_row_pipelined(isa, dtype, mode, block_size, m, n, k):
    x = (torch.randn(m, k) * torch.logspace(-2, 0.5, m)[:, None]).to(dtype)
    w = torch.randn(n, k)
    q, s = quantize_symmetric(w)
    b = torch.randn(n).to(dtype)
    if block_size is None:
        args = (pack_int8_dense(q), s, weight_sum(q), b, (n, k), mode)
        op, ref = int8_linear, int8_linear_reference
    else:
        q = q * block_magnitude_mask(w, 0.8, block_size)
        values, crow, col = pack_int8_bsr(q, block_size)
        args = (values, s, weight_sum(q), crow, col, b, (n, k), block_size, mode)
        op, ref = bsr_int8_linear, bsr_int8_linear_reference
    for activation in ("none", "gelu"):
        out = _with_threads(2, lambda: op(x, *args, activation))
        assert_matches_reference(out, ref(x, *args, activation))
        assert torch.equal(out, _with_threads(1, lambda: op(x, *args, activation)))


# Layers with over 1 MiB of weights are not row-pipelined: each thread takes a share of the block
# rows for all 300 rows (on AMX, 288 in tiles of 32 rows, the last 12 on the AVX-512 VNNI
# kernel). Every level agrees with the reference, and one thread with two bit for bit.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [None, (32, 64)])
def test_large_weights_not_row_pipelined(isa, dtype, block_size):
    m, n, k = 300, 1024, 1536
    x = (torch.randn(m, k) * torch.logspace(-2, 0.5, m)[:, None]).to(dtype)
    w = torch.randn(n, k)
    q, s = quantize_symmetric(w)
    b = torch.randn(n).to(dtype)
    if block_size is None:
        args = (pack_int8_dense(q), s, weight_sum(q), b, (n, k))
        op, ref = int8_linear, int8_linear_reference
    else:
        q = q * block_magnitude_mask(w, 0.2, block_size)
        values, crow, col = pack_int8_bsr(q, block_size)
        assert values.numel() > 1 << 20
        args = (values, s, weight_sum(q), crow, col, b, (n, k), block_size)
        op, ref = bsr_int8_linear, bsr_int8_linear_reference
    out = _with_threads(2, lambda: op(x, *args))
    assert_matches_reference(out, ref(x, *args))
    assert torch.equal(out, _with_threads(1, lambda: op(x, *args)))


def test_row_pipelined_non_finite_row(isa):
    packed, s, sums, b = dense_case(64, 1024, torch.float32)
    x = torch.randn(300, 1024)
    x[250, 7] = float("nan")
    with pytest.raises(ValueError, match="x holds Inf or NaN in row 250"):
        _with_threads(2, lambda: int8_linear(x, packed, s, sums, b, (64, 1024)))


# One-output blocks: x quantized by rows, transposed to quad-major order in groups of 16 quads,
# then the kernel vectorized over rows. 130 rows end in a partial vector of 16, 200 inputs in a
# partial group of quads; one thread and two agree bit for bit, and a bad last row is named.
def test_one_output_blocks_thread_split(isa):
    x = torch.randn(130, 200)
    w = torch.randn(48, 200)
    q, s = quantize_symmetric(w)
    q = q * block_magnitude_mask(w, 0.9, (1, 4))
    values, crow, col = pack_int8_bsr(q, (1, 4))
    args = (values, s, weight_sum(q), crow, col, torch.randn(48), (48, 200), (1, 4))
    out = _with_threads(2, lambda: bsr_int8_linear(x, *args))
    assert_matches_reference(out, bsr_int8_linear_reference(x, *args))
    assert torch.equal(out, _with_threads(1, lambda: bsr_int8_linear(x, *args)))
    x[129, 3] = float("inf")
    with pytest.raises(ValueError, match="x holds Inf or NaN in row 129"):
        _with_threads(2, lambda: bsr_int8_linear(x, *args))


def test_dense_packing_round_trip():
    q, _ = quantize_symmetric(torch.randn(70, 45))
    assert torch.equal(unpack_int8_dense(pack_int8_dense(q), (70, 45)), q)


def test_quantize_rule():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    q, s = quantize_symmetric(x)
    assert torch.equal(q[0], torch.tensor([64, -127, 32, 0], dtype=torch.int8))  # 63.5 -> 64, 31.75 -> 32
    assert s[0] == pytest.approx(2 / 127) and s[1] == 0 and not q[1].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    packed, s, sums, b = dense_case(40, 64, dtype)
    x = torch.randn(2, 5, 64).to(dtype)
    torch.library.opcheck(torch.ops.sparsebert.int8_linear.default, (x, packed, s, sums, b, [40, 64]))
    torch.library.opcheck(torch.ops.sparsebert.int8_linear.default,
                          (x, packed, s, sums, b, [40, 64], "per_token", "gelu"))
    w = torch.randn(40, 64)
    q, s = quantize_symmetric(w)
    values, crow, col = pack_int8_bsr(q * block_magnitude_mask(w, 0.5, (8, 8)), (8, 8))
    torch.library.opcheck(torch.ops.sparsebert.bsr_int8_linear.default,
                          (x, values, s, weight_sum(q), crow, col, b, [40, 64], [8, 8]))


def test_compile_fullgraph():
    packed, s, sums, b = dense_case(40, 64, torch.float32)
    f = lambda x: int8_linear(x, packed, s, sums, b, (40, 64)).relu()  # noqa: E731
    x = torch.randn(6, 64)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))


# Bad input: ValueError naming the bad value.


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_bad_weight_scale(bad):
    packed, s, sums, b = dense_case(32, 64, torch.float32)
    s[3] = bad
    with pytest.raises(ValueError, match=r"weight_scale\[3\]=.* is not a finite non-negative number"):
        int8_linear(torch.randn(2, 64), packed, s, sums, b, (32, 64))


# The vector quantizers find a row's range 64 values at a time and the rest of the row 16 at a
# time (the last vector partial): a non-finite value in either part, of either sign, fails the
# row it is in, whichever row and dtype.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("row,col", [(1, 5), (0, 63), (2, 64), (1, 99)])
def test_non_finite_activations(isa, dtype, bad, row, col):
    packed, s, sums, b = dense_case(32, 100, dtype)
    x = torch.randn(3, 100)
    x[row, col] = bad
    with pytest.raises(ValueError, match=f"x holds Inf or NaN in row {row}"):
        int8_linear(x.to(dtype), packed, s, sums, b, (32, 100))


def test_wrong_shapes_and_dtypes():
    packed, s, sums, b = dense_case(32, 64, torch.float32)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="in_features=64 .* got shape \\[2, 63\\]"):
        int8_linear(torch.randn(2, 63), packed, s, sums, b, (32, 64))
    with pytest.raises(ValueError, match="int8 weights must be torch.int8, got Float"):
        int8_linear(x, packed.float(), s, sums, b, (32, 64))
    with pytest.raises(ValueError, match="weight_sum must be int32 of shape \\[32\\]"):
        int8_linear(x, packed, s, sums.long(), b, (32, 64))
    with pytest.raises(ValueError, match="weight_scale must be float32 of shape \\[32\\]"):
        int8_linear(x, packed, s[:31], sums, b, (32, 64))
    with pytest.raises(ValueError, match="dtype mismatch: x is Float but bias is BFloat16"):
        int8_linear(x, packed, s, sums, b.bfloat16(), (32, 64))
    with pytest.raises(ValueError, match="float32 or bfloat16 activations, got Half"):
        int8_linear(x.half(), packed, s, sums, None, (32, 64))


# Weight-only INT8: x stays float, so the kernel is compared with the float math on the
# dequantized weight (the adaptive rule of conftest).


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [0, 1, 3, 8, 97])
@pytest.mark.parametrize("n,k", [(96, 128), (70, 33), (1, 1), (130, 257)])
def test_int8_weight_only(isa, dtype, m, n, k):
    q, s = quantize_symmetric(torch.randn(n, k))
    packed = pack_int8_weight_only(q)
    b = torch.randn(n).to(dtype)
    x = torch.randn(m, k).to(dtype)
    out = int8_weight_only_linear(x, packed, s, b, (n, k))
    w = (q.float() * s[:, None]).to(dtype)  # the dequantized weight, in x's dtype for torch's own
    assert_linear_close(out, x, w.float() if dtype == torch.float32 else w, b)
    ref = int8_weight_only_linear_reference(x, packed, s, b, (n, k))
    assert out.shape == ref.shape and out.dtype == ref.dtype


def test_weight_only_packing_and_checks():
    q, s = quantize_symmetric(torch.randn(70, 45))
    packed = pack_int8_weight_only(q)
    assert torch.equal(unpack_int8_weight_only(packed, (70, 45)), q)
    torch.library.opcheck(torch.ops.sparsebert.int8_weight_only_linear.default,
                          (torch.randn(2, 3, 45), packed, s, torch.randn(70), [70, 45]))
    with pytest.raises(ValueError, match="weight must have shape \\[3, 45, 32, 1\\]"):
        int8_weight_only_linear(torch.randn(2, 45), pack_int8_dense(q), s, None, (70, 45))
    s[0] = float("nan")
    with pytest.raises(ValueError, match=r"weight_scale\[0\]=nan"):
        int8_weight_only_linear(torch.randn(2, 45), packed, s, None, (70, 45))


@pytest.mark.parametrize("mode", ["per_token", "per_token_asym", "per_tensor", "per_tensor_asym"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 13, 48])
def test_act_quant_modes(isa, mode, dtype, m):
    # One-sided rows (GELU-like), a zero row and mixed rows; dense and block-sparse kernels.
    x = torch.randn(m, 256)
    x[0] = x[0].abs()
    if m > 2:
        x[1] = 0
        x[2] = -x[2].abs() - 1
    x = x.to(dtype)
    packed, s, sums, b = dense_case(40, 256, dtype)
    out = int8_linear(x, packed, s, sums, b, (40, 256), mode)
    assert_matches_reference(out, int8_linear_reference(x, packed, s, sums, b, (40, 256), mode))
    w = torch.randn(40, 256)
    q, ws = quantize_symmetric(w)
    q = q * block_magnitude_mask(w, 0.5, (16, 32))
    values, crow, col = pack_int8_bsr(q, (16, 32))
    args = (values, ws, weight_sum(q), crow, col, b, (40, 256), (16, 32), mode)
    assert_matches_reference(bsr_int8_linear(x, *args), bsr_int8_linear_reference(x, *args))


def test_asymmetric_rule():
    x = torch.tensor([[0.0, 1.0, 2.55], [-1.0, 0.5, 0.0]])
    q, s = quantize_activations(x, "per_token_asym")
    assert s[0] == pytest.approx(2.55 / 255) and s[1] == pytest.approx(1.5 / 255)
    torch.testing.assert_close(q.float() * s[:, None], x, atol=s.max().item() / 2, rtol=0)
    qt, st = quantize_activations(x, "per_tensor")
    assert st[0] == st[1] == pytest.approx(2.55 / 127)
    with pytest.raises(ValueError, match="act_quant='per_row' is not a mode"):
        quantize_activations(x, "per_row")


def test_bad_activation():
    packed, s, sums, b = dense_case(32, 64, torch.float32)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="activation='relu' is not one"):
        int8_linear(x, packed, s, sums, b, (32, 64), "per_token", "relu")
    with pytest.raises(ValueError, match="activation='GELU' is not one"):
        int8_linear(x.to("meta"), packed.to("meta"), s.to("meta"), sums.to("meta"), b.to("meta"), (32, 64),
                    "per_token", "GELU")
    w = torch.randn(32, 64)
    q, s = quantize_symmetric(w)
    values, crow, col = pack_int8_bsr(q, (16, 16))
    with pytest.raises(ValueError, match="activation='tanh' is not one"):
        bsr_int8_linear(x, values, s, weight_sum(q), crow, col, b, (32, 64), (16, 16), "per_token", "tanh")
    with pytest.raises(ValueError, match="activation='tanh' is not one"):
        bsr_int8_linear_reference(x, values, s, weight_sum(q), crow, col, b, (32, 64), (16, 16), "per_token",
                                  "tanh")


def test_bad_act_quant():
    packed, s, sums, b = dense_case(32, 64, torch.float32)
    with pytest.raises(ValueError, match="act_quant='int4' is not a mode"):
        int8_linear(torch.randn(2, 64), packed, s, sums, b, (32, 64), "int4")


def test_backward_raises_instead_of_wrong_gradients():
    """No derivative: backward through an INT8 op raises, never a silently constant op."""
    lin = torch.nn.Linear(64, 32)
    mod = sparsebert.Int8Linear.from_dense(lin)
    x = torch.randn(4, 64, requires_grad=True)
    with pytest.raises(RuntimeError, match="sparsebert::int8_linear is inference-only"):
        mod(x).sum().backward()
