"""Triton kernels for CUDA, shipped as ``sparsebert.kernels``: one file per op, each with a
launcher that takes the op's own arguments, so ``sparsebert.kernels.bsr_linear(...)`` equals
``torch.ops.sparsebert.bsr_linear(...)`` on CUDA tensors (where the ops dispatch to them).

Verified without a GPU: ``TRITON_INTERPRET=1`` runs every launcher on CPU tensors (the tests),
and ``python -m sparsebert.kernels.gpu_check`` lowers every kernel and autotune configuration to
PTX and cubin for sm_80 and sm_90 (``make gpu-check``). GPU speed is not measured here.
"""

from .attention import attention, attention_varlen
from .bsr_linear import bsr_linear
from .int8_linear import bsr_int8_linear, int8_linear, quantize_per_token
from .layer_norm import add_layer_norm

__all__ = ["bsr_linear", "int8_linear", "bsr_int8_linear", "quantize_per_token", "attention", "attention_varlen",
           "add_layer_norm"]
