"""INT8 quantization and the packed formats of the INT8 ops.

Weights: symmetric per output channel, ``scale[n] = max_k |W[n, k]| / 127`` and
``W_q = clamp(round(W * (127 / max|W[n]|)), -127, 127)`` (round half to even; a zero row gets
scale 0). Activations: the same rule per token (per row of ``x``), applied inside the ops.

Packing (the k-quad form of :mod:`sparsebert.ops.bsr_format`, ``kp = 4``): four consecutive
inputs of one output share a 32-bit lane, the operand layout of ``vpdpbusd`` and of AMX int8 B
tiles. ``bsr_int8_linear`` takes BSR ``values [nnzb, ceil(bc/4), br, 4]``; ``int8_linear`` takes
the dense weight as that packing with blocks of 32 outputs x all inputs, every block stored:
``[ceil(N/32), ceil(K/4), 32, 4]``. Both take ``weight_sum[n] = sum_k W_q[n, k]`` (int32), which
the kernels need to run activations as unsigned bytes (``x_q + 128``) against signed weights.

Weight-only (``int8_weight_only_linear``, activations stay float): the plain packing, one input
per lane (``kp = 1``), 32-output rows: ``[ceil(N/32), K, 32, 1]``; the kernels widen 16 int8 of
one input to fp32 and apply ``scale[n]`` once per output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .bsr_format import _to_kpair, bsr_blocks, pack_bsr

__all__ = [
    "DENSE_BLOCK_ROWS",
    "ACT_QUANT_MODES",
    "quantize_symmetric",
    "quantize_activations",
    "pack_int8_dense",
    "unpack_int8_dense",
    "pack_int8_bsr",
    "pack_int8_weight_only",
    "unpack_int8_weight_only",
    "weight_sum",
]

# Outputs per block row of int8_linear's dense packing (csrc/cpu/bsr_int8_linear.cpp).
DENSE_BLOCK_ROWS = 32


def _div(c: float, t: Tensor) -> Tensor:
    """``c / t`` correctly rounded, as the kernels' ``c / t`` in float32. (``c / t`` in torch is
    ``c * t.reciprocal()``, which differs in the last bit for a quarter of all values: enough to
    move a rounding tie of ``x * inv`` to the other integer.)"""
    return torch.full_like(t, c) / t


def quantize_symmetric(t: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int8 quantization of a 2-D tensor: ``(q int8, scale float32)`` with
    ``t ~= q * scale[:, None]``. Exactly the integers the CPU kernels compute for activations."""
    if t.dim() != 2:
        raise ValueError(f"expected a 2-D tensor, got shape {tuple(t.shape)}")
    t = t.float()
    amax = t.abs().amax(dim=1) if t.shape[1] else t.new_zeros(t.shape[0])
    if not torch.isfinite(amax).all():
        raise ValueError("cannot quantize a row holding Inf or NaN")
    inv = torch.where(amax > 0, _div(127.0, amax), torch.zeros_like(amax))
    q = torch.round(t * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, amax / 127.0


ACT_QUANT_MODES = ("per_token", "per_token_asym", "per_tensor", "per_tensor_asym")


def quantize_activations(x: Tensor, mode: str = "per_token") -> tuple[Tensor, Tensor]:
    """Quantizes a 2-D activation tensor as the INT8 ops do: ``(q, scale)`` with
    ``x ~= q * scale[:, None]``, ``q`` int32 already centred (the zero point removed).

    ``per_token`` (default) / ``per_tensor``: one range per row / for the whole tensor.
    Symmetric: ``amax = max|x|``, 255 levels -127..127. ``_asym``: the range ``[min(x, 0),
    max(x, 0)]`` on 256 levels with a zero point (better for one-sided activations such as
    GELU outputs). The float steps match the kernels' so the integers agree exactly.
    """
    if mode not in ACT_QUANT_MODES:
        raise ValueError(f"act_quant={mode!r} is not a mode; use one of {ACT_QUANT_MODES}")
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D tensor, got shape {tuple(x.shape)}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize activations holding Inf or NaN")
    zeros = x.new_zeros(x.shape[0])
    if x.numel() == 0:
        lo, hi = zeros, zeros
    elif mode.startswith("per_tensor"):
        lo = zeros + min(x.min().item(), 0.0)
        hi = zeros + max(x.max().item(), 0.0)
    else:
        lo, hi = x.amin(dim=1).clamp(max=0), x.amax(dim=1).clamp(min=0)
    if mode.endswith("_asym"):
        inv = torch.where(hi > lo, _div(255.0, hi - lo), zeros)
        scale = (hi - lo) / 255.0
        zero = torch.round(-lo * inv).clamp(0, 255)
        q = (torch.round(x * inv[:, None]) + zero[:, None]).clamp(0, 255)
    else:
        amax = torch.maximum(-lo, hi)
        inv = torch.where(amax > 0, _div(127.0, amax), zeros)
        scale = amax / 127.0
        zero = zeros + 128
        q = (torch.round(x * inv[:, None]) + 128).clamp(1, 255)
    return (q - zero[:, None]).to(torch.int32), scale


def weight_sum(q: Tensor) -> Tensor:
    """``sum_k q[n, k]`` as int32."""
    return q.sum(dim=1, dtype=torch.int32)


def pack_int8_dense(q: Tensor) -> Tensor:
    """int8 ``[N, K]`` -> ``[ceil(N/32), ceil(max(K, 1)/4), 32, 4]`` (int8_linear's weight; a
    layer with no inputs keeps one zero column, the shape the op checks)."""
    n, k = q.shape
    nb = math.ceil(n / DENSE_BLOCK_ROWS)
    padded = torch.nn.functional.pad(q, (0, max(k, 1) - k, 0, nb * DENSE_BLOCK_ROWS - n))
    blocks = padded.reshape(nb, DENSE_BLOCK_ROWS, max(k, 1))  # (NB, 32, K): one block per block row
    return _to_kpair(blocks, 4)


def unpack_int8_dense(weight: Tensor, shape) -> Tensor:
    """Inverse of :func:`pack_int8_dense`: the int8 ``[N, K]`` matrix."""
    n, k = shape
    blocks = bsr_blocks(weight, (DENSE_BLOCK_ROWS, max(k, 1)))  # (NB, 32, K)
    return blocks.reshape(-1, blocks.shape[-1])[:n, :k]


def pack_int8_weight_only(q: Tensor) -> Tensor:
    """int8 ``[N, K]`` -> ``[ceil(N/32), max(K, 1), 32, 1]`` (int8_weight_only_linear's weight)."""
    n, k = q.shape
    nb = math.ceil(n / DENSE_BLOCK_ROWS)
    padded = torch.nn.functional.pad(q, (0, max(k, 1) - k, 0, nb * DENSE_BLOCK_ROWS - n))
    return _to_kpair(padded.reshape(nb, DENSE_BLOCK_ROWS, max(k, 1)), 1)


def unpack_int8_weight_only(weight: Tensor, shape) -> Tensor:
    """Inverse of :func:`pack_int8_weight_only`."""
    n, k = shape
    blocks = bsr_blocks(weight, (DENSE_BLOCK_ROWS, max(k, 1)))  # (NB, 32, K)
    return blocks.reshape(-1, blocks.shape[-1])[:n, :k]


def pack_int8_bsr(q: Tensor, block_size) -> tuple[Tensor, Tensor, Tensor]:
    """int8 ``[N, K]`` -> BSR ``(values, crow_indices, col_indices)`` in the k-quad packing;
    every block holding a nonzero is stored."""
    if q.dtype != torch.int8:
        raise ValueError(f"expected int8 weights, got {q.dtype}")
    return pack_bsr(q, block_size)
