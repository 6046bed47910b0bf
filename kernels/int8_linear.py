"""Triton ``int8_linear`` and ``bsr_int8_linear`` (per-token activation quantization), the same
arguments as the ops.

Two launches: a row-wise kernel quantizes x to int8 with one scale per token (amax / 127,
round half to even, the integers of ``sparsebert.ops.int8_format.quantize_activations``), then
the matmul kernel accumulates ``tl.dot`` of int8 x int8 into int32 (tensor cores) and applies
the dequantize + bias epilogue (``acc * x_scale[m] * w_scale[n] + bias[n]``). The weights are
read straight from sparsebert's k-quad packings: dense ``[ceil(N/32), ceil(K/4), 32, 4]``, or
BSR ``[nnzb, BC/4, BR, 4]`` walked through ``crow_indices``/``col_indices`` like ``bsr_linear``.
"""

from __future__ import annotations

import math
import torch
import triton
import triton.language as tl

from ._common import EVEN_HEURISTICS, INTERPRET, check_device, grouped_tile, next_pow2, store_tile
from .bsr_linear import GROUP_M, check_block_size

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DENSE_ROWS = 32  # rows per block of the dense k-quad packing

CONFIGS = [
    triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=3),
]
DENSE_TILE = (64, 64)  # (BR, BC): outputs x inputs per step of the dense kernel


@triton.jit
def _round_half_even(v):
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def quantize_per_token_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    rk = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_xm + k0 + rk, mask=k0 + rk < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    m = tl.max(amax, axis=0)
    inv = tl.where(m > 0.0, tl.div_rn(127.0, tl.maximum(m, 1e-30)), 0.0)
    tl.store(s_ptr + row, tl.div_rn(m, 127.0))
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_xm + k0 + rk, mask=k0 + rk < K, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(_round_half_even(x * inv), -127.0), 127.0)
        tl.store(q_ptr + row * stride_qm + k0 + rk, q.to(tl.int8), mask=k0 + rk < K)


@triton.jit
def int8_linear_kernel(
    q_ptr, sx_ptr, w_ptr, sw_ptr, crow_ptr, col_ptr, b_ptr, y_ptr,
    M, N, K, KQ, stride_qm, stride_ym,
    SPARSE: tl.constexpr, HAS_BIAS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
    BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr, GELU: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BR, GROUP_M)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BR)
    rk = tl.arange(0, BC)
    cols = pid_n * BR + rn
    acc = tl.zeros((BLOCK_M, BR), dtype=tl.int32)
    if SPARSE:
        w_off = ((rk[:, None] // 4) * BR + rn[None, :]) * 4 + rk[:, None] % 4
        start = tl.load(crow_ptr + pid_n)
        end = tl.load(crow_ptr + pid_n + 1)
        for i in range(start, end):
            kk = tl.load(col_ptr + i) * BC + rk
            a_ptrs = q_ptr + rm[:, None] * stride_qm + kk[None, :]
            if EVEN_M and EVEN_K:
                a = tl.load(a_ptrs)
            else:
                a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
            b = tl.load(w_ptr + i * (BC * BR) + w_off)
            if INTERPRET:  # exact int32 products without the interpreter's int8 matmul
                acc += tl.sum(a.to(tl.int32)[:, :, None] * b.to(tl.int32)[None, :, :], axis=1)
            else:
                acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    else:
        nb_off = (cols // 32) * KQ * 128 + (cols % 32) * 4
        for k0 in range(0, K, BC):
            kk = k0 + rk
            a_ptrs = q_ptr + rm[:, None] * stride_qm + kk[None, :]
            if EVEN_M and EVEN_K:
                a = tl.load(a_ptrs)
            else:
                a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
            w_ptrs = w_ptr + nb_off[None, :] + (kk[:, None] // 4) * 128 + kk[:, None] % 4
            if EVEN_K and EVEN_N:
                b = tl.load(w_ptrs)
            else:
                b = tl.load(w_ptrs, mask=(kk[:, None] < K) & (cols[None, :] < N), other=0)
            if INTERPRET:
                acc += tl.sum(a.to(tl.int32)[:, :, None] * b.to(tl.int32)[None, :, :], axis=1)
            else:
                acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
    sw = tl.load(sw_ptr + cols, mask=cols < N, other=0.0)
    y = acc.to(tl.float32) * sx[:, None] * sw[None, :]
    store_tile(y_ptr, y, rm, cols, M, N, stride_ym, b_ptr, HAS_BIAS, EVEN_M and EVEN_N, GELU)


_kernel = triton.heuristics(EVEN_HEURISTICS)(int8_linear_kernel)
_tuned = triton.autotune(CONFIGS, key=["M", "N", "K", "BR", "BC", "SPARSE"])(_kernel)


def quantize_per_token(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``[M, K]`` and fp32 scales ``[M]`` (``x ~= q * scale[:, None]``)."""
    m, k = x2.shape
    q = torch.empty(m, k, dtype=torch.int8, device=x2.device)
    s = torch.empty(m, dtype=torch.float32, device=x2.device)
    if m:
        quantize_per_token_kernel[(m,)](x2, q, s, k, x2.stride(0), q.stride(0),
                                        BLOCK_K=min(1024, next_pow2(k)))
    return q, s


def _run(op, x, w, weight_scale, weight_sum, crow, col, bias, shape, act_quant, activation, br, bc, sparse):
    check_device(op, x, w, weight_scale, weight_sum, crow, col, bias)
    if activation not in ("none", "gelu"):
        raise ValueError(f"activation={activation!r} is not one; use one of ('none', 'gelu')")
    if act_quant != "per_token":
        raise ValueError(f"{op} on the GPU path quantizes activations per_token only, got act_quant={act_quant!r}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{op} takes float32, bfloat16 or float16 activations on the GPU path, got {x.dtype}")
    n, k = (int(s) for s in shape)
    if x.shape[-1] != k:
        raise ValueError(f"x must have in_features={k} in its last dimension, got shape {tuple(x.shape)}")
    if w.dtype != torch.int8:
        raise ValueError(f"{op}: weights must be int8, got {w.dtype}")
    if weight_scale.shape != (n,) or weight_sum.shape != (n,):
        raise ValueError(f"weight_scale and weight_sum must have shape [{n}]")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype):
        raise ValueError(f"bias must be [{n}] in {x.dtype}, got {tuple(bias.shape)} in {bias.dtype}")
    x2 = x.reshape(math.prod(x.shape[:-1]), k)  # reshape(-1, 0) is ambiguous when k is 0
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if not torch.isfinite(x2).all():
        raise ValueError("cannot quantize activations holding Inf or NaN")
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m and n:
        q, sx = quantize_per_token(x2)
        sw = weight_scale.float().contiguous()
        kq = (k + 3) // 4
        dummy = sx
        args = (q, sx, w.contiguous(), sw, crow if sparse else dummy, col if sparse else dummy,
                bias if bias is not None else sx, y, m, n, k, kq, q.stride(0), y.stride(0))
        meta = dict(SPARSE=sparse, HAS_BIAS=bias is not None, BR=br, BC=bc, GROUP_M=GROUP_M,
                    GELU=activation == "gelu", INTERPRET=INTERPRET)
        grid = lambda cfg: (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, br),)  # noqa: E731
        if INTERPRET:
            _kernel[grid](*args, **meta, BLOCK_M=16 if m <= 16 else 32)
        else:
            _tuned[grid](*args, **meta)
    return y.view(*x.shape[:-1], n)


def int8_linear(x, weight, weight_scale, weight_sum, bias, shape, act_quant="per_token", activation="none"):
    """The op's arguments (dense k-quad weight); returns ``[..., out_features]`` in x's dtype."""
    n, k = (int(s) for s in shape)
    expect = ((n + DENSE_ROWS - 1) // DENSE_ROWS, (max(k, 1) + 3) // 4, DENSE_ROWS, 4)  # the CPU packing
    if tuple(weight.shape) != expect:
        raise ValueError(f"int8_linear: weight must have shape {list(expect)}, got {tuple(weight.shape)}")
    br, bc = DENSE_TILE
    return _run("int8_linear", x, weight, weight_scale, weight_sum, None, None, bias, shape, act_quant,
                activation, br, bc, False)


def bsr_int8_linear(x, values, weight_scale, weight_sum, crow_indices, col_indices, bias, shape, block_size,
                    act_quant="per_token", activation="none"):
    """The op's arguments (BSR k-quad values); returns ``[..., out_features]`` in x's dtype."""
    br, bc = check_block_size("bsr_int8_linear", block_size)
    if bc < 32:  # int8 tensor-core tiles are 32 inputs deep
        raise ValueError(f"bsr_int8_linear: the GPU path takes blocks of at least 32 columns for int8, got {(br, bc)}")
    if tuple(values.shape[1:]) != (bc // 4, br, 4):
        raise ValueError(f"values must have shape [nnzb, {bc // 4}, {br}, 4], got {tuple(values.shape)}")
    return _run("bsr_int8_linear", x, values, weight_scale, weight_sum, crow_indices.contiguous(),
                col_indices.contiguous(), bias, shape, act_quant, activation, br, bc, True)
