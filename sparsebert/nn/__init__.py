"""Drop-in modules. They hold packed weights in buffers and call only ``sparsebert.ops``."""

from .sparse_linear import SparseLinear

__all__ = ["SparseLinear"]
