"""``sparsebert::bsr_linear``: ``y = x @ W.T + bias`` for a block-sparse weight ``W``.

The schema is in ``csrc/ops.cpp``; the CPU kernel in ``csrc/cpu/bsr_linear*.cpp``. This file
holds the public wrapper, the fake (meta) function used by ``torch.compile``/``torch.export``,
the autograd formula, and the pure-torch reference that defines the op.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bsr_format import bsr_gather, bsr_to_dense, check_block_size, validate_bsr

__all__ = ["bsr_linear", "bsr_linear_reference"]


def bsr_linear(
    x: Tensor,
    values: Tensor,
    crow_indices: Tensor,
    col_indices: Tensor,
    bias: Tensor | None,
    shape: tuple[int, int],
    block_size: tuple[int, int],
) -> Tensor:
    """``x @ W.T + bias`` with ``W`` of shape ``shape = (out_features, in_features)`` stored as
    BSR (see :mod:`sparsebert.ops.bsr_format`).

    ``x``: ``[..., in_features]``, any strides, float32 or bfloat16 (bf16 accumulates in fp32);
    ``values`` and ``bias`` in the dtype of ``x``. Returns ``[..., out_features]`` in that dtype.
    """
    return torch.ops.sparsebert.bsr_linear.default(
        x, values, crow_indices, col_indices, bias, list(shape), list(check_block_size(block_size))
    )


def bsr_linear_reference(
    x: Tensor,
    values: Tensor,
    crow_indices: Tensor,
    col_indices: Tensor,
    bias: Tensor | None,
    shape: tuple[int, int],
    block_size: tuple[int, int],
) -> Tensor:
    """The definition of ``bsr_linear``: unpack ``W`` and compute in float32, round to x's dtype."""
    validate_bsr(values, crow_indices, col_indices, shape, block_size)
    w = bsr_to_dense(values, crow_indices, col_indices, shape, block_size)  # (N, K)
    y = x.float() @ w.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@torch.library.register_fake("sparsebert::bsr_linear")
def _bsr_linear_fake(x, values, crow_indices, col_indices, bias, shape, block_size):
    validate_bsr(values, crow_indices, col_indices, shape, block_size, check_indices=False)
    n, k = shape
    if values.dtype != x.dtype:
        raise ValueError(f"dtype mismatch: x is {x.dtype} but the weight values are {values.dtype}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must have in_features={k} in its last dimension, got shape {tuple(x.shape)}")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype):
        raise ValueError(f"bias must be [{n}] in {x.dtype}, got {tuple(bias.shape)} in {bias.dtype}")
    return x.new_empty((*x.shape[:-1], n))


def _setup_context(ctx, inputs, output):
    x, values, crow_indices, col_indices, bias, shape, block_size = inputs
    ctx.save_for_backward(x, values, crow_indices, col_indices)
    ctx.shape = tuple(shape)
    ctx.block_size = tuple(block_size)


def _backward(ctx, grad_y):
    # Dense math on the unpacked weight: correct for fine-tuning a sparse model (the gradient of
    # the stored blocks only, so the pattern is kept), not a fast path.
    x, values, crow_indices, col_indices = ctx.saved_tensors
    n, k = ctx.shape
    grad_x = grad_values = grad_bias = None
    gy = grad_y.reshape(-1, n).float()  # (M, N)
    if ctx.needs_input_grad[0]:
        w = bsr_to_dense(values, crow_indices, col_indices, ctx.shape, ctx.block_size).float()
        grad_x = (gy @ w).to(x.dtype).reshape(x.shape)
    if ctx.needs_input_grad[1]:
        grad_w = gy.T @ x.reshape(-1, k).float()  # (N, K)
        grad_values = bsr_gather(grad_w, crow_indices, col_indices, ctx.block_size, values.dtype)
    if ctx.needs_input_grad[4]:
        grad_bias = gy.sum(0).to(grad_y.dtype)
    return grad_x, grad_values, None, None, grad_bias, None, None


torch.library.register_autograd("sparsebert::bsr_linear", _backward, setup_context=_setup_context)
