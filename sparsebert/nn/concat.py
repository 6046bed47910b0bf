"""Several linear layers on one input as one layer, and back: ``cat_outputs`` stacks the layers'
outputs (``torch.cat([l(x) for l in layers], -1)`` as one module, one GEMM, one activation
quantization) and ``split_outputs`` undoes it. Both move the stored integers and scales as they
are (no re-quantization), so the result computes exactly what the parts compute.

The weights go through their dense integer (or float) form and are packed again: every size
works, a block that straddles two parts is simply a block of the whole, and the stored blocks
are those holding a nonzero."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.bsr_format import bsr_to_dense, pack_bsr
from ..ops.int8_format import (
    pack_int8_bsr,
    pack_int8_dense,
    pack_int8_weight_only,
    unpack_int8_dense,
    unpack_int8_weight_only,
    weight_sum,
)
from .int8_linear import Int8Linear, SparseInt8Linear
from .sparse_linear import SparseLinear

__all__ = ["cat_outputs", "split_outputs", "mismatch", "CONCATENABLE"]

CONCATENABLE = (nn.Linear, SparseLinear, Int8Linear, SparseInt8Linear)


def _options(layer: nn.Module) -> dict:
    """What must agree between layers stacked into one (besides the input size)."""
    opts = {"type": type(layer).__name__, "bias": layer.bias is not None}
    if type(layer) is nn.Linear:
        opts["dtype"] = layer.weight.dtype
    elif isinstance(layer, SparseLinear):
        opts.update(dtype=layer.values.dtype, block_size=layer.block_size, backend=layer.backend)
    else:
        opts.update(dtype=layer.bias.dtype if layer.bias is not None else None, act_quant=layer.act_quant,
                    activation=layer.activation, smooth=layer.smooth is not None)
        if isinstance(layer, Int8Linear):
            opts["weight_only"] = layer.weight_only
        else:
            opts["block_size"] = layer.block_size
    return opts


def mismatch(layers) -> str | None:
    """Why ``layers`` cannot be stacked into one (a sentence naming the first difference), or None."""
    layers = list(layers)
    if not layers:
        return "no layers"
    for i, layer in enumerate(layers):
        if type(layer) not in CONCATENABLE:
            return f"layer {i} is a {type(layer).__name__}, not one of {[c.__name__ for c in CONCATENABLE]}"
    first = _options(layers[0])
    for i, layer in enumerate(layers[1:], 1):
        if layer.in_features != layers[0].in_features:
            return f"layer {i} takes {layer.in_features} input features, layer 0 {layers[0].in_features}"
        opts = _options(layer)
        for key, value in first.items():
            if opts.get(key) != value:
                return f"layer {i} has {key}={opts.get(key)!r}, layer 0 {key}={value!r}"
        if first.get("smooth") and not torch.equal(layer.smooth, layers[0].smooth):
            return f"layer {i} smooths its input by other SmoothQuant factors than layer 0"
    return None


def _weights(layer: nn.Module) -> Tensor:
    """The stored weight as a dense [out, in] tensor: float for the float layers, the int8
    values for the INT8 ones."""
    if type(layer) is nn.Linear:
        return layer.weight.detach()
    if isinstance(layer, SparseLinear):
        return layer.to_dense()
    if isinstance(layer, Int8Linear):
        unpack = unpack_int8_weight_only if layer.weight_only else unpack_int8_dense
        return unpack(layer.weight, layer.shape)
    return bsr_to_dense(layer.values, layer.crow_indices, layer.col_indices, layer.shape, layer.block_size)


def _build(like: nn.Module, w: Tensor, bias: Tensor | None, scale: Tensor | None) -> nn.Module:
    """A layer of ``like``'s type and options holding the dense weight ``w`` (int8 values with
    per-row ``scale`` for the INT8 types)."""
    n, k = w.shape
    if type(like) is nn.Linear:
        out = nn.Linear(k, n, bias=bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w)
            if bias is not None:
                out.bias.copy_(bias)
        return out.requires_grad_(like.weight.requires_grad)
    if isinstance(like, SparseLinear):
        values, crow, col = pack_bsr(w, like.block_size)
        return SparseLinear(k, n, values, crow, col, bias, like.block_size, like.backend)
    smooth = None if like.smooth is None else like.smooth.clone()
    if isinstance(like, Int8Linear):
        packed = pack_int8_weight_only(w) if like.weight_only else pack_int8_dense(w)
        return Int8Linear(k, n, packed, scale, weight_sum(w), bias, smooth, like.weight_only, like.act_quant,
                          like.activation)
    values, crow, col = pack_int8_bsr(w, like.block_size)
    return SparseInt8Linear(k, n, values, scale, weight_sum(w), crow, col, bias, like.block_size, smooth,
                            like.act_quant, like.activation)


def cat_outputs(layers) -> nn.Module:
    """One layer of the same type computing ``torch.cat([layer(x) for layer in layers], -1)``.

    ``layers``: ``nn.Linear``, :class:`SparseLinear`, :class:`Int8Linear` or
    :class:`SparseInt8Linear`, all of one type, input size, dtype and options (block size,
    activation quantization mode, fused activation, SmoothQuant factors, bias or not). INT8
    values and scales are moved as they are, so the outputs are the parts' outputs exactly (per
    token activation quantization sees the same input). ValueError naming the first difference
    otherwise. The layers are not modified."""
    layers = list(layers)
    why = mismatch(layers)
    if why is not None:
        raise ValueError(f"cat_outputs: cannot stack these layers into one: {why}")
    like = layers[0]
    with torch.no_grad():
        w = torch.cat([_weights(layer) for layer in layers])
        bias = None if like.bias is None else torch.cat([layer.bias.detach() for layer in layers])
        scale = None if type(like) in (nn.Linear, SparseLinear) else torch.cat([layer.weight_scale for layer in layers])
        out = _build(like, w, bias, scale)
    return out.train(like.training)


def split_outputs(layer: nn.Module, sizes) -> list[nn.Module]:
    """The inverse of :func:`cat_outputs`: layers of ``layer``'s type whose outputs are the
    consecutive slices of ``layer``'s output of the given ``sizes`` (which must add up to its
    ``out_features``). Exact: the stored values are moved, never re-quantized."""
    if type(layer) not in CONCATENABLE:
        raise TypeError(f"split_outputs expects one of {[c.__name__ for c in CONCATENABLE]}, got "
                        f"{type(layer).__name__}")
    sizes = list(sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes) \
            or sum(sizes) != layer.out_features:
        raise ValueError(f"split_outputs: sizes must be positive ints adding up to out_features="
                         f"{layer.out_features}, got {sizes}")
    with torch.no_grad():
        w = _weights(layer)
        scale = None if type(layer) in (nn.Linear, SparseLinear) else layer.weight_scale
        parts, start = [], 0
        for size in sizes:
            rows = slice(start, start + size)
            bias = None if layer.bias is None else layer.bias.detach()[rows].clone()
            part = _build(layer, w[rows].clone(), bias, None if scale is None else scale[rows].clone())
            parts.append(part.train(layer.training))
            start += size
    return parts
