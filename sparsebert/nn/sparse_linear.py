"""``SparseLinear``: a drop-in ``nn.Linear`` whose weight is block-sparse."""

from __future__ import annotations


import torch
from torch import Tensor, nn

from .. import ops
from ._buffers import (
    check_move,
    check_spec,
    dtype_from_name,
    dtype_name,
    placeholder_bsr,
    resize_to_checkpoint,
    warn_if_blocks_do_not_match,
)
from ..ops.bsr_format import (
    PACKED_DTYPES,
    bsr_sparsity,
    k_pack,
    bsr_to_dense,
    check_block_size,
    pack_bsr,
    relayout_values,
    validate_bsr,
)

__all__ = ["SparseLinear"]

BACKENDS = ("kernel", "reference")


# The op, called from forward with its arguments already in the schema's types (see
# sparsebert.nn.int8_linear: nn.Module's buffer lookup and the wrapper's checks cost more than a
# small layer's kernel).
_BSR_LINEAR = torch.ops.sparsebert.bsr_linear.default


class SparseLinear(nn.Module):
    """``y = x @ W.T + bias`` with ``W`` stored as BSR blocks of ``block_size``.

    Build one with :meth:`from_dense` from an ``nn.Linear`` whose weight is already pruned
    (see :func:`sparsebert.prune.block_magnitude_mask`). The packed weight lives in buffers
    (``values``, ``crow_indices``, ``col_indices``), so ``state_dict()``, ``load_state_dict()``
    and ``.to(...)`` work as for any module; ``.to(torch.bfloat16)`` repacks the values into the
    bf16 layout.

    ``backend``: ``"kernel"`` (default) runs ``sparsebert.ops.bsr_linear``, whose device
    implementation the dispatcher picks; ``"reference"`` runs the pure-torch definition. It is
    chosen once, here, and a kernel failure is never turned into a fallback.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        values: Tensor,
        crow_indices: Tensor,
        col_indices: Tensor,
        bias: Tensor | None = None,
        block_size: tuple[int, int] = (32, 32),
        backend: str = "kernel",
    ):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.block_size = check_block_size(block_size)
        self.in_features = in_features
        self.out_features = out_features
        self._op_shape, self._op_block = [out_features, in_features], list(self.block_size)
        self.backend = backend
        validate_bsr(values, crow_indices, col_indices, (out_features, in_features), self.block_size)
        if bias is not None:
            if bias.shape != (out_features,):
                raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
            if bias.dtype != values.dtype:
                raise ValueError(f"bias dtype {bias.dtype} differs from the weight dtype {values.dtype}")
        self.register_buffer("values", values)
        self.register_buffer("crow_indices", crow_indices)
        self.register_buffer("col_indices", col_indices)
        self.register_buffer("bias", bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear, block_size=(32, 32), backend: str = "kernel") -> "SparseLinear":
        """Converts a pruned ``nn.Linear``: every block holding any nonzero is kept, the rest
        dropped, so the layer computes exactly what ``linear`` computes. Works for a Linear
        pruned with ``torch.nn.utils.prune`` too (its ``weight`` is the masked weight)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_dense expects an nn.Linear, got {type(linear).__name__}")
        block_size = check_block_size(block_size)
        weight = linear.weight.detach()
        values, crow, col = pack_bsr(weight, block_size)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        layer = cls(linear.in_features, linear.out_features, values, crow, col, bias, block_size, backend)
        warn_if_blocks_do_not_match(weight, layer.sparsity, block_size, cls.__name__)
        return layer

    def spec(self) -> dict:
        """JSON-able description of this layer's shapes and options: :meth:`from_spec` builds an
        empty layer from it that ``load_state_dict`` fills (the save manifest stores it)."""
        return {"type": type(self).__name__, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "block_size": list(self.block_size), "nnz_blocks": self.nnz_blocks,
                "dtype": dtype_name(self.values.dtype), "backend": self.backend}

    @classmethod
    def from_spec(cls, spec: dict, device=None) -> "SparseLinear":
        """An empty layer (zero weights, a placeholder pattern with ``spec["nnz_blocks"]`` blocks)
        of the shapes in ``spec``, on ``device`` (``"meta"`` allocates nothing)."""
        check_spec(spec, cls.__name__, ("in_features", "out_features", "bias", "block_size", "nnz_blocks", "dtype"))
        n, k = spec["out_features"], spec["in_features"]
        block_size = check_block_size(tuple(spec["block_size"]))
        dtype = dtype_from_name(spec["dtype"])
        crow, col = placeholder_bsr(spec["nnz_blocks"], (n, k), block_size, device)
        kp = k_pack(dtype)
        values = torch.zeros(spec["nnz_blocks"], -(-block_size[1] // kp), block_size[0], kp, dtype=dtype, device=device)
        bias = torch.zeros(n, dtype=dtype, device=device) if spec["bias"] else None
        return cls(k, n, values, crow, col, bias, block_size, spec.get("backend", "kernel"))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nnz_blocks(self) -> int:
        return self.values.shape[0]

    @property
    def sparsity(self) -> float:
        """Fraction of the ``out_features x in_features`` weight entries that are not stored."""
        return bsr_sparsity(self.crow_indices, self.col_indices, self.shape, self.block_size)

    def to_dense(self) -> Tensor:
        """The dense ``[out_features, in_features]`` weight this layer multiplies by."""
        return bsr_to_dense(self.values, self.crow_indices, self.col_indices, self.shape, self.block_size)

    def forward(self, x: Tensor) -> Tensor:
        b = self._buffers
        if self.backend == "kernel":
            return _BSR_LINEAR(x, b["values"], b["crow_indices"], b["col_indices"], b["bias"], self._op_shape,
                               self._op_block)
        return ops.bsr_linear_reference(x, b["values"], b["crow_indices"], b["col_indices"], b["bias"], self.shape,
                                        self.block_size)

    def _apply(self, fn, recurse=True):
        # `.to(dtype)` casts `values` element-wise; the k-pair packing depends on the dtype
        # (kp = 1 for fp32, 2 for 16-bit), so repack after a dtype change. A dtype the kernels
        # cannot run is refused before anything changes.
        check_move(self, fn, self.values)
        super()._apply(fn, recurse)
        if self.values.dtype in PACKED_DTYPES:
            self.values = relayout_values(self.values, self.block_size, self.values.dtype)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Values saved in another dtype's packing (a bf16 checkpoint into an fp32 module) are
        # repacked; the pattern may differ from this module's (load_state_dict hands each module
        # its own shallow copy of the dict).
        keys = [prefix + n for n in ("values", "crow_indices", "col_indices")]
        if all(k in state_dict for k in keys):
            try:
                values = relayout_values(state_dict[keys[0]], self.block_size, self.values.dtype)
                validate_bsr(values, state_dict[keys[1]], state_dict[keys[2]], self.shape, self.block_size)
            except ValueError as e:
                raise ValueError(f"{type(self).__name__} {prefix.rstrip('.') or '(root)'}: {e}") from None
            state_dict[keys[0]] = values
        resize_to_checkpoint(self, state_dict, prefix, ("values", "crow_indices", "col_indices"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, block_size={self.block_size}, "
            f"sparsity={self.sparsity:.2f}, backend={self.backend!r}"
        )


