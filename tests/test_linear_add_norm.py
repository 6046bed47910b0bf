"""``sparsebert::bsr_int8_linear_add_layer_norm``: a block-sparse INT8 projection and the residual
add + LayerNorm after it as one op. Bit for bit ``add_layer_norm(bsr_int8_linear(...))`` (the
one-pass CPU path runs from 128 rows on 2 threads, where the rows are pipelined; below that the two
run one after the other), close to the reference, bad input refused with the bad value named."""

import pytest
import torch
from torch import nn

from sparsebert.nn import Int8Linear, SparseInt8Linear
from sparsebert.nn.int8_linear import bound_add_layer_norm
from sparsebert.ops import (
    add_layer_norm, bsr_int8_linear, bsr_int8_linear_add_layer_norm, bsr_int8_linear_add_layer_norm_reference,
)
from sparsebert.prune import block_magnitude_mask

K, N = 96, 64


def _layer(dtype=torch.float32, act_quant="per_token") -> SparseInt8Linear:
    torch.manual_seed(0)
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.mul_(block_magnitude_mask(lin.weight, 0.5, (32, 32)))
    return SparseInt8Linear.from_dense(lin, (32, 32), act_quant=act_quant).to(dtype)


def _linear_args(layer):
    b = layer._buffers
    return (b["values"], b["weight_scale"], b["weight_sum"], b["crow_indices"], b["col_indices"], b["bias"],
            layer.shape, layer.block_size)


def _norm(dtype):
    torch.manual_seed(1)
    ln = nn.LayerNorm(N, eps=1e-5)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    return ln.to(dtype)


@pytest.mark.parametrize("rows", [1, 37, 128, 300])
@pytest.mark.parametrize("act_quant", ["per_token", "per_token_asym", "per_tensor", "per_tensor_asym"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_op_is_the_linear_then_add_layer_norm_bit_for_bit(two_threads, rows, act_quant, dtype):
    layer, ln = _layer(dtype, act_quant), _norm(dtype)
    torch.manual_seed(rows)
    x = (torch.randn(rows, K) * 3).to(dtype)
    residual = torch.randn(rows, N).to(dtype)
    norm = (ln.weight, ln.bias, ln.eps)
    with torch.inference_mode():
        two = add_layer_norm(bsr_int8_linear(*(x, *_linear_args(layer)), act_quant), residual, *norm)
        one = bsr_int8_linear_add_layer_norm(x, _linear_args(layer), act_quant, residual, norm)
        assert torch.equal(bound_add_layer_norm(layer, ln, dtype)(x, residual), one)
    assert one.dtype == dtype and one.shape == (rows, N)
    assert torch.equal(one, two)
    ref = bsr_int8_linear_add_layer_norm_reference(x, *_linear_args(layer), act_quant, residual, *norm)
    # LayerNorm's outputs are O(1): an INT8 step of the projection moves them by a few hundredths
    assert (one.float() - ref.float()).abs().max().item() <= (0.05 if dtype == torch.float32 else 0.1)


def test_leading_dimensions(two_threads):
    layer, ln = _layer(), _norm(torch.float32)
    x, residual = torch.randn(3, 50, K), torch.randn(3, 50, N)
    norm = (ln.weight, ln.bias, ln.eps)
    with torch.inference_mode():
        one = bsr_int8_linear_add_layer_norm(x, _linear_args(layer), "per_token", residual, norm)
        two = add_layer_norm(bsr_int8_linear(x, *_linear_args(layer)), residual, *norm)
    assert one.shape == (3, 50, N) and torch.equal(one, two)


def test_bad_input_is_refused_with_the_value_named():
    layer, ln = _layer(), _norm(torch.float32)
    x, residual = torch.randn(200, K), torch.randn(200, N)
    norm = (ln.weight, ln.bias, ln.eps)
    with pytest.raises(ValueError, match=r"residual must have the linear's output shape \[200, 64\], got \[200, 63\]"):
        bsr_int8_linear_add_layer_norm(x, _linear_args(layer), "per_token", residual[:, :63], norm)
    with pytest.raises(ValueError, match="residual must have x's dtype"):
        bsr_int8_linear_add_layer_norm(x, _linear_args(layer), "per_token", residual.bfloat16(), norm)
    with pytest.raises(ValueError, match=r"weight and bias must be \[64\]"):
        bsr_int8_linear_add_layer_norm(x, _linear_args(layer), "per_token", residual,
                                       (ln.weight[:32], ln.bias[:32], 1e-5))
    with pytest.raises(ValueError, match="eps must be finite and >= 0, got -1"):
        bsr_int8_linear_add_layer_norm(x, _linear_args(layer), "per_token", residual, (ln.weight, ln.bias, -1.0))
    with pytest.raises(ValueError, match="act_quant='per_row' is not a mode"):
        bsr_int8_linear_add_layer_norm(x, _linear_args(layer), "per_row", residual, norm)
    bad = x.clone()
    bad[150, 3] = float("nan")
    with pytest.raises(ValueError, match="x holds Inf or NaN in row 150"):
        bsr_int8_linear_add_layer_norm(bad, _linear_args(layer), "per_token", residual, norm)


def test_the_module_function_names_what_it_does_not_take():
    layer, ln = _layer(), _norm(torch.float32)
    assert bound_add_layer_norm(layer, ln, torch.bfloat16) is None  # bias and norm in another dtype
    assert bound_add_layer_norm(layer, nn.LayerNorm(N - 1), torch.float32) is None
    layer.activation = "gelu"
    assert bound_add_layer_norm(layer, ln, torch.float32) is None
    layer.activation = "none"
    handle = layer.register_forward_hook(lambda *a: None)
    assert bound_add_layer_norm(layer, ln, torch.float32) is None
    handle.remove()
    assert bound_add_layer_norm(layer, ln, torch.float32) is not None


@pytest.mark.parametrize("rows", [1, 37, 300])
@pytest.mark.parametrize("act_quant", ["per_token", "per_tensor_asym"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_dense_int8_layer_runs_as_the_op_on_its_own_packing(two_threads, rows, act_quant, dtype):
    """A dynamic Int8Linear binds too (its packing is one stored block of 32 outputs by every input
    per block row): the result is int8_linear's, then add_layer_norm, bit for bit."""
    torch.manual_seed(2)
    layer = Int8Linear.from_dense(nn.Linear(K, N), act_quant=act_quant).to(dtype)
    ln = _norm(dtype)
    x, residual = torch.randn(rows, K).to(dtype), torch.randn(rows, N).to(dtype)
    bound = bound_add_layer_norm(layer, ln, dtype)
    with torch.inference_mode():
        assert torch.equal(bound(x, residual), add_layer_norm(layer(x), residual, ln.weight, ln.bias, ln.eps))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_dense_layers_it_does_not_take():
    ln = _norm(torch.float32)
    assert bound_add_layer_norm(Int8Linear.from_dense(nn.Linear(K, N), weight_only=True), ln, torch.float32) is None
    assert bound_add_layer_norm(Int8Linear.from_dense(nn.Linear(0, N)), ln, torch.float32) is None
    assert bound_add_layer_norm(Int8Linear.from_dense(nn.Linear(K, N)), ln, torch.float32) is not None


def test_compiles_and_refuses_backward(two_threads):
    layer, ln = _layer(), _norm(torch.float32)
    x, residual = torch.randn(200, K), torch.randn(200, N)
    norm = (ln.weight.detach(), ln.bias.detach(), ln.eps)
    f = lambda a, r: bsr_int8_linear_add_layer_norm(a, _linear_args(layer), "per_token", r, norm)  # noqa: E731
    with torch.inference_mode():
        compiled = torch.compile(f, fullgraph=True, dynamic=False)
        assert torch.equal(compiled(x, residual), f(x, residual))
    with pytest.raises(RuntimeError, match="inference"):
        f(x.requires_grad_(), residual).sum().backward()
