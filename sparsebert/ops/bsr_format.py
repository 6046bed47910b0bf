"""The block-sparse (BSR) weight format shared by every block-sparse op and module.

A weight ``W`` of shape ``[out_features, in_features] = [N, K]`` with blocks
``(block_rows, block_cols) = (br, bc)`` is stored as:

- ``crow_indices``: int32 ``[NB + 1]`` with ``NB = ceil(N / br)``; block row ``i`` owns stored
  blocks ``crow[i] .. crow[i+1]-1``.
- ``col_indices``: int32 ``[nnzb]``, the block column of each stored block, strictly increasing
  within a block row.
- ``values``: ``[nnzb, KB, br, kp]`` in the *k-pair* packing: element ``(b, kk, r, j)`` is
  ``W[row0 + r, col0 + kk * kp + j]`` of stored block ``b``. ``kp`` is 1 for float32, 2 for
  16-bit dtypes and 4 for int8: the inputs of one output that share a 32-bit lane, the operand
  layout of the bf16 and int8 dot-product instructions and of AMX B tiles;
  ``KB = ceil(bc / kp)``, and entries past ``bc`` are zero.

Shapes that are not multiples of the block are padded with zeros to whole blocks; the padding
never reaches the output. The CPU kernel documents why it wants this layout
(``csrc/cpu/bsr_linear_kernel.h``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PACKED_DTYPES",
    "k_pack",
    "check_block_size",
    "pack_bsr",
    "bsr_to_dense",
    "bsr_gather",
    "bsr_blocks",
    "bsr_sparsity",
    "relayout_values",
    "validate_bsr",
]

_KP = {torch.float32: 1, torch.bfloat16: 2, torch.float16: 2, torch.int8: 4}
PACKED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # floating packings a module can move between


def k_pack(dtype: torch.dtype) -> int:
    """Inputs per packed lane for ``dtype``: 1 for float32, 2 for bfloat16/float16, 4 for int8."""
    if dtype not in _KP:
        raise ValueError(f"block-sparse weights support float32, bfloat16, float16 and int8, got {dtype}")
    return _KP[dtype]


def check_block_size(block_size) -> tuple[int, int]:
    """Returns ``block_size`` as a pair of ints; raises ValueError unless both are positive."""
    try:
        br, bc = block_size
    except (TypeError, ValueError):
        raise ValueError(f"block_size must be a pair (block_rows, block_cols), got {block_size!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (br, bc)):
        raise ValueError(f"block_size must be a pair of positive ints, got {block_size!r}")
    return br, bc


def _padded_blocks(dense: Tensor, block_size: tuple[int, int]) -> Tensor:
    """``[N, K]`` -> ``[NB, NCB, br, bc]`` view of the zero-padded matrix."""
    br, bc = block_size
    n, k = dense.shape
    nb, ncb = math.ceil(n / br), math.ceil(k / bc)
    padded = F.pad(dense, (0, ncb * bc - k, 0, nb * br - n))
    return padded.reshape(nb, br, ncb, bc).permute(0, 2, 1, 3)  # (NB, NCB, br, bc)


def _to_kpair(blocks: Tensor, kp: int) -> Tensor:
    """``[nnzb, br, bc]`` -> ``[nnzb, KB, br, kp]``."""
    nnzb, br, bc = blocks.shape
    kb = math.ceil(bc / kp)
    t = F.pad(blocks.transpose(1, 2), (0, 0, 0, kb * kp - bc))  # (nnzb, KB*kp, br)
    return t.reshape(nnzb, kb, kp, br).permute(0, 1, 3, 2).contiguous()  # (nnzb, KB, br, kp)


def bsr_blocks(values: Tensor, block_size) -> Tensor:
    """``values`` in the k-pair packing -> plain blocks ``[nnzb, br, bc]``."""
    br, bc = check_block_size(block_size)
    nnzb, kb, _, kp = values.shape
    t = values.permute(0, 1, 3, 2).reshape(nnzb, kb * kp, br)  # (nnzb, KB*kp, br)
    return t[:, :bc].transpose(1, 2)  # (nnzb, br, bc)


def relayout_values(values: Tensor, block_size, dtype: torch.dtype) -> Tensor:
    """Converts packed ``values`` to ``dtype`` and to that dtype's k-pair packing."""
    kp = k_pack(dtype)
    if values.shape[-1] == kp:
        return values.to(dtype)
    return _to_kpair(bsr_blocks(values, block_size).to(dtype), kp)


def pack_bsr(weight: Tensor, block_size=(32, 32)) -> tuple[Tensor, Tensor, Tensor]:
    """Packs a dense ``[N, K]`` weight: every block with any nonzero (or NaN) is stored.

    Returns ``(values, crow_indices, col_indices)`` on the weight's device, values in the
    weight's dtype.
    """
    block_size = check_block_size(block_size)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    kp = k_pack(weight.dtype)
    blocks = _padded_blocks(weight.detach(), block_size)  # (NB, NCB, br, bc)
    keep = blocks.ne(0).flatten(2).any(-1)  # (NB, NCB)
    crow = torch.zeros(keep.shape[0] + 1, dtype=torch.int32, device=weight.device)
    crow[1:] = keep.sum(1).cumsum(0)
    col = keep.nonzero()[:, 1].to(torch.int32)  # row-major order: increasing within a row
    values = _to_kpair(blocks[keep], kp)  # (nnzb, KB, br, kp)
    return values, crow, col


def _block_rows(crow: Tensor) -> Tensor:
    counts = (crow[1:] - crow[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=crow.device), counts)


def bsr_to_dense(values: Tensor, crow_indices: Tensor, col_indices: Tensor, shape, block_size) -> Tensor:
    """The dense ``[N, K]`` weight that packed BSR data stands for."""
    br, bc = check_block_size(block_size)
    n, k = shape
    nb, ncb = math.ceil(n / br), math.ceil(k / bc)
    dense = values.new_zeros(nb, ncb, br, bc)
    dense[_block_rows(crow_indices), col_indices.long()] = bsr_blocks(values, (br, bc))
    return dense.permute(0, 2, 1, 3).reshape(nb * br, ncb * bc)[:n, :k]


def bsr_gather(dense: Tensor, crow_indices: Tensor, col_indices: Tensor, block_size, dtype=None) -> Tensor:
    """Packs the blocks of ``dense`` [N, K] at the stored positions of a BSR pattern."""
    block_size = check_block_size(block_size)
    dtype = dtype or dense.dtype
    blocks = _padded_blocks(dense, block_size)[_block_rows(crow_indices), col_indices.long()]
    return _to_kpair(blocks.to(dtype), k_pack(dtype))


def bsr_sparsity(crow_indices: Tensor, col_indices: Tensor, shape, block_size) -> float:
    """Fraction of the ``shape`` entries that lie in no stored block (edge blocks count only
    their real entries)."""
    br, bc = check_block_size(block_size)
    n, k = shape
    if n * k == 0:
        return 0.0
    counts = (crow_indices[1:] - crow_indices[:-1]).long().cpu()
    rows = torch.clamp(n - torch.arange(counts.numel()) * br, max=br)  # real rows per block row
    cols = torch.clamp(k - col_indices.long().cpu() * bc, max=bc)  # real columns per block
    stored = int((torch.repeat_interleave(rows, counts) * cols).sum())
    return 1.0 - stored / (n * k)


def validate_bsr(values: Tensor, crow_indices: Tensor, col_indices: Tensor, shape, block_size,
                 check_indices: bool = True) -> None:
    """Raises ValueError, naming the bad value, unless the arguments form a valid BSR weight.

    ``check_indices=False`` checks shapes and dtypes only (for fake tensors, which hold no data).
    """
    br, bc = check_block_size(block_size)
    try:
        n, k = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (out_features, in_features), got {shape!r}") from None
    if n < 0 or k < 0:
        raise ValueError(f"shape must be non-negative, got {tuple(shape)}")
    kp = k_pack(values.dtype)
    nb, ncb, kb = math.ceil(n / br), math.ceil(k / bc), math.ceil(bc / kp)
    if values.dim() != 4 or tuple(values.shape[1:]) != (kb, br, kp):
        raise ValueError(
            f"values must have shape [nnzb, {kb}, {br}, {kp}] for block_size ({br}, {bc}) and "
            f"dtype {values.dtype}, got {tuple(values.shape)}"
        )
    for name, t in (("crow_indices", crow_indices), ("col_indices", col_indices)):
        if t.dtype != torch.int32 or t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D int32 tensor, got {t.dtype} with shape {tuple(t.shape)}")
    nnzb = values.shape[0]
    if crow_indices.numel() != nb + 1:
        raise ValueError(f"crow_indices must have {nb + 1} entries (block rows + 1), got {crow_indices.numel()}")
    if col_indices.numel() != nnzb:
        raise ValueError(f"values holds {nnzb} blocks, so col_indices must have {nnzb} entries (one per stored "
                         f"block), got {col_indices.numel()}")
    if not check_indices or crow_indices.device.type == "meta":
        return
    crow = crow_indices.cpu().long()
    col = col_indices.cpu().long()
    if crow[0] != 0 or crow[-1] != nnzb:
        raise ValueError(f"crow_indices must start at 0 and end at {nnzb}, got {crow[0].item()} .. {crow[-1].item()}")
    steps = crow[1:] - crow[:-1]
    if (steps < 0).any():
        i = int((steps < 0).nonzero()[0])
        raise ValueError(f"crow_indices must be non-decreasing, got crow_indices[{i}]={crow[i].item()} > "
                         f"crow_indices[{i + 1}]={crow[i + 1].item()}")
    bad = (col < 0) | (col >= ncb)
    if bad.any():
        j = int(bad.nonzero()[0])
        raise ValueError(f"col_indices[{j}]={col[j].item()} is out of range for {ncb} block columns")
    same_row = _block_rows(crow)
    rising = (col[1:] > col[:-1]) | (same_row[1:] != same_row[:-1])
    if not rising.all():
        j = int((~rising).nonzero()[0]) + 1
        raise ValueError(f"col_indices must be strictly increasing within a block row, got "
                         f"{col[j - 1].item()} then {col[j].item()} at position {j}")
