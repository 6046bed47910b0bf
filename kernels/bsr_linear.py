"""Triton ``bsr_linear``: ``y = x @ W.T + bias`` for a block-sparse ``W`` in sparsebert's BSR
format (``sparsebert.ops.bsr_format``), the same arguments as the op.

One program computes BLOCK_M rows of x times one block row of W (BR outputs): it walks the
stored blocks of that block row (``crow_indices``/``col_indices``, built at pack time, are the
lookup of nonzero blocks), loads the BLOCK_M x BC slice of x each block needs and the block's
BC x BR weights straight from the k-pair packing, and accumulates ``tl.dot`` in fp32 (tensor
cores: bf16/fp16, and fp32 as TF32 when torch allows it). Programs are ordered in groups of
GROUP_M row tiles so that consecutive programs share weight blocks in L2.
"""

from __future__ import annotations

import math
import torch
import triton
import triton.language as tl

from ._common import EVEN_HEURISTICS, INTERPRET, allow_tf32, check_device, grouped_tile, store_tile

BLOCK_SIZES = (16, 32, 64)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
GROUP_M = 8

CONFIGS = [
    triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=3),
]


@triton.jit
def bsr_linear_kernel(
    x_ptr, v_ptr, crow_ptr, col_ptr, b_ptr, y_ptr,
    M, N, K, stride_xm, stride_ym,
    HAS_BIAS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, KP: tl.constexpr,
    BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr, ALLOW_TF32: tl.constexpr, IS_FP32: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BR, GROUP_M)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BR)
    rk = tl.arange(0, BC)
    # Element (k, n) of a stored block in the k-pair packing [BC / KP, BR, KP].
    w_off = ((rk[:, None] // KP) * BR + rn[None, :]) * KP + rk[:, None] % KP
    acc = tl.zeros((BLOCK_M, BR), dtype=tl.float32)
    start = tl.load(crow_ptr + pid_n)
    end = tl.load(crow_ptr + pid_n + 1)
    for i in range(start, end):
        kk = tl.load(col_ptr + i) * BC + rk
        x_ptrs = x_ptr + rm[:, None] * stride_xm + kk[None, :]
        if EVEN_M and EVEN_K:
            x = tl.load(x_ptrs)
        else:
            x = tl.load(x_ptrs, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        w = tl.load(v_ptr + i * (BC * BR) + w_off)
        if INTERPRET:  # the interpreter multiplies raw bf16 bits: feed it fp32
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        if IS_FP32:
            if ALLOW_TF32:
                acc = tl.dot(x, w, acc, input_precision="tf32")
            else:
                acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
    store_tile(y_ptr, acc, rm, pid_n * BR + rn, M, N, stride_ym, b_ptr, HAS_BIAS, EVEN_M and EVEN_N)


_kernel = triton.heuristics(EVEN_HEURISTICS)(bsr_linear_kernel)
_tuned = triton.autotune(CONFIGS, key=["M", "N", "K", "BR", "BC"])(_kernel)


def check_block_size(op: str, block_size) -> tuple[int, int]:
    br, bc = (int(b) for b in block_size)
    if br not in BLOCK_SIZES or bc not in BLOCK_SIZES:
        raise ValueError(f"{op}: the GPU path takes blocks of 16, 32 or 64 rows and columns, got {(br, bc)}")
    return br, bc


def bsr_linear(x, values, crow_indices, col_indices, bias, shape, block_size):
    """The op's arguments; returns ``[..., out_features]`` in x's dtype."""
    check_device("bsr_linear", x, values, crow_indices, col_indices, bias)
    if x.dtype not in DTYPES:
        raise ValueError(f"bsr_linear on the GPU path takes float32, bfloat16 or float16, got {x.dtype}")
    if values.dtype != x.dtype:
        raise ValueError(f"dtype mismatch: x is {x.dtype} but the weight values are {values.dtype}")
    br, bc = check_block_size("bsr_linear", block_size)
    n, k = (int(s) for s in shape)
    kp = 1 if x.dtype == torch.float32 else 2
    if tuple(values.shape[1:]) != (bc // kp, br, kp):
        raise ValueError(f"values must have shape [nnzb, {bc // kp}, {br}, {kp}], got {tuple(values.shape)}")
    if x.shape[-1] != k:
        raise ValueError(f"x must have in_features={k} in its last dimension, got shape {tuple(x.shape)}")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype):
        raise ValueError(f"bias must be [{n}] in {x.dtype}, got {tuple(bias.shape)} in {bias.dtype}")
    x2 = x.reshape(math.prod(x.shape[:-1]), k)  # reshape(-1, 0) is ambiguous when k is 0
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m and n:
        args = (x2, values.contiguous(), crow_indices.contiguous(), col_indices.contiguous(),
                bias if bias is not None else x2, y, m, n, k, x2.stride(0), y.stride(0))
        meta = dict(HAS_BIAS=bias is not None, BR=br, BC=bc, KP=kp, GROUP_M=GROUP_M,
                    ALLOW_TF32=allow_tf32(), IS_FP32=x.dtype == torch.float32, INTERPRET=INTERPRET)
        grid = lambda cfg: (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, br),)  # noqa: E731
        if INTERPRET:  # one configuration: the interpreter would run every one
            _kernel[grid](*args, **meta, BLOCK_M=16 if m <= 16 else 32)
        else:
            _tuned[grid](*args, **meta)
        _propagate_nonfinite(x2, y, crow_indices, col_indices, n, k, br, bc)
    return y.view(*x.shape[:-1], n)


def _propagate_nonfinite(x2, y, crow, col, n, k, br, bc):
    """Dense semantics for non-finite inputs, as the CPU kernel has them: nn.Linear multiplies
    every x[m, k] by W[n, k], so a NaN or Inf in row m reaches the outputs of row m through the
    zero weights too (0 * NaN and 0 * Inf are NaN), while the kernel never reads unstored blocks.
    Outputs of a block row whose unstored block columns meet a non-finite x[m, k] become NaN. The
    normal case costs one reduction over x (and one device-to-host read of its result)."""
    if k == 0 or bool(torch.isfinite(x2.float().sum())):
        return
    nb, ncb = triton.cdiv(n, br), triton.cdiv(k, bc)
    bad = torch.nn.functional.pad((~torch.isfinite(x2)).float(), (0, ncb * bc - k))
    bad_blocks = bad.view(-1, ncb, bc).amax(2)  # [M, ncb]
    rows = torch.repeat_interleave(torch.arange(nb, device=crow.device), (crow[1:] - crow[:-1]).long())
    unstored = torch.ones(nb, ncb, device=x2.device)
    unstored[rows, col.long()] = 0.0
    poisoned = (bad_blocks @ unstored.t()).gt(0)  # [M, nb]
    y.masked_fill_(poisoned.repeat_interleave(br, 1)[:, :n], float("nan"))
