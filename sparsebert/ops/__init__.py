"""sparsebert's ops: one public function per op, its fake function and its reference.

Importing this package loads the C++ extension, which registers every schema and the CPU
implementations with ``torch.library`` under the namespace ``sparsebert``, and registers the
CUDA implementations (Triton, ``sparsebert.kernels``; ``int8_weight_only_linear`` has none).
"""

from .. import _extension  # noqa: F401  (registers the schemas and CPU kernels)
from .attention import attention, attention_reference, attention_varlen, attention_varlen_reference
from .bsr_format import bsr_to_dense, pack_bsr
from .bsr_linear import bsr_linear, bsr_linear_reference
from .layer_norm import add_layer_norm, add_layer_norm_reference
from .int8_linear import (
    FFN_ACT_QUANT_MODES,
    bsr_int8_ffn,
    bsr_int8_ffn_reference,
    bsr_int8_linear,
    bsr_int8_linear_add_layer_norm,
    bsr_int8_linear_add_layer_norm_reference,
    bsr_int8_linear_reference,
    int8_linear,
    int8_linear_reference,
    int8_weight_only_linear,
    int8_weight_only_linear_reference,
)

from . import _cuda  # noqa: E402,F401  (CUDA implementations: the Triton launchers of sparsebert.kernels)

__all__ = [
    "bsr_linear", "bsr_linear_reference", "pack_bsr", "bsr_to_dense",
    "int8_linear", "int8_linear_reference", "bsr_int8_linear", "bsr_int8_linear_reference",
    "int8_weight_only_linear", "int8_weight_only_linear_reference",
    "bsr_int8_ffn", "bsr_int8_ffn_reference", "FFN_ACT_QUANT_MODES",
    "bsr_int8_linear_add_layer_norm", "bsr_int8_linear_add_layer_norm_reference",
    "attention", "attention_reference", "attention_varlen", "attention_varlen_reference",
    "add_layer_norm", "add_layer_norm_reference",
]
