"""``MaskedLinear``: an ``nn.Linear`` that trains under a fixed pruning mask.

The forward multiplies the weight by the mask, so pruned weights get a zero gradient;
:meth:`MaskedLinear.apply_mask_` (called after every optimizer step) zeroes them again after
anything that moves them without a gradient (weight decay, Adam's momentum from before the mask).
:meth:`MaskedLinear.to_linear` gives back a plain ``nn.Linear`` with zeros in place, which
``sparsebert.compress`` turns into a block-sparse kernel.

Quantization-aware training: with ``fake_quant`` on, the forward rounds the weight per output
channel and the input per token to symmetric int8 and back, as the INT8 kernels
(``int8="dynamic"``, ``act_quant="per_token"``) do, and the backward passes gradients straight
through the rounding (the straight-through estimator).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MaskedLinear", "mask_linears", "unmask_linears", "fake_quantize_rows"]


def fake_quantize_rows(t: Tensor) -> Tensor:
    """``t`` (last axis: one row) rounded per row to symmetric int8 and back
    (``q * absmax / 127``), with the gradient of the identity (straight-through estimator)."""
    amax = t.detach().abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(t.detach() / scale).clamp_(-127, 127) * scale
    return t + (q - t).detach()


class MaskedLinear(nn.Linear):
    """``nn.Linear`` with a bool buffer ``mask`` of the weight's shape (True: kept)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device))
        self.fake_quant = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor | None = None) -> "MaskedLinear":
        """A masked copy of ``linear`` (same parameters, shared storage is not kept); ``mask``
        default: the weight's nonzeros, so the zeros a pruned layer has stay zero."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear expects an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            m.weight.copy_(w)
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        m.set_mask(w.detach().ne(0) if mask is None else mask)
        m.train(linear.training)
        return m

    def set_mask(self, mask: Tensor) -> None:
        """Replaces the mask (bool or 0/1, the weight's shape) and zeroes the weights it drops."""
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(f"mask must have the weight's shape {tuple(self.weight.shape)}, got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            if not ((mask == 0) | (mask == 1)).all():
                raise ValueError("a non-bool mask must hold only 0 and 1")
            mask = mask.ne(0)
        self.mask = mask.to(self.weight.device).clone()
        self.apply_mask_()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        self.weight.mul_(self.mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self.mask.to(self.weight.dtype)
        if self.fake_quant:
            w, x = fake_quantize_rows(w), fake_quantize_rows(x)
        return F.linear(x, w, self.bias)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the masked weight (zeros where the mask drops)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device,
                        dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight * self.mask.to(self.weight.dtype))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.train(self.training)
        return lin

    def density(self) -> float:
        return float(self.mask.float().mean())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density():.3f}{', fake_quant' if self.fake_quant else ''}"


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def mask_linears(model: nn.Module, names: Iterable[str]) -> dict[str, MaskedLinear]:
    """Replaces the named ``nn.Linear`` modules of ``model`` by :class:`MaskedLinear` (mask: the
    current nonzeros) in place; returns them by name."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        module = modules.get(name)
        if isinstance(module, MaskedLinear):
            out[name] = module
            continue
        if type(module) is not nn.Linear:
            raise ValueError(f"{name!r} is not an nn.Linear of {type(model).__name__} "
                             f"({type(module).__name__ if module is not None else 'no such module'})")
        out[name] = MaskedLinear.from_linear(module)
        _replace(model, name, out[name])
    return out


def unmask_linears(model: nn.Module) -> list[str]:
    """Replaces every :class:`MaskedLinear` of ``model`` by its plain ``nn.Linear`` (zeros in
    place); returns their names."""
    names = [n for n, m in model.named_modules() if isinstance(m, MaskedLinear)]
    for name in names:
        _replace(model, name, model.get_submodule(name).to_linear())
    return names
