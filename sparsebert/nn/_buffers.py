"""Helpers for modules whose packed buffers have data-dependent shapes."""

from __future__ import annotations

from torch import nn


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
