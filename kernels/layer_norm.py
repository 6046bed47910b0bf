"""Triton kernel of ``sparsebert::add_layer_norm``: one program per row, the whole row in one
block (``hidden`` up to 16384): the sum rounded to the input dtype, then mean, variance as the
mean of squared deviations and the normalized row, in fp32."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, check_device, next_pow2

MAX_HIDDEN = 16384
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def add_layer_norm_kernel(x_ptr, r_ptr, w_ptr, b_ptr, o_ptr, N, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    valid = cols < N
    x = tl.load(x_ptr + row * N + cols, mask=valid, other=0.0)
    r = tl.load(r_ptr + row * N + cols, mask=valid, other=0.0)
    s = (x + r).to(tl.float32)  # the sum in the input dtype, as the reference's add
    mean = tl.sum(s, axis=0) / N
    c = tl.where(valid, s - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(c * c, axis=0) / N + eps)
    w = tl.load(w_ptr + cols, mask=valid, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=valid, other=0.0).to(tl.float32)
    y = c * rstd * w + b
    tl.store(o_ptr + row * N + cols, y.to(o_ptr.dtype.element_ty), mask=valid)


def add_layer_norm(x, residual, weight, bias, eps):
    """The op's arguments (see ``sparsebert.ops.add_layer_norm``)."""
    op = "add_layer_norm"
    check_device(op, x, residual, weight, bias)
    if x.dtype not in DTYPES:
        raise ValueError(f"{op} on the GPU path takes float32, bfloat16 or float16, got x of dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{op}: x must have a last (normalized) dim of size >= 1, got shape {list(x.shape)}")
    n = x.shape[-1]
    if n > MAX_HIDDEN:
        raise ValueError(f"{op} on the GPU path normalizes rows of up to {MAX_HIDDEN} elements, got {n}")
    if residual.shape != x.shape:
        raise ValueError(f"{op}: residual must have x's shape {list(x.shape)}, got {list(residual.shape)}")
    for name, t in (("residual", residual), ("weight", weight), ("bias", bias)):
        if t.dtype != x.dtype:
            raise ValueError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    if weight.shape != (n,) or bias.shape != (n,):
        raise ValueError(f"{op}: weight and bias must be [{n}] (x's last dim), got {list(weight.shape)} and "
                         f"{list(bias.shape)}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps}")
    xc, rc, wc, bc = (t.contiguous() for t in (x, residual, weight, bias))
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = x.numel() // n
    if rows:
        add_layer_norm_kernel[(rows,)](xc, rc, wc, bc, out, n, float(eps), BLOCK=next_pow2(n),
                                       num_warps=4 if n <= 4096 else 8)
    return out


__all__ = ["add_layer_norm", "INTERPRET"]
