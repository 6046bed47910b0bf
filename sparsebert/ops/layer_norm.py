"""``sparsebert::add_layer_norm``: ``LayerNorm(x + residual)`` over the last dim in one pass.

A transformer block ends with its output projection, a residual add and a LayerNorm; as two ops
the sum is written out and read back. The schema is in ``csrc/ops.cpp``; the CPU kernel in
``csrc/cpu/layer_norm*.cpp`` (one row per step: the sum kept in an fp32 row, mean, variance as the
mean of squared deviations, then the normalized row in the input's dtype); the CUDA one in
``sparsebert.kernels``. This file holds the public wrapper, the fake function and the reference.
Inference only: no autograd formula (``sparsebert.fuse_layer_norms`` runs the reference where
gradients are needed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._inference_only import register_inference_only

__all__ = ["add_layer_norm", "add_layer_norm_reference"]


def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``layer_norm(x + residual, [hidden], weight, bias, eps)`` for ``x`` and ``residual`` of one
    shape ``[..., hidden]`` and ``weight``, ``bias`` ``[hidden]``, all of one dtype (float32 or
    bfloat16; bf16 rounds the sum to bf16 as a bf16 add does, then normalizes in fp32). Returns a
    contiguous tensor of x's shape and dtype."""
    return torch.ops.sparsebert.add_layer_norm.default(x, residual, weight, bias, float(eps))


def add_layer_norm_reference(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """The definition of ``add_layer_norm``: torch's add in x's dtype, then ``F.layer_norm``
    (which normalizes bf16 in fp32). Differentiable."""
    _check(x, residual, weight, bias, eps)
    return F.layer_norm(x + residual, (x.shape[-1],), weight, bias, eps)


def _check(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float) -> None:
    op = "add_layer_norm"
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{op}: x must have a last (normalized) dim of size >= 1, got shape {list(x.shape)}")
    if residual.shape != x.shape:
        raise ValueError(f"{op}: residual must have x's shape {list(x.shape)}, got {list(residual.shape)}")
    for name, t in (("residual", residual), ("weight", weight), ("bias", bias)):
        if t.dtype != x.dtype:
            raise ValueError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    n = x.shape[-1]
    if weight.shape != (n,) or bias.shape != (n,):
        raise ValueError(f"{op}: weight and bias must be [{n}] (x's last dim), got {list(weight.shape)} and "
                         f"{list(bias.shape)}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps}")


@torch.library.register_fake("sparsebert::add_layer_norm")
def _add_layer_norm_fake(x, residual, weight, bias, eps):
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"add_layer_norm supports float32 and bfloat16, got x of dtype {x.dtype}")
    _check(x, residual, weight, bias, eps)
    return x.new_empty(x.shape)  # contiguous


register_inference_only("add_layer_norm")
