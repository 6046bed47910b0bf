"""sparsebert: block-sparse, INT8 and fused-attention kernels behind drop-in PyTorch modules."""

from . import ops, prune
from ._extension import active_isa, detected_isa
from .nn import Int8Linear, SparseInt8Linear, SparseLinear

__version__ = "0.1.0"

__all__ = ["SparseLinear", "Int8Linear", "SparseInt8Linear", "ops", "prune", "active_isa", "detected_isa", "__version__"]
