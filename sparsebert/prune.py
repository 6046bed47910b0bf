"""Pruning masks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .ops.bsr_format import check_block_size

__all__ = ["block_magnitude_mask"]


def block_magnitude_mask(weight: Tensor, sparsity: float, block_size=(32, 32)) -> Tensor:
    """Boolean mask of ``weight``'s shape that keeps the blocks of largest L2 norm.

    ``round(sparsity * n_blocks)`` blocks are dropped (``n_blocks`` counts the partial blocks at
    the edges of a weight whose shape is not a multiple of the block; their norm covers only
    their real entries). Apply it with ``weight * mask``, or through
    ``torch.nn.utils.prune.custom_from_mask(linear, "weight", mask)``.
    """
    br, bc = check_block_size(block_size)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    n, k = weight.shape
    nb, ncb = math.ceil(n / br), math.ceil(k / bc)
    w = torch.nn.functional.pad(weight.detach().float(), (0, ncb * bc - k, 0, nb * br - n))
    norms = w.reshape(nb, br, ncb, bc).square().sum((1, 3)).flatten()  # (NB * NCB,)
    n_keep = norms.numel() - round(sparsity * norms.numel())
    keep = torch.zeros_like(norms, dtype=torch.bool)
    keep[torch.topk(norms, n_keep, sorted=False).indices] = True
    mask = keep.reshape(nb, 1, ncb, 1).expand(nb, br, ncb, bc).reshape(nb * br, ncb * bc)
    return mask[:n, :k].contiguous()
