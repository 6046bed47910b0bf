"""sparsebert.ops.bsr_linear against the float64 reference, every ISA path, awkward shapes."""

import pytest
import torch
import torch.nn.functional as F

from sparsebert import ops
from sparsebert.ops import bsr_linear, bsr_linear_reference, bsr_to_dense, pack_bsr
from sparsebert.prune import block_magnitude_mask
from conftest import assert_linear_close, block_sparse_weight

SIZES = (1, 2, 4, 8, 16, 32, 64)
DTYPES = (torch.float32, torch.bfloat16)


def run(x, w, bias, block_size):
    values, crow, col = pack_bsr(w, block_size)
    return bsr_linear(x, values, crow, col, bias, tuple(w.shape), block_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("br", SIZES)
@pytest.mark.parametrize("bc", SIZES)
def test_every_block_size(isa, dtype, br, bc):
    # N, K not multiples of any block size above 1; M=13 exercises a row tail on every path.
    n, k, m = 67, 45, 13
    w = block_sparse_weight(n, k, (br, bc), 0.6, dtype)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    assert_linear_close(run(x, w, bias, (br, bc)), x, w, bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [0, 1, 3, 7, 97])
@pytest.mark.parametrize("n,k", [(96, 128), (70, 33), (1, 1), (130, 257)])
@pytest.mark.parametrize("block_size", [(32, 32), (16, 16), (16, 1), (8, 3)])
def test_awkward_shapes(isa, dtype, m, n, k, block_size):
    w = block_sparse_weight(n, k, block_size, 0.5, dtype)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    out = run(x, w, bias, block_size)
    assert out.shape == (m, n)
    assert_linear_close(out, x, w, bias)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_in_several_chunks_of_x(isa, dtype):
    # The kernels walk the rows of x in chunks that stay in L2 (256 KiB): rows of 32 KiB (fp32) or
    # 16 KiB (bf16) make chunks of one or two register tiles of rows here, so 100 rows span several
    # chunks and end in a partial one, every block row passing over each chunk. (The AMX bf16
    # kernel takes whole 16-row tiles without chunks; it runs here too.)
    n, k, m = 96, 8192, 100
    w = block_sparse_weight(n, k, (32, 32), 0.5, dtype)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    assert_linear_close(run(x, w, bias, (32, 32)), x, w, bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", ["all_zero", "dense", "empty_block_rows", "one_block"])
def test_block_patterns(isa, dtype, pattern):
    n, k, bs = 96, 80, (32, 16)
    w = torch.randn(n, k)
    if pattern == "all_zero":
        w.zero_()
    elif pattern == "empty_block_rows":
        w[:32] = 0
        w[64:] = 0
    elif pattern == "one_block":
        keep = torch.zeros_like(w)
        keep[32:64, 16:32] = 1
        w = w * keep
    w = w.to(dtype)
    x = torch.randn(5, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    values, crow, col = pack_bsr(w, bs)
    expected_blocks = {"all_zero": 0, "dense": 3 * 5, "empty_block_rows": 5, "one_block": 1}[pattern]
    assert values.shape[0] == expected_blocks
    out = bsr_linear(x, values, crow, col, bias, (n, k), bs)
    assert_linear_close(out, x, w, bias)
    if pattern == "all_zero":
        assert torch.equal(out, bias.expand(5, n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [(32, 32), (16, 16), (64, 8)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_long_block_rows(isa, dtype, block_size, sparsity):
    # Block rows holding more weights than fit L1 are done in groups of blocks with fp32
    # partial sums in between (kGroupBytes = 24 KiB): K = 1000 gives several groups per row.
    n, k, m = 70, 1000, 13
    w = block_sparse_weight(n, k, block_size, sparsity, dtype)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    assert_linear_close(run(x, w, bias, block_size), x, w, bias)


# Outputs of 8 MiB and more are written with non-temporal stores (whole, aligned vectors only):
# n = 4096 keeps every vector aligned, n = 4088 misaligns rows and leaves a partial vector; 32x32
# blocks take the AMX kernel at the amx level (bf16), 8x16 the vector kernels.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [4096, 4088])
@pytest.mark.parametrize("block_size", [(8, 16), (32, 32)])
def test_large_outputs_streamed(isa, dtype, n, block_size):
    m, k = 1041, 32
    assert m * n * torch.finfo(dtype).bits // 8 >= 8 << 20
    w = block_sparse_weight(n, k, block_size, 0.5, dtype)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    assert_linear_close(run(x, w, bias, block_size), x, w, bias)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_bias(isa, dtype):
    w = block_sparse_weight(64, 64, (16, 16), 0.5, dtype)
    x = torch.randn(9, 64).to(dtype)
    assert_linear_close(run(x, w, None, (16, 16)), x, w, None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_dims_and_strides(isa, dtype):
    n, k, bs = 48, 40, (16, 8)
    w = block_sparse_weight(n, k, bs, 0.5, dtype)
    bias = torch.randn(n).to(dtype)
    x3 = torch.randn(2, 5, k).to(dtype)  # [B, S, K]
    out = run(x3, w, bias, bs)
    assert out.shape == (2, 5, n)
    assert_linear_close(out, x3, w, bias)
    wide = torch.randn(7, k + 9).to(dtype)[:, 3 : 3 + k]  # row stride k + 9
    assert_linear_close(run(wide, w, bias, bs), wide, w, bias)
    transposed = torch.randn(k, 6).to(dtype).t()  # column stride != 1
    assert_linear_close(run(transposed, w, bias, bs), transposed, w, bias)
    expanded = torch.randn(1, k).to(dtype).expand(4, k)  # row stride 0
    assert_linear_close(run(expanded, w, bias, bs), expanded, w, bias)


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads(isa, dtype):
    # More threads than block rows, and one thread: both split the work and must agree.
    w = block_sparse_weight(32, 64, (32, 32), 0.0, dtype)
    x = torch.randn(70, 64).to(dtype)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(run(x, w, None, (32, 32)))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])
    assert_linear_close(outs[1], x, w, None)


@pytest.mark.parametrize("bc", [1, 3, 5])
def test_bf16_odd_block_does_not_read_past_the_block(isa, bc):
    # bf16 packs inputs in pairs; with an odd block width the pair's second input belongs to the
    # next block column. When that block is not stored, a huge x there must not reach the output
    # (the kernel computes the sum over stored blocks only); a non-finite one gives NaN in exactly
    # the outputs where the dense layer has NaN (0 * Inf).
    n, k = 32, 4 * bc
    w = torch.randn(n, k)
    w[:16, bc : 2 * bc] = 0  # block column 1 not stored in block row 0
    w = w.to(torch.bfloat16)
    x = torch.randn(3, k).to(torch.bfloat16)
    x[:, bc] = 1e30
    x_ref = x.clone()
    x_ref[:, bc] = 0
    out = run(x, w, None, (16, bc))
    assert torch.isfinite(out[:, :16]).all()
    assert_linear_close(out[:, :16], x_ref, w[:16], None)
    x[:, bc] = float("inf")
    out = run(x, w, None, (16, bc))
    ref = torch.nn.functional.linear(x.float(), w.float())
    assert torch.equal(out.isnan(), ref.isnan()) and out[:, :16].isnan().all()


def test_bf16_rounds_like_torch():
    # A block of ones times exact values: the fp32 sum is exact, so the only error is the final
    # rounding to bf16, which must be round-to-nearest-even like torch's .to(bfloat16).
    k = 16
    w = torch.ones(16, k, dtype=torch.bfloat16)
    x = torch.full((1, k), 1.0 + 2**-7, dtype=torch.bfloat16)  # sum = 16 + 2**-3, a tie in bf16
    out = run(x, w, None, (16, 16))
    expected = (x.float() @ w.float().T).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_reference_matches_dense_math():
    w = block_sparse_weight(40, 50, (8, 8), 0.7)
    values, crow, col = pack_bsr(w, (8, 8))
    assert torch.equal(bsr_to_dense(values, crow, col, (40, 50), (8, 8)), w)
    x = torch.randn(6, 50)
    bias = torch.randn(40)
    torch.testing.assert_close(
        bsr_linear_reference(x, values, crow, col, bias, (40, 50), (8, 8)), F.linear(x, w, bias)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_opcheck(dtype, with_bias):
    w = block_sparse_weight(48, 40, (16, 8), 0.5, dtype)
    values, crow, col = pack_bsr(w, (16, 8))
    bias = torch.randn(48).to(dtype) if with_bias else None
    for x in (torch.randn(5, 40).to(dtype), torch.randn(2, 3, 40).to(dtype)):
        torch.library.opcheck(
            torch.ops.sparsebert.bsr_linear.default, (x, values, crow, col, bias, [48, 40], [16, 8])
        )


def test_opcheck_autograd():
    w = block_sparse_weight(32, 24, (8, 8), 0.5)
    values, crow, col = pack_bsr(w, (8, 8))
    x = torch.randn(5, 24, requires_grad=True)
    values.requires_grad_(True)
    bias = torch.randn(32, requires_grad=True)
    torch.library.opcheck(torch.ops.sparsebert.bsr_linear.default, (x, values, crow, col, bias, [32, 24], [8, 8]))


def test_backward_matches_reference():
    w = block_sparse_weight(32, 24, (8, 4), 0.5)
    values, crow, col = pack_bsr(w, (8, 4))
    grads = []
    for fn in (bsr_linear, bsr_linear_reference):
        x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(1), requires_grad=True)
        v = values.clone().requires_grad_(True)
        b = torch.zeros(32, requires_grad=True)
        y = fn(x, v, crow, col, b, (32, 24), (8, 4))
        (y * torch.arange(y.numel()).reshape(y.shape).sin()).sum().backward()
        grads.append((x.grad, v.grad, b.grad))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref)


def test_compile_fullgraph():
    w = block_sparse_weight(32, 24, (8, 8), 0.5)
    values, crow, col = pack_bsr(w, (8, 8))

    def f(x):
        return bsr_linear(x, values, crow, col, None, (32, 24), (8, 8)).relu()

    x = torch.randn(6, 24)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))


def test_export():
    w = block_sparse_weight(32, 24, (8, 8), 0.5)
    values, crow, col = pack_bsr(w, (8, 8))

    class M(torch.nn.Module):
        def forward(self, x):
            return bsr_linear(x, values, crow, col, None, (32, 24), (8, 8))

    x = torch.randn(6, 24)
    ep = torch.export.export(M(), (x,))
    assert any(n.target is torch.ops.sparsebert.bsr_linear.default for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x), M()(x))


def test_flops_are_skipped_for_dropped_blocks():
    # A weight with one stored block costs like one block: the output of every other block
    # row equals the bias exactly (nothing was accumulated into it).
    n, k = 64, 64
    w = torch.zeros(n, k)
    w[:16, :16] = torch.randn(16, 16)
    bias = torch.randn(n)
    x = torch.randn(3, k)
    out = run(x, w, bias, (16, 16))
    assert torch.equal(out[:, 16:], bias[16:].expand(3, n - 16))
    assert_linear_close(out, x, w, bias)


@pytest.mark.parametrize("block_size", [(32, 32), (16, 16), (64, 64), (16, 2), (32, 8), (48, 32)])
@pytest.mark.parametrize("m", [16, 31, 32, 48, 100])
@pytest.mark.parametrize("n", [96, 80, 200])
def test_amx_shapes(isa, block_size, m, n):
    # Shapes the AMX kernel takes (br % 16 == 0, even bc, K a multiple of the k step): whole
    # 16- and 32-row tiles, a row tail (AVX-512 BF16 rows), a last block row with 16 or fewer
    # valid outputs. On other ISA levels the same cases check those paths.
    k = 256
    w = block_sparse_weight(n, k, block_size, 0.5, torch.bfloat16)
    x = torch.randn(m, k).to(torch.bfloat16)
    bias = torch.randn(n).to(torch.bfloat16)
    assert_linear_close(run(x, w, bias, block_size), x, w, bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [(16, 16), (32, 32), (4, 1), (8, 3)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_propagate_as_in_the_dense_layer(isa, dtype, block_size, bad):
    # nn.Linear multiplies x by the zero weights too (0 * NaN = 0 * Inf = NaN): the NaN/Inf pattern
    # must be the dense layer's, also in block rows whose blocks do not touch the bad column.
    n, k, m = 70, 45, 9
    w = block_sparse_weight(n, k, block_size, 0.7, dtype)
    w[: 2 * block_size[0]] = 0  # empty block rows: the case that used to return the bias
    bias = torch.randn(n).to(dtype)
    x = torch.randn(m, k).to(dtype)
    x[1, 3] = bad
    x[4, k - 1] = bad
    x[6, :] = bad
    out = run(x, w, bias, block_size)
    ref = F.linear(x.float(), w.float(), bias.float())
    assert torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out.isinf(), ref.isinf()) and torch.equal(out[out.isinf()], ref[ref.isinf()].to(dtype))
    finite = torch.isfinite(ref)
    assert finite[[0, 2, 3, 5, 7, 8]].all() and not finite[[1, 4, 6]].any()
    assert_linear_close(out[finite.all(1)], x[finite.all(1)], w, bias)


def test_indices_changed_in_place_after_a_call_are_checked_again():
    """A pattern is validated once per (tensors, version): an in-place write through the tensor
    or any view bumps the version, so the next call walks the indices again."""
    w = torch.randn(64, 64) * block_magnitude_mask(torch.randn(64, 64), 0.5, (16, 16))
    values, crow, col = pack_bsr(w, (16, 16))
    x = torch.randn(5, 64)
    ops.bsr_linear(x, values, crow, col, None, (64, 64), (16, 16))  # valid: remembered
    col[0] = 4  # out of range for 4 block columns
    with pytest.raises(ValueError, match=r"col_indices\[0\]=4 is out of range for 4 block columns"):
        ops.bsr_linear(x, values, crow, col, None, (64, 64), (16, 16))
    col[0] = 0
    crow.view(-1)[1:2].fill_(crow[2].item() + 1)  # through a view
    with pytest.raises(ValueError, match="crow_indices must be non-decreasing"):
        ops.bsr_linear(x, values, crow, col, None, (64, 64), (16, 16))


def test_inference_tensor_indices_are_checked_on_every_call():
    w = torch.randn(64, 64) * block_magnitude_mask(torch.randn(64, 64), 0.5, (16, 16))
    with torch.inference_mode():
        values, crow, col = (t.clone() for t in pack_bsr(w, (16, 16)))
        x = torch.randn(5, 64)
        ops.bsr_linear(x, values, crow, col, None, (64, 64), (16, 16))
        col[-1] = -1  # inference tensors track no version: checked anyway
        with pytest.raises(ValueError, match=r"col_indices\[\d+\]=-1 is out of range"):
            ops.bsr_linear(x, values, crow, col, None, (64, 64), (16, 16))
