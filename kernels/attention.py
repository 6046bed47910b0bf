"""Triton ``attention`` (key-padding mask) and ``attention_varlen`` (``cu_seqlens``), flash
style, the same arguments as the ops.

One program computes BLOCK_M query rows of one (sequence, head): it walks the keys BLOCK_N at a
time, S = Q K^T on tensor cores (fp32 accumulation; fp32 inputs as TF32 only when torch allows it), masks keys past the sequence and padded keys
(-inf), keeps a running row max and sum (online softmax) and accumulates P V, rescaled whenever
the max moves. No S x S matrix exists. Rows with no kept key give zeros, as the CPU kernels do.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, allow_tf32, check_device, next_pow2

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256

CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3),
]


@triton.jit
def _dot(a, b, IS_FP32: tl.constexpr, ALLOW_TF32: tl.constexpr):
    if IS_FP32 and not ALLOW_TF32:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, kp_ptr, cu_ptr,
    sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h, so_s, skp_b,
    H, SQ, SK, D, scale,
    HAS_KP: tl.constexpr, VARLEN: tl.constexpr, IS_FP32: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr,
    ROUND_BF16: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    if VARLEN:
        start = tl.load(cu_ptr + b).to(tl.int64)
        lq = tl.load(cu_ptr + b + 1).to(tl.int64) - start
        lk = lq
        q_base = q_ptr + start * sq_s + h * sq_h
        k_base = k_ptr + start * sk_s + h * sk_h
        v_base = v_ptr + start * sv_s + h * sv_h
        o_base = o_ptr + start * so_s + h * so_h
    else:
        lq = SQ
        lk = SK
        q_base = q_ptr + b.to(tl.int64) * sq_b + h * sq_h
        k_base = k_ptr + b.to(tl.int64) * sk_b + h * sk_h
        v_base = v_ptr + b.to(tl.int64) * sv_b + h * sv_h
        o_base = o_ptr + b.to(tl.int64) * so_b + h * so_h

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    q = tl.load(q_base + rm[:, None] * sq_s + rd[None, :], mask=(rm[:, None] < lq) & (rd[None, :] < D), other=0.0)
    if ROUND_BF16:  # precision="bf16": both dots take bf16 (and so does P, as v's dtype)
        q = q.to(tl.bfloat16)
    if INTERPRET:  # the interpreter multiplies raw bf16 bits: feed it fp32
        q = q.to(tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, lk, BLOCK_N):
        cols = n0 + rn
        valid = cols < lk
        if HAS_KP:
            valid = valid & (tl.load(kp_ptr + b * skp_b + cols, mask=cols < lk, other=0) != 0)
        kt = tl.load(k_base + cols[None, :] * sk_s + rd[:, None], mask=valid[None, :] & (rd[:, None] < D), other=0.0)
        v = tl.load(v_base + cols[:, None] * sv_s + rd[None, :], mask=valid[:, None] & (rd[None, :] < D), other=0.0)
        if ROUND_BF16:
            kt = kt.to(tl.bfloat16)
            v = v.to(tl.bfloat16)
        if INTERPRET:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s = _dot(q, kt, IS_FP32, ALLOW_TF32) * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing kept yet: keep P and O at 0
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IS_FP32, ALLOW_TF32)
        m_i = m_new
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    out = tl.where((l_i > 0.0)[:, None], out, 0.0)
    tl.store(o_base + rm[:, None] * so_s + rd[None, :], out.to(o_ptr.dtype.element_ty),
             mask=(rm[:, None] < lq) & (rd[None, :] < D))


_tuned = triton.autotune(CONFIGS, key=["H", "SQ", "SK", "D", "HAS_KP", "VARLEN"])(attention_kernel)


def _check_qkv(op, q, k, v):
    if q.dtype not in DTYPES:
        raise ValueError(f"{op} on the GPU path takes float32, bfloat16 or float16, got q of dtype {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{op}: q, k and v must have one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: head_dim must be in 1..{MAX_HEAD_DIM}, got {q.shape[-1]}")


def _unit_last(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _meta(q, precision, **flags):
    rnd = precision == "bf16"
    return dict(flags, IS_FP32=q.dtype == torch.float32 and not rnd, ALLOW_TF32=allow_tf32(),
                BLOCK_D=next_pow2(q.shape[-1]), INTERPRET=INTERPRET, ROUND_BF16=rnd)


def _round_for_interpreter(q, k, v, precision):
    """Under TRITON_INTERPRET the kernel's bf16 cast does not round to nearest even as the GPU's
    (and torch's) does: precision="bf16" rounds the inputs here instead, with torch."""
    if INTERPRET and precision == "bf16":
        return tuple(t.to(torch.bfloat16).to(t.dtype) for t in (q, k, v))
    return q, k, v


def _check_precision(op, precision):
    if precision == "int8":
        raise ValueError(f"{op}: precision='int8' runs on the CPU only; on the GPU use 'fp32' or 'bf16'")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"{op}: precision must be one of ('fp32', 'bf16'), got {precision!r}")


def _launch(grid_m_rows, bh, args, meta):
    grid = lambda cfg: (triton.cdiv(grid_m_rows, cfg["BLOCK_M"]), bh)  # noqa: E731
    if INTERPRET:  # one configuration: the interpreter would run every one
        attention_kernel[grid](*args, **meta, BLOCK_M=16, BLOCK_N=16)
    else:
        _tuned[grid](*args, **meta)


def attention(q, k, v, mask=None, scale=None, precision="fp32"):
    """The op's arguments; on the GPU path ``mask`` is None or a key-padding mask [batch, key_seq]."""
    check_device("attention", q, k, v, mask)
    _check_precision("attention", precision)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention: q, k and v must be [batch, heads, seq, head_dim], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    _check_qkv("attention", q, k, v)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    if k.shape[0] != b or k.shape[1] != h or k.shape[3] != d or v.shape != k.shape:
        raise ValueError(f"attention: k and v must be [{b}, {h}, seq, {d}] to match q, got {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if mask is not None:
        if mask.dim() != 2:
            raise ValueError("attention on the GPU path takes a key-padding mask [batch, key_seq] or none, got a "
                             f"{mask.dim()}-D mask")
        if tuple(mask.shape) != (b, sk):
            raise ValueError(f"attention: a 2-D mask is a key-padding mask and must be [batch, key_seq] = [{b}, {sk}], "
                             f"got {list(mask.shape)}")
        if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
            raise ValueError("attention: a 2-D (key-padding) mask holds 1 (keep) and 0 (padding) only")
        mask = (mask != 0).to(torch.int8).contiguous()
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"attention: scale must be finite, got {scale}")
    q, k, v = _round_for_interpreter(_unit_last(q), _unit_last(k), _unit_last(v), precision)
    precision = "fp32" if INTERPRET else precision
    out = torch.empty(b, h, sq, d, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    kp = mask if mask is not None else out
    args = (q, k, v, out, kp, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            kp.stride(0), h, sq, sk, d, scale)
    _launch(sq, b * h, args, _meta(q, precision, HAS_KP=mask is not None, VARLEN=False))
    return out


def attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale=None, precision="fp32"):
    """The op's arguments: packed tokens ``[total_tokens, heads, head_dim]``."""
    check_device("attention_varlen", q, k, v, cu_seqlens)
    _check_precision("attention_varlen", precision)
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError("attention_varlen: q, k and v must be packed tokens [total_tokens, heads, head_dim] of one "
                         f"shape, got {tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}")
    _check_qkv("attention_varlen", q, k, v)
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("attention_varlen: cu_seqlens must be a 1-D int32 tensor of batch + 1 offsets")
    t, h, d = q.shape
    cu = cu_seqlens.tolist()
    lengths = [e - s for s, e in zip(cu[:-1], cu[1:])]
    if cu[0] != 0 or any(n < 0 for n in lengths) or cu[-1] != t:
        raise ValueError(f"attention_varlen: cu_seqlens must run non-decreasing from 0 to {t}, got {cu}")
    if lengths and max_seqlen < max(lengths):
        raise ValueError(f"attention_varlen: max_seqlen must be at least the longest sequence ({max(lengths)}), "
                         f"got {max_seqlen}")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"attention_varlen: scale must be finite, got {scale}")
    q, k, v = _round_for_interpreter(_unit_last(q), _unit_last(k), _unit_last(v), precision)
    precision = "fp32" if INTERPRET else precision
    out = torch.empty(t, h, d, dtype=q.dtype, device=q.device)
    nseq = len(lengths)
    if out.numel() == 0 or nseq == 0 or max_seqlen == 0:
        return out
    args = (q, k, v, out, out, cu_seqlens.contiguous(), 0, q.stride(1), q.stride(0), 0, k.stride(1), k.stride(0),
            0, v.stride(1), v.stride(0), 0, out.stride(1), out.stride(0), 0, h, max_seqlen, max_seqlen, d, scale)
    _launch(max_seqlen, nseq * h, args, _meta(q, precision, HAS_KP=False, VARLEN=True))
    return out
