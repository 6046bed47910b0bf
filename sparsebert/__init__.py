"""sparsebert: block-sparse, INT8 and fused-attention kernels behind drop-in PyTorch modules,
and the model level around them: compress a Hugging Face BERT in one call, report, save, load."""

import importlib.util as _importlib_util

from ._version import TORCH_RANGE as _TORCH_RANGE, __version__


def _check_torch() -> None:
    import torch

    try:
        version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    except ValueError:  # pragma: no cover - a torch without a numeric version
        return
    lo, hi = _TORCH_RANGE
    if not lo <= version < hi:
        raise ImportError(
            f"sparsebert {__version__} supports torch >={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}, but torch "
            f"{torch.__version__} is installed: install a torch in that range (pip install 'torch==2.13.0')"
        )


_check_torch()

from . import memory, ops, prune  # noqa: E402
from ._extension import active_isa, detected_isa, int8_dot  # noqa: E402
from .nn import Int8Linear, SparseInt8Linear, SparseLinear  # noqa: E402
from .compress import (  # noqa: E402
    CompressConfig, compress, decompress, fuse_activations, is_compressed, unfuse_activations,
)
from .report import print_report, report  # noqa: E402
from .serialize import load, save  # noqa: E402
from .memory import keep_freed_memory  # noqa: E402
from .recover import Recipe, recover  # noqa: E402

if _importlib_util.find_spec("transformers") is not None:
    # Registers the "sparsebert" attention implementation and transformers' quantizer entry, so
    # that from_pretrained / save_pretrained of sparsebert models point to load / save.
    from . import hf  # noqa: E402,F401


def use_unpadded(model, enabled: bool = True):
    """Runs a BERT-family Hugging Face model's encoder on packed tokens (no padding work); see
    :func:`sparsebert.hf.use_unpadded`. Needs transformers; imports ``sparsebert.hf``, which also
    registers the ``"sparsebert"`` attention implementation."""
    from .hf import use_unpadded as _use_unpadded

    return _use_unpadded(model, enabled)


__all__ = [
    "SparseLinear", "Int8Linear", "SparseInt8Linear", "ops", "prune", "active_isa", "detected_isa", "int8_dot",
    "use_unpadded",
    "CompressConfig", "compress", "decompress", "is_compressed", "report", "print_report", "save", "load",
    "keep_freed_memory", "recover", "Recipe", "__version__",
]
