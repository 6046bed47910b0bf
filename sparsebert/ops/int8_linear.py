"""``sparsebert::int8_linear`` and ``sparsebert::bsr_int8_linear``: dynamic INT8 linear layers;
``sparsebert::bsr_int8_ffn``: two of them one after the other (a transformer FFN) as one op;
``sparsebert::bsr_int8_linear_add_layer_norm``: one with the residual add + LayerNorm after it.

``y = act((x_q @ W_q.T) * x_scale[:, None] * weight_scale[None, :] + bias)`` where ``x_q,
x_scale`` quantize ``x`` inside the op (:func:`sparsebert.ops.int8_format.quantize_activations`,
per token and symmetric unless ``act_quant`` says otherwise), the integer product is exact and
``act`` is the identity (``activation="none"``) or the exact, erf GELU (``"gelu"``, as
``torch.nn.functional.gelu`` and BERT's FFN) applied in the kernels' epilogue. Output in the
dtype of ``x`` (float32 or bfloat16). Schemas in ``csrc/ops.cpp``, CPU kernels in
``csrc/cpu/bsr_int8_linear*.cpp``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._inference_only import register_inference_only
from .bsr_format import bsr_to_dense, check_block_size, validate_bsr
from .int8_format import ACT_QUANT_MODES, DENSE_BLOCK_ROWS, quantize_activations, unpack_int8_dense, unpack_int8_weight_only

__all__ = [
    "ACTIVATIONS", "int8_linear", "bsr_int8_linear", "int8_weight_only_linear",
    "int8_linear_reference", "bsr_int8_linear_reference", "int8_weight_only_linear_reference",
    "bsr_int8_ffn", "bsr_int8_ffn_reference", "FFN_ACT_QUANT_MODES",
    "bsr_int8_linear_add_layer_norm", "bsr_int8_linear_add_layer_norm_reference",
]


# What the INT8 ops apply to their output after the bias: "none" or "gelu" (exact, with erf).
ACTIVATIONS = ("none", "gelu")


def int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, weight_sum: Tensor, bias: Tensor | None,
                shape: tuple[int, int], act_quant: str = "per_token", activation: str = "none") -> Tensor:
    """Dense INT8 linear; ``weight`` packed by :func:`sparsebert.ops.int8_format.pack_int8_dense`;
    ``act_quant`` one of :data:`~sparsebert.ops.int8_format.ACT_QUANT_MODES`, ``activation`` one
    of :data:`ACTIVATIONS`."""
    return torch.ops.sparsebert.int8_linear.default(x, weight, weight_scale, weight_sum, bias, list(shape), act_quant,
                                                    activation)


def bsr_int8_linear(x: Tensor, values: Tensor, weight_scale: Tensor, weight_sum: Tensor, crow_indices: Tensor,
                    col_indices: Tensor, bias: Tensor | None, shape: tuple[int, int],
                    block_size: tuple[int, int], act_quant: str = "per_token", activation: str = "none") -> Tensor:
    """Block-sparse INT8 linear; ``values`` packed by :func:`sparsebert.ops.int8_format.pack_int8_bsr`."""
    return torch.ops.sparsebert.bsr_int8_linear.default(
        x, values, weight_scale, weight_sum, crow_indices, col_indices, bias, list(shape),
        list(check_block_size(block_size)), act_quant, activation)


def bsr_int8_linear_add_layer_norm(x: Tensor, linear: tuple, act_quant: str, residual: Tensor,
                                   norm: tuple) -> Tensor:
    """``add_layer_norm(bsr_int8_linear(x, *linear, act_quant), residual, *norm)`` as one op: a
    projection, then the residual add and LayerNorm (BERT's ``BertSelfOutput``). ``linear`` is
    ``(values, weight_scale, weight_sum, crow_indices, col_indices, bias, shape, block_size)`` as
    :func:`bsr_int8_linear` takes them, ``residual`` has the output's shape, ``norm`` is
    ``(weight, bias, eps)``; every tensor in x's dtype. The numbers are those of the two ops; on
    CPU, where the rows are split between threads (weights that fit in L2, 128 rows and more),
    each thread normalizes its rows a few at a time, right after computing them."""
    values, weight_scale, weight_sum, crow, col, bias, shape, block = linear
    weight, nbias, eps = norm
    return torch.ops.sparsebert.bsr_int8_linear_add_layer_norm.default(
        x, values, weight_scale, weight_sum, crow, col, bias, list(shape), list(check_block_size(block)), act_quant,
        residual, weight, nbias, float(eps))


def bsr_int8_linear_add_layer_norm_reference(x, values, weight_scale, weight_sum, crow_indices, col_indices, bias,
                                             shape, block_size, act_quant, residual, norm_weight, norm_bias,
                                             norm_eps):
    """The definition: :func:`bsr_int8_linear_reference` (no activation), then
    :func:`~sparsebert.ops.add_layer_norm_reference`."""
    from .layer_norm import add_layer_norm_reference

    y = bsr_int8_linear_reference(x, values, weight_scale, weight_sum, crow_indices, col_indices, bias, shape,
                                  block_size, act_quant)
    return add_layer_norm_reference(y, residual, norm_weight, norm_bias, norm_eps)


# The activation quantizations bsr_int8_ffn fuses: per token (each row of the hidden activation is
# quantized as soon as it is computed; a per-tensor range would need all of them first).
FFN_ACT_QUANT_MODES = ("per_token", "per_token_asym")


def bsr_int8_ffn(x: Tensor, up: tuple, down: tuple, act_quant: str = "per_token", activation: str = "gelu",
                 norm: tuple | None = None) -> Tensor:
    """``bsr_int8_linear(bsr_int8_linear(x, *up, activation=activation), *down)`` as one op: a
    transformer FFN, up projection, activation, down projection. ``up`` and ``down`` are each
    ``(values, weight_scale, weight_sum, crow_indices, col_indices, bias, shape, block_size)`` as
    :func:`bsr_int8_linear` takes them; ``act_quant`` one of :data:`FFN_ACT_QUANT_MODES`.
    ``norm=(weight, bias, eps)``: then ``add_layer_norm(that, x, weight, bias, eps)``, the residual
    add and LayerNorm after the FFN (BERT's ``BertOutput``). The numbers are those of the ops one
    after the other; on CPU each thread runs the whole chain over a few rows at a time, so the
    hidden activation stays in its core's caches."""
    uv, us, usum, ucrow, ucol, ub, ushape, ublock = up
    dv, ds, dsum, dcrow, dcol, db, dshape, dblock = down
    nw, nb, eps = norm if norm is not None else (None, None, 1e-12)
    _check_ffn(ushape, dshape, act_quant, nw, nb)
    return torch.ops.sparsebert.bsr_int8_ffn.default(
        x, uv, us, usum, ucrow, ucol, ub, list(ushape), list(check_block_size(ublock)),
        dv, ds, dsum, dcrow, dcol, db, list(dshape), list(check_block_size(dblock)), act_quant, activation,
        nw, nb, float(eps))


def bsr_int8_ffn_reference(x, up_values, up_weight_scale, up_weight_sum, up_crow_indices, up_col_indices, up_bias,
                           up_shape, up_block_size, down_values, down_weight_scale, down_weight_sum,
                           down_crow_indices, down_col_indices, down_bias, down_shape, down_block_size,
                           act_quant="per_token", activation="gelu", norm_weight=None, norm_bias=None,
                           norm_eps=1e-12):
    """The definition: the two INT8 linears one after the other (the hidden activation rounded to
    x's dtype in between, as the first op's output is), then the residual add and LayerNorm when
    ``norm_weight`` and ``norm_bias`` are given."""
    from .layer_norm import add_layer_norm_reference

    _check_ffn(up_shape, down_shape, act_quant, norm_weight, norm_bias)
    h = bsr_int8_linear_reference(x, up_values, up_weight_scale, up_weight_sum, up_crow_indices, up_col_indices,
                                  up_bias, up_shape, up_block_size, act_quant, activation)
    y = bsr_int8_linear_reference(h, down_values, down_weight_scale, down_weight_sum, down_crow_indices,
                                  down_col_indices, down_bias, down_shape, down_block_size, act_quant)
    return y if norm_weight is None else add_layer_norm_reference(y, x, norm_weight, norm_bias, norm_eps)


def _check_ffn(up_shape, down_shape, act_quant, norm_weight=None, norm_bias=None) -> None:
    if act_quant not in FFN_ACT_QUANT_MODES:
        raise ValueError(f"act_quant={act_quant!r} is not fused by bsr_int8_ffn; use one of {FFN_ACT_QUANT_MODES}")
    if down_shape[1] != up_shape[0]:
        raise ValueError(f"down's in_features ({down_shape[1]}) must equal up's out_features ({up_shape[0]})")
    if (norm_weight is None) != (norm_bias is None):
        raise ValueError("norm_weight and norm_bias are given together or not at all")
    if norm_weight is not None and down_shape[0] != up_shape[1]:
        raise ValueError(f"the residual add needs down's out_features ({down_shape[0]}) to equal up's "
                         f"in_features ({up_shape[1]})")


def int8_weight_only_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None,
                            shape: tuple[int, int]) -> Tensor:
    """``x @ (W_q * weight_scale[:, None]).T + bias`` with x in float32/bfloat16 as it is (the
    mixed-precision path for small M); ``weight`` packed by ``pack_int8_weight_only``."""
    return torch.ops.sparsebert.int8_weight_only_linear.default(x, weight, weight_scale, bias, list(shape))


def int8_weight_only_linear_reference(x, weight, weight_scale, bias, shape):
    """The definition: dequantize the weight, matmul in float32, round to x's dtype."""
    w = unpack_int8_weight_only(weight, shape).float() * weight_scale[:, None]
    y = x.float() @ w.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _dequant_matmul(x: Tensor, q_w: Tensor, weight_scale: Tensor, bias: Tensor | None, act_quant: str,
                    activation: str = "none") -> Tensor:
    """The definition: quantize x (act_quant), exact integer product (float64 holds it
    exactly), scale, add bias, apply the activation, round to x's dtype."""
    _check_activation(activation)
    n, k = q_w.shape
    x2 = x.reshape(x.shape[:-1].numel(), k)
    q_x, x_scale = quantize_activations(x2, act_quant)
    acc = q_x.double() @ q_w.double().T  # (M, N), exact
    y = acc * x_scale.double()[:, None] * weight_scale.double()[None, :]
    if bias is not None:
        y = y + bias.double()
    if activation == "gelu":
        y = F.gelu(y)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def int8_linear_reference(x, weight, weight_scale, weight_sum, bias, shape, act_quant="per_token",
                          activation="none"):
    return _dequant_matmul(x, unpack_int8_dense(weight, shape), weight_scale, bias, act_quant, activation)


def bsr_int8_linear_reference(x, values, weight_scale, weight_sum, crow_indices, col_indices, bias, shape,
                              block_size, act_quant="per_token", activation="none"):
    validate_bsr(values, crow_indices, col_indices, shape, block_size)
    q_w = bsr_to_dense(values, crow_indices, col_indices, shape, block_size)
    return _dequant_matmul(x, q_w, weight_scale, bias, act_quant, activation)


def _check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one; use one of {ACTIVATIONS}")


def _check_fake(x, weight_scale, weight_sum, bias, n, k, act_quant="per_token", activation="none"):
    _check_activation(activation)
    if act_quant not in ACT_QUANT_MODES:
        raise ValueError(f"act_quant={act_quant!r} is not a mode; use one of {ACT_QUANT_MODES}")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"INT8 linear takes float32 or bfloat16 activations, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must have in_features={k} in its last dimension, got shape {tuple(x.shape)}")
    if weight_scale.shape != (n,) or weight_sum.shape != (n,):
        raise ValueError(f"weight_scale and weight_sum must have shape [{n}]")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype):
        raise ValueError(f"bias must be [{n}] in {x.dtype}, got {tuple(bias.shape)} in {bias.dtype}")
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("sparsebert::int8_linear")
def _int8_linear_fake(x, weight, weight_scale, weight_sum, bias, shape, act_quant="per_token", activation="none"):
    n, k = shape
    nb = -(-n // DENSE_BLOCK_ROWS)
    if weight.dtype != torch.int8 or weight.dim() != 4 or weight.shape[0] != nb:
        raise ValueError(f"int8_linear weight must be int8 [{nb}, ceil(K/4), {DENSE_BLOCK_ROWS}, 4]")
    return _check_fake(x, weight_scale, weight_sum, bias, n, k, act_quant, activation)


@torch.library.register_fake("sparsebert::int8_weight_only_linear")
def _int8_weight_only_fake(x, weight, weight_scale, bias, shape):
    n, k = shape
    nb = -(-n // DENSE_BLOCK_ROWS)
    if weight.dtype != torch.int8 or tuple(weight.shape) != (nb, max(k, 1), DENSE_BLOCK_ROWS, 1):
        raise ValueError(f"int8_weight_only_linear weight must be int8 [{nb}, {max(k, 1)}, {DENSE_BLOCK_ROWS}, 1]")
    if weight_scale.shape != (n,):
        raise ValueError(f"weight_scale must have shape [{n}]")
    return _check_fake(x, weight_scale, weight_scale, bias, n, k)


@torch.library.register_fake("sparsebert::bsr_int8_linear")
def _bsr_int8_linear_fake(x, values, weight_scale, weight_sum, crow_indices, col_indices, bias, shape, block_size,
                          act_quant="per_token", activation="none"):
    validate_bsr(values, crow_indices, col_indices, shape, block_size, check_indices=False)
    n, k = shape
    return _check_fake(x, weight_scale, weight_sum, bias, n, k, act_quant, activation)


@torch.library.register_fake("sparsebert::bsr_int8_ffn")
def _bsr_int8_ffn_fake(x, up_values, up_weight_scale, up_weight_sum, up_crow_indices, up_col_indices, up_bias,
                       up_shape, up_block_size, down_values, down_weight_scale, down_weight_sum, down_crow_indices,
                       down_col_indices, down_bias, down_shape, down_block_size, act_quant="per_token",
                       activation="gelu", norm_weight=None, norm_bias=None, norm_eps=1e-12):
    _check_ffn(up_shape, down_shape, act_quant, norm_weight, norm_bias)
    h = _bsr_int8_linear_fake(x, up_values, up_weight_scale, up_weight_sum, up_crow_indices, up_col_indices, up_bias,
                              up_shape, up_block_size, act_quant, activation)
    y = _bsr_int8_linear_fake(h, down_values, down_weight_scale, down_weight_sum, down_crow_indices,
                              down_col_indices, down_bias, down_shape, down_block_size, act_quant)
    if norm_weight is not None and not (norm_weight.shape == norm_bias.shape == (down_shape[0],)
                                        and norm_weight.dtype == norm_bias.dtype == x.dtype):
        raise ValueError(f"norm_weight and norm_bias must be [{down_shape[0]}] in {x.dtype}")
    return y


@torch.library.register_fake("sparsebert::bsr_int8_linear_add_layer_norm")
def _bsr_int8_linear_add_layer_norm_fake(x, values, weight_scale, weight_sum, crow_indices, col_indices, bias, shape,
                                         block_size, act_quant, residual, norm_weight, norm_bias, norm_eps):
    y = _bsr_int8_linear_fake(x, values, weight_scale, weight_sum, crow_indices, col_indices, bias, shape, block_size,
                              act_quant)
    if residual.shape != y.shape or residual.dtype != x.dtype:
        raise ValueError(f"bsr_int8_linear_add_layer_norm: residual must be {list(y.shape)} in {x.dtype}, got "
                         f"{list(residual.shape)} in {residual.dtype}")
    if not (norm_weight.shape == norm_bias.shape == (shape[0],) and norm_weight.dtype == norm_bias.dtype == x.dtype):
        raise ValueError(f"norm_weight and norm_bias must be [{shape[0]}] in {x.dtype}")
    return y


for _op in ("int8_linear", "int8_weight_only_linear", "bsr_int8_linear", "bsr_int8_ffn",
            "bsr_int8_linear_add_layer_norm"):
    register_inference_only(_op)
