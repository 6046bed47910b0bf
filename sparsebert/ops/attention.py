"""``sparsebert::attention`` and ``sparsebert::attention_varlen``: fused softmax attention.

The schemas are in ``csrc/ops.cpp``; the CPU kernels in ``csrc/cpu/attention*.cpp`` (an online
softmax over tiles of keys, so no ``S x S`` matrix is stored; key blocks that are all padding
are skipped). This file holds the public wrappers, the fake functions used by
``torch.compile``/``torch.export``, and the pure-torch references that define the ops.

Masks (``attention``), one of:

* ``None``: every key is attended.
* a key-padding mask ``[batch, key_seq]`` as Hugging Face passes it: nonzero / ``True`` keeps
  the key, ``0`` / ``False`` pads it (bool, integer or float holding only 0 and 1);
* a bool mask broadcastable to ``[batch, heads, q_seq, key_seq]``, ``True`` keeps;
* an additive float mask broadcastable to ``[batch, heads, q_seq, key_seq]`` (float32 or the
  dtype of ``q``), added to the scaled scores.

A query row none of whose keys is kept gets zeros, as in ``F.scaled_dot_product_attention`` and
Hugging Face's default (sdpa) BERT. An additive mask of ``finfo.min`` (Hugging Face's eager masks)
is a finite number: a row masked that way everywhere averages all values, as eager attention does.

``precision``: ``"fp32"`` (default) uses the inputs as they are; ``"bf16"`` rounds ``q``, ``k``
and ``v`` to bfloat16 (round to nearest even) before the two matmuls, which accumulate in fp32,
and keeps the output in q's dtype. On CPUs with AVX-512 BF16 (Zen 4 and later, Xeon since Cooper
Lake) both matmuls then run as bf16 dot products at twice the fp32 rate, with the attention
probabilities rounded to bf16 as well (within the tolerance the tests hold every path to: twice
the error of torch's own bf16 attention on the same inputs); elsewhere the fp32 kernel runs on the
rounded inputs. bfloat16 inputs on AMX CPUs always take the AMX tiles, which round the
probabilities the same way.

``"int8"``: both matmuls in exact int32 arithmetic on 8-bit operands (``vpdpbusd`` on CPUs with
AVX-512 VNNI, four times the fp32 rate; the same numbers in plain C++ elsewhere; CPU only):
q and k quantized per row (token and head) and v per column (head dim, over the sequence's kept
keys), symmetric, scale ``max|x| / 127``, round half to even; ``S = (q_q k_q^T) s_q s_k scale``
in fp32, the mask added; ``E = exp(S - max S)`` per row, ``l`` its sum, ``P = round(255 E)``
(0..255); ``out = (P v_q) s_v / (255 l)``. What the CPU engines' INT8 BERTs do (OpenVINO and
DeepSparse quantize attention's matmuls too): an error of order 1% of the output scale, against
0.3% at bf16. ``attention_reference(precision="int8")`` is the definition. Padded keys are never
read; a NaN in q, k or v gives NaN in the output rows (q), all rows (k) or columns (v) it reaches.

Inference only: the ops have no autograd formula (backward raises). Their references are plain
torch and differentiable; ``sparsebert.hf`` trains through them (``attention_reference`` takes a
``dropout_p`` for that).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._inference_only import register_inference_only

__all__ = ["attention", "attention_reference", "attention_varlen", "attention_varlen_reference"]

MAX_HEAD_DIM = 256


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None, precision: str = "fp32"
) -> Tensor:
    """``softmax(scale * q @ k^T + mask) @ v`` for ``q``, ``k``, ``v`` ``[batch, heads, seq, head_dim]``.

    float32 or bfloat16 (bf16 accumulates in fp32), any strides, ``head_dim`` 1..256, ``q_seq``
    and ``key_seq`` may differ; ``scale`` defaults to ``1/sqrt(head_dim)``. Returns
    ``[batch, heads, q_seq, head_dim]`` in q's dtype. See the module docstring for ``mask`` and
    ``precision``.
    """
    return torch.ops.sparsebert.attention.default(q, k, v, mask, scale, precision)


def attention_varlen(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float | None = None,
    precision: str = "fp32",
) -> Tensor:
    """Attention over packed tokens ``[total_tokens, heads, head_dim]``, no padding anywhere.

    Sequence ``b`` is tokens ``cu_seqlens[b]:cu_seqlens[b + 1]`` and attends to itself only;
    ``cu_seqlens`` is int32, non-decreasing, from 0 to ``total_tokens`` (length batch + 1);
    ``max_seqlen`` is at least the longest sequence. Returns ``[total_tokens, heads, head_dim]``.
    ``precision`` as in ``attention``.
    """
    return torch.ops.sparsebert.attention_varlen.default(q, k, v, cu_seqlens, int(max_seqlen), scale, precision)


def _additive(mask: Tensor | None, shape: tuple[int, int, int, int], dtype: torch.dtype) -> Tensor | None:
    """The mask as an additive tensor broadcastable to ``shape`` (-inf where a key is not kept)."""
    if mask is None:
        return None
    b, _, _, sk = shape
    if mask.dim() == 2:
        keep = mask.bool() if mask.dtype == torch.bool else mask != 0
        return torch.zeros(b, 1, 1, sk, dtype=dtype, device=mask.device).masked_fill(
            ~keep[:, None, None, :], float("-inf"))
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


PRECISIONS = ("fp32", "bf16", "int8")


def _check_precision(op: str, precision) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"{op}: precision must be one of {PRECISIONS}, got {precision!r}")


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None,
    precision: str = "fp32", *, dropout_p: float = 0.0,
) -> Tensor:
    """The definition of ``attention``: eager softmax attention in q's dtype if float64, else
    in float32, rounded to q's dtype; rows with no kept key give zeros. ``precision="bf16"``:
    on ``q``, ``k`` and ``v`` rounded to bfloat16 first.

    Differentiable with plain torch autograd (a row with no kept key gets zero gradients, not
    NaN). ``dropout_p > 0`` drops attention probabilities as ``F.dropout`` does and scales the
    rest by ``1 / (1 - dropout_p)``: the training path of ``sparsebert.hf``; the op has no dropout.
    """
    _check_precision("attention_reference", precision)
    if precision == "int8":
        return _int8_reference(q, k, v, mask, scale, dropout_p)
    cdtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if precision == "bf16":
        qc, kc, vc = (t.to(torch.bfloat16).to(cdtype) for t in (q, k, v))
    else:
        qc, kc, vc = (t.to(cdtype) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (qc @ kc.transpose(-1, -2)) * scale
    add = _additive(mask, tuple(s.shape), cdtype)
    if add is not None:
        s = s + add
    # Rows with no kept key are zeroed around the softmax rather than mapped NaN -> 0 after it:
    # the softmax of an all -inf row is NaN, and its backward would spread NaN into q and k.
    kept = (s > float("-inf")).any(dim=-1, keepdim=True)
    p = torch.softmax(s.masked_fill(~kept, 0.0), dim=-1) * kept
    if dropout_p:
        p = torch.nn.functional.dropout(p, dropout_p)
    return (p @ vc).to(q.dtype)


def _quantize_lastdim(t: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 over the last dim, as float32 integers: ``(q, max|t| / 127)``; NaN in a row
    makes its scale NaN (the kernels' rule), a zero row gives zeros. The rounding of
    ``int8_format.quantize_symmetric``, which refuses non-finite rows where attention propagates them."""
    amax = t.abs().amax(dim=-1) if t.shape[-1] else t.new_zeros(t.shape[:-1])
    bad = amax.isnan()
    inv = torch.where((amax > 0) & ~bad, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(t * inv[..., None]).clamp(-127, 127).nan_to_num(-127.0)
    return q, torch.where(bad, amax, amax / 127.0)


def _int8_reference(q, k, v, mask, scale, dropout_p):
    if any(t.requires_grad for t in (q, k, v)) and torch.is_grad_enabled():
        raise ValueError("precision='int8' attention is inference-only (its rounding has no gradient); train at "
                         "precision 'fp32' or 'bf16'")
    qf, kf, vf = (t.float() for t in (q, k, v))
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if mask is not None and mask.dim() == 2:  # key padding: padded keys are never read
        keep = (mask != 0)[:, None, :, None]
        kf = kf.masked_fill(~keep, 0.0)
        vf = vf.masked_fill(~keep, 0.0)
    qq, sq = _quantize_lastdim(qf)
    kq, sk = _quantize_lastdim(kf)
    vq, sv = _quantize_lastdim(vf.transpose(-1, -2))  # per head dim, over the keys
    acc = (qq.double() @ kq.double().transpose(-1, -2)).float()  # exact integers
    s = acc * (sq * scale)[..., :, None] * sk[..., None, :]
    add = _additive(mask, tuple(s.shape), torch.float32)
    if add is not None:
        s = s + add
    kept = ((s > float("-inf")) | s.isnan()).any(dim=-1, keepdim=True)
    m = s.masked_fill(~kept, 0.0).amax(dim=-1, keepdim=True)
    e = torch.exp(s.masked_fill(~kept, float("-inf")) - m)
    l = e.sum(dim=-1, keepdim=True)
    p = torch.round(e * 255.0)
    if dropout_p:
        p = torch.nn.functional.dropout(p, dropout_p)
    inv = torch.where(l > 0, 1.0 / (255.0 * l), torch.where(l == 0, torch.zeros_like(l), l))
    out = (p.double() @ vq.double().transpose(-1, -2)).float() * sv[..., None, :] * inv
    return out.to(q.dtype)


def attention_varlen_reference(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float | None = None,
    precision: str = "fp32", *, dropout_p: float = 0.0,
) -> Tensor:
    """The definition of ``attention_varlen``: ``attention_reference`` per sequence (so it is
    differentiable too, and takes the same ``dropout_p``)."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            sl = slice(start, end)
            out[sl] = attention_reference(
                q[sl].transpose(0, 1), k[sl].transpose(0, 1), v[sl].transpose(0, 1), None, scale, precision,
                dropout_p=dropout_p,
            ).transpose(0, 1)
    return out


def _check_qkv(op: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"{op} supports float32 and bfloat16, got q of dtype {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{op}: q, k and v must have one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    d = q.shape[-1]
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: head_dim must be in 1..{MAX_HEAD_DIM}, got {d}")


@torch.library.register_fake("sparsebert::attention")
def _attention_fake(q, k, v, mask=None, scale=None, precision="fp32"):
    _check_precision("attention", precision)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention: q, k and v must be [batch, heads, seq, head_dim], got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    _check_qkv("attention", q, k, v)
    b, h, _, d = q.shape
    if k.shape[0] != b or k.shape[1] != h or k.shape[3] != d:
        raise ValueError(f"attention: k must be [{b}, {h}, seq, {d}] to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"attention: v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if mask is not None and mask.dim() not in (2, 4):
        raise ValueError(f"attention: mask must be 2-D (key padding) or 4-D, got {mask.dim()}-D")
    return q.new_empty(q.shape)  # contiguous


@torch.library.register_fake("sparsebert::attention_varlen")
def _attention_varlen_fake(q, k, v, cu_seqlens, max_seqlen, scale=None, precision="fp32"):
    _check_precision("attention_varlen", precision)
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "attention_varlen: q, k and v must be packed tokens [total_tokens, heads, head_dim] of one "
            f"shape, got {tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    _check_qkv("attention_varlen", q, k, v)
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
        raise ValueError(f"attention_varlen: cu_seqlens must be a 1-D int32 tensor, got {cu_seqlens.dtype}")
    return q.new_empty(q.shape)  # contiguous


register_inference_only("attention")
register_inference_only("attention_varlen")
