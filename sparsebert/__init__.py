"""sparsebert: block-sparse, INT8 and fused-attention kernels behind drop-in PyTorch modules."""

from . import ops, prune
from ._extension import active_isa, detected_isa
from .nn import Int8Linear, SparseInt8Linear, SparseLinear

__version__ = "0.1.0"


def use_unpadded(model, enabled: bool = True):
    """Runs a BERT-family Hugging Face model's encoder on packed tokens (no padding work); see
    :func:`sparsebert.hf.use_unpadded`. Needs transformers; imports ``sparsebert.hf``, which also
    registers the ``"sparsebert"`` attention implementation."""
    from .hf import use_unpadded as _use_unpadded

    return _use_unpadded(model, enabled)


__all__ = ["SparseLinear", "Int8Linear", "SparseInt8Linear", "ops", "prune", "active_isa", "detected_isa", "use_unpadded", "__version__"]
