"""Drop-in modules. They hold packed weights in buffers and call only ``sparsebert.ops``."""

from .int8_linear import Int8Linear, SparseInt8Linear, ffn_mismatch, int8_ffn, smoothing_factors
from .sparse_linear import SparseLinear
from .concat import cat_outputs, split_outputs

__all__ = ["SparseLinear", "Int8Linear", "SparseInt8Linear", "smoothing_factors", "int8_ffn", "ffn_mismatch", "cat_outputs", "split_outputs"]
