"""``Int8Linear`` and ``SparseInt8Linear``: drop-in ``nn.Linear`` replacements with int8 weights
and dynamic int8 activations."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops  # noqa: F401  (loads the extension: the schemas below)
from ..ops.bsr_format import bsr_sparsity, bsr_to_dense, check_block_size, validate_bsr
from ..ops.int8_linear import ACTIVATIONS
from ..ops.int8_format import (
    ACT_QUANT_MODES,
    DENSE_BLOCK_ROWS,
    pack_int8_bsr,
    pack_int8_dense,
    pack_int8_weight_only,
    quantize_symmetric,
    unpack_int8_dense,
    unpack_int8_weight_only,
    weight_sum,
)
from ._buffers import (
    check_move,
    check_spec,
    dtype_from_name,
    dtype_name,
    placeholder_bsr,
    resize_to_checkpoint,
    warn_if_blocks_do_not_match,
)

__all__ = ["Int8Linear", "SparseInt8Linear", "smoothing_factors", "ffn_mismatch", "int8_ffn"]


def smoothing_factors(act_absmax: Tensor, weight: Tensor, alpha: float = 0.5) -> Tensor:
    """SmoothQuant's per-input-channel factors ``s_k = max|x_k|^alpha / max|W[:, k]|^(1-alpha)``.

    Dividing activations by ``s`` and multiplying the weight's columns by ``s`` leaves the layer's
    math unchanged and moves outlier channels of ``x`` (which per-token quantization handles
    badly) into the weight, where per-output-channel quantization absorbs them. ``act_absmax``:
    the largest |activation| seen per input feature on calibration data, ``[in_features]``.
    """
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    k = weight.shape[1]
    if act_absmax.shape != (k,):
        raise ValueError(f"act_absmax must have shape ({k},) (one value per input feature), got {tuple(act_absmax.shape)}")
    if not torch.isfinite(act_absmax).all() or (act_absmax < 0).any():
        raise ValueError("act_absmax must be finite and non-negative")
    w_absmax = weight.detach().float().abs().amax(dim=0)
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def _quantize_weight(linear: nn.Linear, act_absmax: Tensor | None, alpha: float):
    """``linear``'s weight, SmoothQuant-migrated when ``act_absmax`` is given, quantized per
    output channel: ``(q int8, scale, smooth or None)``."""
    w = linear.weight.detach().float()
    smooth = None
    if act_absmax is not None:
        s = smoothing_factors(act_absmax, w, alpha)
        w, smooth = w * s[None, :], 1.0 / s
    q, scale = quantize_symmetric(w)
    return q, scale, smooth


# The ops, called from forward with their arguments already in the schema's types: the public
# wrappers in sparsebert.ops re-validate a block size the module checked when it was built.
_INT8_LINEAR = torch.ops.sparsebert.int8_linear.default
_BSR_INT8_LINEAR = torch.ops.sparsebert.bsr_int8_linear.default
_WEIGHT_ONLY_LINEAR = torch.ops.sparsebert.int8_weight_only_linear.default
_BSR_INT8_FFN = torch.ops.sparsebert.bsr_int8_ffn.default
_BSR_INT8_LINEAR_ADD_LAYER_NORM = torch.ops.sparsebert.bsr_int8_linear_add_layer_norm.default


class _Int8Base(nn.Module):
    """Shared parts: scales stay float32 whatever `.to(dtype)` does to the module (the ops'
    contract), optional smoothing of the input, and nn.Linear-like attributes."""

    def _init_common(self, in_features, out_features, weight_scale, weight_sum_, bias, smooth, act_quant,
                     activation="none"):
        if act_quant not in ACT_QUANT_MODES:
            raise ValueError(f"act_quant must be one of {ACT_QUANT_MODES}, got {act_quant!r}")
        self.act_quant = act_quant
        self.activation = activation
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if weight_scale.shape != (out_features,) or weight_scale.dtype != torch.float32:
            raise ValueError(f"weight_scale must be float32 of shape ({out_features},), got "
                             f"{weight_scale.dtype} {tuple(weight_scale.shape)}")
        if weight_scale.device.type != "meta" and (not torch.isfinite(weight_scale).all() or (weight_scale < 0).any()):
            raise ValueError("weight_scale must be finite and non-negative")
        if weight_sum_.shape != (out_features,) or weight_sum_.dtype != torch.int32:
            raise ValueError(f"weight_sum must be int32 of shape ({out_features},)")
        if bias is not None and bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        if smooth is not None and smooth.shape != (in_features,):
            raise ValueError(f"smooth must have shape ({in_features},), got {tuple(smooth.shape)}")
        self.in_features, self.out_features = in_features, out_features
        self._op_shape = [out_features, in_features]
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("weight_sum", weight_sum_)
        self.register_buffer("bias", bias)
        self.register_buffer("smooth", None if smooth is None else smooth.float())

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def activation(self) -> str:
        """What the layer applies to its output, fused into the kernel's epilogue: ``"none"``
        or ``"gelu"`` (the exact, erf GELU of ``torch.nn.functional.gelu``): ``y =
        gelu(x @ W.T + bias)``. Set by :func:`sparsebert.fuse_activations`; saved in the spec."""
        return self._activation

    @activation.setter
    def activation(self, value: str) -> None:
        if value not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {value!r}")
        if value != "none" and getattr(self, "weight_only", False):
            raise ValueError("a weight-only Int8Linear has no fused activation (its kernel has no epilogue for one)")
        self._activation = value

    def _prepare(self, x: Tensor) -> tuple[Tensor, Tensor | None, dict]:
        """x (smoothed), the bias in x's dtype, and the buffers. Read from ``_buffers`` directly:
        nn.Module's attribute lookup costs ~0.7 us per buffer, a third of a small layer's call."""
        b = self._buffers
        smooth, bias = b["smooth"], b["bias"]
        if smooth is not None:
            x = x * (smooth if smooth.dtype == x.dtype else smooth.to(x.dtype))
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return x, bias, b

    def _call_state(self) -> tuple:
        """Everything :meth:`_bound_forward` reads, for a comparison by identity (``is``, item by
        item): a bound forward is current while every item is the same object. Buffers replaced
        (``load_state_dict`` into other shapes, ``.to()``), attributes set, hooks added or a
        forward patched on the instance all change an item; values written into the same tensors
        do not, and need not (the bound call reads them)."""
        b = self._buffers
        bias = b["bias"]
        return (self, *b.values(), None if bias is None else bias.dtype, self.act_quant, self._activation,
                self._op_shape, self.__dict__.get("_op_block"), self.__dict__.get("weight_only"),
                bool(self._forward_hooks or self._forward_pre_hooks), self.__dict__.get("forward"))

    def _bound_forward(self, dtype: torch.dtype):
        """``self.forward`` for inputs of ``dtype`` as a function of ``x`` alone, its op's other
        arguments read now (see :meth:`_call_state` for when to read them again); None where
        forward does more than call its op: SmoothQuant factors, a bias in another dtype, hooks,
        a forward replaced on the instance, a subclass."""
        b = self._buffers
        bias = b["bias"]
        if (type(self) not in (Int8Linear, SparseInt8Linear) or b["smooth"] is not None
                or (bias is not None and bias.dtype != dtype) or self._forward_hooks or self._forward_pre_hooks
                or "forward" in self.__dict__):
            return None
        if type(self) is SparseInt8Linear:
            op, args = _BSR_INT8_LINEAR, (b["values"], b["weight_scale"], b["weight_sum"], b["crow_indices"],
                                          b["col_indices"], bias, self._op_shape, self._op_block, self.act_quant,
                                          self._activation)
        elif self.weight_only:
            op, args = _WEIGHT_ONLY_LINEAR, (b["weight"], b["weight_scale"], bias, self._op_shape)
        else:
            op, args = _INT8_LINEAR, (b["weight"], b["weight_scale"], b["weight_sum"], bias, self._op_shape,
                                      self.act_quant, self._activation)
        return lambda x: op(x, *args)

    def _effective(self, q: Tensor) -> Tensor:
        """The float [N, K] weight the layer multiplies x by: dequantized, smoothing undone."""
        w = q.float() * self.weight_scale[:, None]
        return w if self.smooth is None else w * self.smooth[None, :]

    def _spec_common(self) -> dict:
        return {"type": type(self).__name__, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "act_quant": self.act_quant, "smooth": self.smooth is not None,
                "dtype": dtype_name(self.bias.dtype if self.bias is not None else torch.float32),
                "activation": self.activation}

    @staticmethod
    def _empty_common(spec: dict, device):
        """(weight_scale, weight_sum, bias, smooth) placeholders of a spec's shapes."""
        n, k = spec["out_features"], spec["in_features"]
        dtype = dtype_from_name(spec["dtype"])
        bias = torch.zeros(n, dtype=dtype, device=device) if spec["bias"] else None
        smooth = torch.ones(k, device=device) if spec["smooth"] else None
        return (torch.zeros(n, device=device), torch.zeros(n, dtype=torch.int32, device=device), bias, smooth)

    def _check_loaded(self, state_dict, prefix):
        """Checks a checkpoint's scales and sums before they are copied: a tampered or mismatched
        file is refused with the module's name, never run."""
        name = f"{type(self).__name__} {prefix.rstrip('.') or '(root)'}"
        n = self.out_features
        for key, dtype in (("weight_scale", torch.float32), ("weight_sum", torch.int32)):
            t = state_dict.get(prefix + key)
            if t is not None and (tuple(t.shape) != (n,) or t.dtype != dtype):
                raise ValueError(f"{name}: {key} must be {dtype} of shape ({n},), got {t.dtype} {tuple(t.shape)}")
        scale = state_dict.get(prefix + "weight_scale")
        if scale is not None and scale.device.type != "meta" and (not torch.isfinite(scale).all() or (scale < 0).any()):
            raise ValueError(f"{name}: weight_scale must be finite and non-negative")
        smooth = state_dict.get(prefix + "smooth")
        if smooth is not None and smooth.device.type != "meta" and (
                tuple(smooth.shape) != (self.in_features,) or not torch.isfinite(smooth).all() or (smooth <= 0).any()):
            raise ValueError(f"{name}: smooth must be {self.in_features} finite positive factors")

    def _check_weight_sum(self, state_dict, prefix, q: Tensor) -> None:
        """The kernels subtract ``zero_point * weight_sum`` from every output: a sum that is not
        the weight's would give silently wrong results, so it is recomputed and compared."""
        wsum = state_dict.get(prefix + "weight_sum")
        if wsum is not None and wsum.device.type != "meta" and not torch.equal(wsum, weight_sum(q)):
            raise ValueError(f"{type(self).__name__} {prefix.rstrip('.') or '(root)'}: weight_sum does not match the "
                             "int8 weight it belongs to")

    def _apply(self, fn, recurse=True):
        check_move(self, fn, self.weight_scale)
        scale, smooth = self.weight_scale, self.smooth
        super()._apply(fn, recurse)
        self.weight_scale = scale.to(self.weight_scale.device)  # keep float32 values
        if smooth is not None:
            self.smooth = smooth.to(self.smooth.device)
        return self


class Int8Linear(_Int8Base):
    """``y = x @ W.T + bias`` with ``W`` int8 per output channel.

    ``weight_only=False`` (default): ``x`` is quantized per token (symmetric) inside the op and
    the product is exact int32 (VNNI / AMX-INT8). ``weight_only=True``: ``x`` stays fp32/bf16 and
    the int8 weights are widened in registers (the mixed-precision path: no activation
    quantization error, for small M where the layer is bound by reading its weights).
    The mode is fixed at construction. Output in x's dtype (fp32 or bf16).

    Activation quantization (dynamic mode): ``act_quant="per_token"`` (default: symmetric, one
    scale per token), ``"per_token_asym"`` (a zero point per token: one-sided activations such
    as GELU outputs use all 256 levels), ``"per_tensor"`` / ``"per_tensor_asym"`` (one range for
    the whole input). SmoothQuant migration of outlier channels into the weight is the
    ``act_absmax`` option of :meth:`from_dense` (off by default). The bias stays in the module's
    dtype, scales in fp32.
    """

    def __init__(self, in_features, out_features, weight, weight_scale, weight_sum, bias=None, smooth=None,
                 weight_only=False, act_quant="per_token", activation="none"):
        super().__init__()
        self.weight_only = bool(weight_only)
        self._init_common(in_features, out_features, weight_scale, weight_sum, bias, smooth, act_quant, activation)
        nb, k = -(-out_features // 32), max(in_features, 1)
        expected = (nb, k, 32, 1) if self.weight_only else (nb, -(-k // 4), 32, 4)
        if weight.dtype != torch.int8 or tuple(weight.shape) != expected:
            raise ValueError(f"weight must be int8 of shape {expected}, got {weight.dtype} {tuple(weight.shape)}")
        self.register_buffer("weight", weight)

    @classmethod
    def from_dense(cls, linear: nn.Linear, weight_only: bool = False, act_absmax: Tensor | None = None,
                   alpha: float = 0.5, act_quant: str = "per_token") -> "Int8Linear":
        """Quantizes ``linear``'s weight per output channel. ``act_absmax`` (per input feature,
        from calibration data) turns on SmoothQuant migration with strength ``alpha``."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_dense expects an nn.Linear, got {type(linear).__name__}")
        q, scale, smooth = _quantize_weight(linear, act_absmax, alpha)
        packed = pack_int8_weight_only(q) if weight_only else pack_int8_dense(q)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(linear.in_features, linear.out_features, packed, scale, weight_sum(q), bias, smooth, weight_only,
                   act_quant)

    def spec(self) -> dict:
        """JSON-able description (see :meth:`SparseLinear.spec`)."""
        return {**self._spec_common(), "weight_only": self.weight_only}

    @classmethod
    def from_spec(cls, spec: dict, device=None) -> "Int8Linear":
        """An empty layer of the shapes in ``spec``, ready for ``load_state_dict``."""
        check_spec(spec, cls.__name__, ("in_features", "out_features", "bias", "act_quant", "smooth", "dtype",
                                        "weight_only"))
        n, k = spec["out_features"], spec["in_features"]
        nb, kk = -(-n // 32), max(k, 1)
        shape = (nb, kk, 32, 1) if spec["weight_only"] else (nb, -(-kk // 4), 32, 4)
        scale, wsum, bias, smooth = cls._empty_common(spec, device)
        return cls(k, n, torch.zeros(shape, dtype=torch.int8, device=device), scale, wsum, bias, smooth,
                   spec["weight_only"], spec["act_quant"], spec.get("activation", "none"))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._check_loaded(state_dict, prefix)
        w = state_dict.get(prefix + "weight")
        if w is not None and w.device.type != "meta":
            if w.dtype != self.weight.dtype or w.shape != self.weight.shape:
                raise ValueError(f"{type(self).__name__} {prefix.rstrip('.') or '(root)'}: weight must be int8 of "
                                 f"shape {tuple(self.weight.shape)}, got {w.dtype} {tuple(w.shape)}")
            unpack = unpack_int8_weight_only if self.weight_only else unpack_int8_dense
            self._check_weight_sum(state_dict, prefix, unpack(w, self.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def to_dense(self) -> Tensor:
        unpack = unpack_int8_weight_only if self.weight_only else unpack_int8_dense
        return self._effective(unpack(self.weight, self.shape))

    def forward(self, x: Tensor) -> Tensor:
        x, bias, b = self._prepare(x)
        if self.weight_only:
            return _WEIGHT_ONLY_LINEAR(x, b["weight"], b["weight_scale"], bias, self._op_shape)
        return _INT8_LINEAR(x, b["weight"], b["weight_scale"], b["weight_sum"], bias, self._op_shape, self.act_quant,
                            self._activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight_only={self.weight_only}, "
                + ("" if self.weight_only else f"act_quant={self.act_quant!r}, ")
                + f"smooth={self.smooth is not None}"
                + ("" if self.activation == "none" else f", activation={self.activation!r}"))


class SparseInt8Linear(_Int8Base):
    """Block-sparse INT8 linear: the blocks of a pruned weight that hold a nonzero after
    quantization, in int8 per output channel; activations quantized per token in the op."""

    def __init__(self, in_features, out_features, values, weight_scale, weight_sum, crow_indices, col_indices,
                 bias=None, block_size=(32, 32), smooth=None, act_quant="per_token", activation="none"):
        super().__init__()
        self._init_common(in_features, out_features, weight_scale, weight_sum, bias, smooth, act_quant, activation)
        self.block_size = check_block_size(block_size)
        self._op_block = list(self.block_size)
        if values.dtype != torch.int8:
            raise ValueError(f"values must be int8, got {values.dtype}")
        validate_bsr(values, crow_indices, col_indices, (out_features, in_features), self.block_size)
        self.register_buffer("values", values)
        self.register_buffer("crow_indices", crow_indices)
        self.register_buffer("col_indices", col_indices)

    @classmethod
    def from_dense(cls, linear: nn.Linear, block_size=(32, 32), act_absmax: Tensor | None = None,
                   alpha: float = 0.5, act_quant: str = "per_token") -> "SparseInt8Linear":
        """Converts a pruned ``linear`` (see :func:`sparsebert.prune.block_magnitude_mask`);
        ``act_quant`` as for :class:`Int8Linear`."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_dense expects an nn.Linear, got {type(linear).__name__}")
        block_size = check_block_size(block_size)
        q, scale, smooth = _quantize_weight(linear, act_absmax, alpha)
        values, crow, col = pack_int8_bsr(q, block_size)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        layer = cls(linear.in_features, linear.out_features, values, scale, weight_sum(q), crow, col, bias,
                    block_size, smooth, act_quant)
        warn_if_blocks_do_not_match(linear.weight.detach(), layer.sparsity, block_size, cls.__name__)
        return layer

    @property
    def nnz_blocks(self) -> int:
        return self.values.shape[0]

    def spec(self) -> dict:
        """JSON-able description (see :meth:`SparseLinear.spec`)."""
        return {**self._spec_common(), "block_size": list(self.block_size), "nnz_blocks": self.nnz_blocks}

    @classmethod
    def from_spec(cls, spec: dict, device=None) -> "SparseInt8Linear":
        """An empty layer of the shapes in ``spec``, ready for ``load_state_dict``."""
        check_spec(spec, cls.__name__, ("in_features", "out_features", "bias", "act_quant", "smooth", "dtype",
                                        "block_size", "nnz_blocks"))
        n, k = spec["out_features"], spec["in_features"]
        block_size = check_block_size(tuple(spec["block_size"]))
        crow, col = placeholder_bsr(spec["nnz_blocks"], (n, k), block_size, device)
        values = torch.zeros(spec["nnz_blocks"], -(-block_size[1] // 4), block_size[0], 4, dtype=torch.int8,
                             device=device)
        scale, wsum, bias, smooth = cls._empty_common(spec, device)
        return cls(k, n, values, scale, wsum, crow, col, bias, block_size, smooth, spec["act_quant"],
                   spec.get("activation", "none"))

    @property
    def sparsity(self) -> float:
        """Fraction of the weight entries in blocks that are not stored."""
        return bsr_sparsity(self.crow_indices, self.col_indices, self.shape, self.block_size)

    def to_dense(self) -> Tensor:
        q = bsr_to_dense(self.values, self.crow_indices, self.col_indices, self.shape, self.block_size)
        return self._effective(q)

    def forward(self, x: Tensor) -> Tensor:
        x, bias, b = self._prepare(x)
        return _BSR_INT8_LINEAR(x, b["values"], b["weight_scale"], b["weight_sum"], b["crow_indices"],
                                b["col_indices"], bias, self._op_shape, self._op_block, self.act_quant, self._activation)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._check_loaded(state_dict, prefix)
        keys = [prefix + n for n in ("values", "crow_indices", "col_indices")]
        if all(k in state_dict for k in keys):
            try:
                if state_dict[keys[0]].dtype != torch.int8:
                    raise ValueError(f"values must be int8, got {state_dict[keys[0]].dtype}")
                validate_bsr(state_dict[keys[0]], state_dict[keys[1]], state_dict[keys[2]], self.shape,
                             self.block_size)
            except ValueError as e:
                raise ValueError(f"{type(self).__name__} {prefix.rstrip('.') or '(root)'}: {e}") from None
            if state_dict[keys[0]].device.type != "meta":
                q = bsr_to_dense(state_dict[keys[0]], state_dict[keys[1]], state_dict[keys[2]], self.shape,
                                 self.block_size)
                self._check_weight_sum(state_dict, prefix, q)
        resize_to_checkpoint(self, state_dict, prefix, ("values", "crow_indices", "col_indices"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block_size={self.block_size}, sparsity={self.sparsity:.2f}, "
                f"act_quant={self.act_quant!r}, smooth={self.smooth is not None}"
                + ("" if self.activation == "none" else f", activation={self.activation!r}"))


# --- an FFN's two layers as one op ---------------------------------------------------------------

def ffn_mismatch(up: nn.Module, down: nn.Module) -> str | None:
    """Why ``down(up(x))`` cannot run as one ``sparsebert::bsr_int8_ffn``, or None when it can:
    both :class:`SparseInt8Linear`, ``up``'s outputs ``down``'s inputs, one per-token activation
    quantization, no activation after ``down``, no SmoothQuant factors on ``down``'s inputs (the op
    quantizes the hidden activation as ``up`` leaves it)."""
    from ..ops.int8_linear import FFN_ACT_QUANT_MODES

    for name, m in (("up", up), ("down", down)):
        if type(m) is not SparseInt8Linear:
            return f"{name} is a {type(m).__name__}, not a SparseInt8Linear"
        if m._forward_hooks or m._forward_pre_hooks:
            return f"{name} has hooks (they would no longer run)"
    if up.out_features != down.in_features:
        return f"up's out_features ({up.out_features}) are not down's in_features ({down.in_features})"
    if up.act_quant != down.act_quant or up.act_quant not in FFN_ACT_QUANT_MODES:
        return (f"act_quant {up.act_quant!r} and {down.act_quant!r}: the op takes one of {FFN_ACT_QUANT_MODES} "
                "for both")
    if down.activation != "none":
        return f"down has activation={down.activation!r}"
    if down.smooth is not None:
        return "down has SmoothQuant factors"
    return None


def int8_ffn(x: Tensor, up: SparseInt8Linear, down: SparseInt8Linear, norm: nn.LayerNorm | None = None) -> Tensor:
    """``down(up(x))`` as one ``sparsebert::bsr_int8_ffn``: the same numbers, with the hidden
    activation kept in each core's caches (see :func:`sparsebert.ops.bsr_int8_ffn`). ``up``'s
    activation (``up.activation``) runs between them. ``norm``: then ``norm(down(up(x)) + x)`` in
    the same pass (``sparsebert.ops.add_layer_norm``'s numbers), an ``nn.LayerNorm`` over the last
    dim with weight and bias in x's dtype. Raises ValueError where :func:`ffn_mismatch` names a
    reason."""
    why = ffn_mismatch(up, down)
    if why is not None:
        raise ValueError(f"int8_ffn cannot fuse these layers: {why}")
    if norm is not None and not (isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None
                                 and tuple(norm.normalized_shape) == (down.out_features,)):
        raise ValueError(f"norm must be an nn.LayerNorm over the last dim ({down.out_features}) with weight and "
                         f"bias, got {norm!r}")
    return _int8_ffn(x, up, down, norm)


def _int8_ffn(x: Tensor, up: SparseInt8Linear, down: SparseInt8Linear, norm: nn.LayerNorm | None = None) -> Tensor:
    """:func:`int8_ffn` for layers :func:`ffn_mismatch` has passed."""
    residual = x
    x, up_bias, u = up._prepare(x)
    d = down._buffers
    down_bias = d["bias"]
    if down_bias is not None and down_bias.dtype != x.dtype:
        down_bias = down_bias.to(x.dtype)
    return _BSR_INT8_FFN(x, u["values"], u["weight_scale"], u["weight_sum"], u["crow_indices"], u["col_indices"],
                         up_bias, up._op_shape, up._op_block, d["values"], d["weight_scale"], d["weight_sum"],
                         d["crow_indices"], d["col_indices"], down_bias, down._op_shape, down._op_block,
                         up.act_quant, up._activation, *_norm_args(norm, residual, x))


def bound_int8_ffn(up: SparseInt8Linear, down: SparseInt8Linear, norm: nn.LayerNorm, dtype: torch.dtype):
    """``int8_ffn(x, up, down, norm)`` for inputs of ``dtype`` as a function of ``x`` alone, the
    op's other arguments read now (current while ``up._call_state()``, ``down._call_state()`` and
    ``norm``'s parameters and ``eps`` stay the same objects); None where :func:`ffn_mismatch`
    names a reason, ``up`` has SmoothQuant factors, or a bias or ``norm``'s parameters are in
    another dtype or shape."""
    if ffn_mismatch(up, down) is not None or up._buffers["smooth"] is not None or type(norm) is not nn.LayerNorm:
        return None
    u, d = up._buffers, down._buffers
    w, b = norm._parameters.get("weight"), norm._parameters.get("bias")
    if (w is None or b is None or w.dtype != dtype or b.dtype != dtype or w.shape != (down.out_features,)
            or b.shape != (down.out_features,) or tuple(norm.normalized_shape) != (down.out_features,)):
        return None
    if any(t is not None and t.dtype != dtype for t in (u["bias"], d["bias"])):
        return None
    args = (u["values"], u["weight_scale"], u["weight_sum"], u["crow_indices"], u["col_indices"], u["bias"],
            up._op_shape, up._op_block, d["values"], d["weight_scale"], d["weight_sum"], d["crow_indices"],
            d["col_indices"], d["bias"], down._op_shape, down._op_block, up.act_quant, up._activation, w, b,
            norm.eps)
    return lambda x: _BSR_INT8_FFN(x, *args)


def bound_add_layer_norm(linear: nn.Module, norm: nn.Module, dtype: torch.dtype):
    """``add_layer_norm(linear(x), residual, norm.weight, norm.bias, norm.eps)`` for inputs of
    ``dtype`` as a function of ``(x, residual)``, one ``sparsebert::bsr_int8_linear_add_layer_norm``
    with its other arguments read now (current while ``linear._call_state()`` and ``norm``'s
    parameters and ``eps`` stay the same objects); None unless ``linear`` is a
    :class:`SparseInt8Linear` or a dynamic :class:`Int8Linear` with inputs whose forward is its op
    alone (``_bound_forward``) with no activation and ``norm`` an ``nn.LayerNorm`` over its outputs
    with weight and bias in ``dtype``. A dense layer runs as the block-sparse op on its own packing:
    one block of 32 outputs by every input per block row, every block stored (as ``int8_linear``
    runs it), so the result is ``int8_linear``'s bit for bit."""
    if (type(linear) not in (SparseInt8Linear, Int8Linear) or linear._bound_forward(dtype) is None
            or linear.activation != "none"):
        return None
    if type(linear) is Int8Linear and (linear.weight_only or linear.in_features == 0):
        return None
    if type(norm) is not nn.LayerNorm or tuple(norm.normalized_shape) != (linear.out_features,):
        return None
    w, b = norm._parameters.get("weight"), norm._parameters.get("bias")
    if w is None or b is None or w.dtype != dtype or b.dtype != dtype:
        return None
    buf = linear._buffers
    if type(linear) is SparseInt8Linear:
        args = (buf["values"], buf["weight_scale"], buf["weight_sum"], buf["crow_indices"], buf["col_indices"],
                buf["bias"], linear._op_shape, linear._op_block, linear.act_quant)
    else:
        weight = buf["weight"]
        nb = weight.shape[0]
        crow = torch.arange(nb + 1, dtype=torch.int32, device=weight.device)
        col = torch.zeros(nb, dtype=torch.int32, device=weight.device)
        args = (weight, buf["weight_scale"], buf["weight_sum"], crow, col, buf["bias"], linear._op_shape,
                [DENSE_BLOCK_ROWS, linear.in_features], linear.act_quant)
    eps = norm.eps
    return lambda x, residual: _BSR_INT8_LINEAR_ADD_LAYER_NORM(x, *args, residual, w, b, eps)


def _norm_args(norm: nn.LayerNorm | None, residual: Tensor, x: Tensor) -> tuple:
    if norm is None:
        return ()
    if residual is not x:
        raise ValueError("int8_ffn with norm: up has SmoothQuant factors, so its input is not the residual")
    return norm.weight, norm.bias, norm.eps
