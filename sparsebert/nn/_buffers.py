"""Helpers the modules share: buffers with data-dependent shapes, dtype moves the kernels
cannot run, empty construction from a spec, and the warning for a block size that does not
match the pruning pattern."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

__all__ = ["resize_to_checkpoint", "check_move", "placeholder_bsr", "warn_if_blocks_do_not_match", "dtype_name",
           "dtype_from_name", "check_spec"]

# Floating dtypes the CPU kernels compute in (float16 runs on CUDA only, through Triton).
CPU_DTYPES = (torch.float32, torch.bfloat16)
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def dtype_from_name(name: str) -> torch.dtype:
    for dtype, n in _DTYPE_NAMES.items():
        if n == name:
            return dtype
    raise ValueError(f"dtype must be one of {sorted(_DTYPE_NAMES.values())}, got {name!r}")


def resize_to_checkpoint(module: nn.Module, state_dict: dict, prefix: str, names: tuple[str, ...]) -> None:
    """Before the default copy of ``load_state_dict``: give each buffer in ``names`` the shape it
    has in the checkpoint (the number of stored blocks differs between patterns). Keeps the
    module's dtype and device; the default loader then copies the values and reports the usual
    missing / unexpected keys."""
    for name in names:
        key = prefix + name
        current = getattr(module, name)
        if key in state_dict and current is not None and state_dict[key].shape != current.shape:
            setattr(module, name, current.new_empty(state_dict[key].shape))


def check_move(module: nn.Module, fn, probe: Tensor, allowed_cuda=(torch.float16,)) -> None:
    """Raises TypeError before ``module._apply(fn)`` changes anything when ``fn`` (what
    ``.to()``, ``.half()``, ``.double()`` ... apply) would give floating tensors a dtype the
    kernels cannot run on the target device. ``probe`` is a floating buffer of the module: ``fn``
    is applied to an empty tensor of its dtype and device to learn the target."""
    target = fn(torch.empty(0, dtype=probe.dtype, device=probe.device))
    dtype, device = target.dtype, target.device
    if dtype in CPU_DTYPES or (device.type == "cuda" and dtype in allowed_cuda) or device.type == "meta":
        return
    where = "the CPU kernels" if device.type == "cpu" else f"{device.type} tensors"
    raise TypeError(
        f"{type(module).__name__} cannot be converted to {dtype}: {where} support "
        f"{', '.join(dtype_name(d) for d in CPU_DTYPES)}"
        + (" (float16 runs on CUDA only)" if dtype == torch.float16 else "")
        + "; use .to(torch.bfloat16) or .float()"
    )


def placeholder_bsr(nnzb: int, shape: tuple[int, int], block_size: tuple[int, int], device=None):
    """A valid BSR pattern with ``nnzb`` stored blocks (the first block rows filled from the
    left): what an empty module holds until a state dict is loaded into it."""
    br, bc = block_size
    nb, ncb = math.ceil(shape[0] / br), math.ceil(shape[1] / bc)
    if not 0 <= nnzb <= nb * ncb:
        raise ValueError(f"nnz_blocks must be in [0, {nb * ncb}] for shape {tuple(shape)} and block_size "
                         f"{tuple(block_size)}, got {nnzb}")
    crow = torch.clamp(torch.arange(nb + 1) * ncb, max=nnzb).to(torch.int32)
    col = (torch.arange(nnzb) % max(ncb, 1)).to(torch.int32)
    return crow.to(device), col.to(device)


def check_spec(spec: dict, cls_name: str, required: tuple[str, ...]) -> None:
    """Raises ValueError naming the module type and the missing or bad key of a spec."""
    if not isinstance(spec, dict):
        raise ValueError(f"{cls_name} spec must be a dict, got {type(spec).__name__}")
    if spec.get("type") != cls_name:
        raise ValueError(f"spec describes a {spec.get('type')!r}, not a {cls_name}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"{cls_name} spec lacks {', '.join(missing)}: {spec}")


def warn_if_blocks_do_not_match(weight: Tensor, stored_sparsity: float, block_size: tuple[int, int],
                                cls_name: str) -> None:
    """Warns when most of ``weight``'s zeros lie in blocks that also hold nonzeros, so that the
    block-sparse layer stores far more than the pruning removed (an unstructured or
    differently-blocked pattern): names both sparsities and what would help."""
    if weight.numel() == 0:
        return
    zero_share = float((weight == 0).sum()) / weight.numel()
    if zero_share < 0.2 or stored_sparsity >= 0.5 * zero_share:
        return
    warnings.warn(
        f"{cls_name}: the weight is {zero_share:.1%} zeros but only {stored_sparsity:.1%} of it lies in empty "
        f"{block_size[0]}x{block_size[1]} blocks, so the layer keeps {1 - stored_sparsity:.1%} of the weight: the "
        "zeros do not form blocks of this size. Prune in blocks of this size (sparsebert.prune.block_magnitude_mask) "
        "or use the block size the model was pruned with.",
        UserWarning,
        stacklevel=3,
    )
