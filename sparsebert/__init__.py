"""sparsebert: block-sparse, INT8 and fused-attention kernels behind drop-in PyTorch modules."""

from . import ops, prune
from ._extension import active_isa, detected_isa
from .nn import SparseLinear

__version__ = "0.1.0"

__all__ = ["SparseLinear", "ops", "prune", "active_isa", "detected_isa", "__version__"]
