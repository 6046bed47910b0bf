"""SparseLinear: conversion, nn.Linear semantics, buffers, dtype moves, compile, errors."""

import io

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune
from torch import nn

import sparsebert
from sparsebert import SparseLinear
from sparsebert.prune import block_magnitude_mask
from conftest import assert_linear_close


def pruned_linear(n=96, k=80, sparsity=0.75, block_size=(32, 32), bias=True, dtype=torch.float32):
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(block_magnitude_mask(lin.weight, sparsity, block_size))
    return lin.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [(32, 32), (16, 16), (16, 1), (8, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_from_dense_matches_linear(dtype, block_size, bias):
    lin = pruned_linear(block_size=block_size, bias=bias, dtype=dtype)
    sp = SparseLinear.from_dense(lin, block_size=block_size)
    x = torch.randn(3, 7, 80).to(dtype)
    with torch.no_grad():
        out = sp(x)
    assert out.shape == (3, 7, 96) and out.dtype == dtype
    assert_linear_close(out, x, lin.weight, lin.bias)
    assert torch.equal(sp.to_dense(), lin.weight)


def test_from_torch_prune():
    lin = nn.Linear(64, 48)
    mask = block_magnitude_mask(lin.weight, 0.5, (16, 16))
    torch.nn.utils.prune.custom_from_mask(lin, "weight", mask)
    sp = SparseLinear.from_dense(lin, block_size=(16, 16))
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert_linear_close(sp(x), x, lin.weight, lin.bias)
    assert sp.nnz_blocks == 6  # 12 blocks, half kept
    assert sp.sparsity == pytest.approx(0.5)


def test_sparsity_counts_real_entries():
    lin = pruned_linear(n=70, k=50, sparsity=0.0, block_size=(32, 32))  # edge blocks partial
    sp = SparseLinear.from_dense(lin, block_size=(32, 32))
    assert sp.sparsity == 0.0
    with torch.no_grad():
        lin.weight[:32, :32] = 0
    assert SparseLinear.from_dense(lin, (32, 32)).sparsity == pytest.approx(32 * 32 / (70 * 50))


def test_state_dict_round_trip():
    lin = pruned_linear()
    sp = SparseLinear.from_dense(lin)
    buf = io.BytesIO()
    torch.save(sp.state_dict(), buf)
    buf.seek(0)
    other = SparseLinear.from_dense(pruned_linear(sparsity=0.25))  # different pattern and nnzb
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other.to_dense(), sp.to_dense())
    x = torch.randn(4, 80)
    with torch.no_grad():
        assert torch.equal(other(x), sp(x))


def test_state_dict_across_dtypes():
    sp = SparseLinear.from_dense(pruned_linear())
    target = SparseLinear.from_dense(pruned_linear()).to(torch.bfloat16)
    target.load_state_dict(sp.state_dict())  # fp32 packing into a bf16 module
    assert target.values.dtype == torch.bfloat16
    assert torch.equal(target.to_dense(), sp.to_dense().to(torch.bfloat16))


def test_to_bfloat16_and_back():
    lin = pruned_linear()
    sp = SparseLinear.from_dense(lin).to(torch.bfloat16)
    assert sp.values.dtype == torch.bfloat16 and sp.values.shape[-1] == 2  # bf16 k-pair packing
    x = torch.randn(6, 80).to(torch.bfloat16)
    with torch.no_grad():
        assert_linear_close(sp(x), x, lin.weight.to(torch.bfloat16), lin.bias.to(torch.bfloat16))
    back = sp.float()
    assert back.values.shape[-1] == 1
    assert torch.equal(back.to_dense(), lin.weight.to(torch.bfloat16).float())


def test_reference_backend_agrees():
    lin = pruned_linear()
    fast = SparseLinear.from_dense(lin)
    ref = SparseLinear.from_dense(lin, backend="reference")
    x = torch.randn(9, 80)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x))


def test_training_keeps_the_pattern():
    sp = SparseLinear.from_dense(pruned_linear())
    sp.values.requires_grad_(True)
    before = sp.to_dense().detach().ne(0)
    out = sp(torch.randn(4, 80))
    out.square().sum().backward()
    assert sp.values.grad.shape == sp.values.shape
    with torch.no_grad():
        sp.values -= 0.1 * sp.values.grad
    assert not (sp.to_dense().ne(0) & ~before).any()


def test_compile_fullgraph():
    sp = SparseLinear.from_dense(pruned_linear())
    model = nn.Sequential(sp, nn.GELU())
    x = torch.randn(5, 80)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_repr_names_the_format():
    sp = SparseLinear.from_dense(pruned_linear())
    assert "block_size=(32, 32)" in repr(sp) and "sparsity=0.7" in repr(sp)


# Bad input: ValueError (or TypeError for a wrong module type) naming the bad value.


def test_wrong_in_features():
    sp = SparseLinear.from_dense(pruned_linear())
    with pytest.raises(ValueError, match="in_features=80.*\\[4, 81\\]"):
        sp(torch.randn(4, 81))


def test_dtype_mismatch():
    sp = SparseLinear.from_dense(pruned_linear())
    with pytest.raises(ValueError, match="dtype mismatch: x is BFloat16 but the weight values are Float"):
        sp(torch.randn(4, 80).to(torch.bfloat16))


def test_unsupported_dtype_on_cpu():
    # refused at the conversion, not at forward, and the module is left as it was
    sp = SparseLinear.from_dense(pruned_linear())
    for convert in (lambda m: m.half(), lambda m: m.to(torch.float16), lambda m: m.double()):
        with pytest.raises(TypeError, match="SparseLinear cannot be converted to torch.float(16|64).*bfloat16"):
            convert(sp)
        assert sp.values.dtype == torch.float32
    # the op still refuses float16 inputs on CPU with its own message
    with pytest.raises(ValueError, match="float32 and bfloat16 inputs, got Half"):
        sparsebert.ops.bsr_linear(torch.randn(4, 80).half(), sp.values.half(), sp.crow_indices, sp.col_indices,
                                  None, sp.shape, sp.block_size)


@pytest.mark.parametrize("block_size", [(0, 32), (32,), (-1, 4), (2.0, 4), "ab", None, (True, 4)])
def test_bad_block_size(block_size):
    with pytest.raises(ValueError, match="block_size"):
        SparseLinear.from_dense(pruned_linear(), block_size=block_size)


def test_bad_backend_and_module():
    with pytest.raises(ValueError, match="backend must be one of .* got 'gpu'"):
        SparseLinear.from_dense(pruned_linear(), backend="gpu")
    with pytest.raises(TypeError, match="expects an nn.Linear, got Conv1d"):
        SparseLinear.from_dense(nn.Conv1d(3, 3, 1))


def test_constructor_validates():
    lin = pruned_linear()
    values, crow, col = sparsebert.ops.pack_bsr(lin.weight.detach(), (32, 32))
    with pytest.raises(ValueError, match="bias must have shape \\(96,\\), got \\(95,\\)"):
        SparseLinear(80, 96, values, crow, col, torch.zeros(95))
    with pytest.raises(ValueError, match="in_features must be a non-negative int, got -1"):
        SparseLinear(-1, 96, values, crow, col)
    with pytest.raises(ValueError, match="values must have shape \\[nnzb, 32, 16, 1\\]"):
        SparseLinear(80, 96, values, crow, col, block_size=(16, 32))


def test_cuda_runs_the_triton_kernel():
    # CUDA tensors dispatch to the Triton launcher (tested in test_triton_kernels.py), never to a
    # silent CPU fallback; int8_weight_only_linear has no CUDA kernel at all.
    from sparsebert.ops._cuda import IMPLS

    assert torch._C._dispatch_has_kernel_for_dispatch_key("sparsebert::bsr_linear", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("sparsebert::bsr_linear", "CPU")
    assert IMPLS["bsr_linear"].__name__ == "bsr_linear_cuda"
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("sparsebert::int8_weight_only_linear", "CUDA")


def test_meta_device_shapes():
    sp = SparseLinear.from_dense(pruned_linear()).to("meta")
    out = sp(torch.empty(2, 3, 80, device="meta"))
    assert out.shape == (2, 3, 96) and out.device.type == "meta"
    F.gelu(out)  # meta tensors flow on through other ops
