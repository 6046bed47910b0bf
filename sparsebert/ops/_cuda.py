"""CUDA implementations of the op schemas: the Triton launchers of ``sparsebert.kernels``, which
take each op's own arguments. Triton is imported on the first CUDA call, so the CPU path never
needs it. The fake functions are the ops' own (shared by every device).
"""

from __future__ import annotations

import torch

# op -> launcher name in sparsebert.kernels
LAUNCHERS = {
    "bsr_linear": "bsr_linear",
    "int8_linear": "int8_linear",
    "bsr_int8_linear": "bsr_int8_linear",
    "attention": "attention",
    "attention_varlen": "attention_varlen",
    "add_layer_norm": "add_layer_norm",
}


def _launcher(op: str, name: str):
    def impl(*args):
        try:
            from .. import kernels
        except ImportError as exc:
            raise RuntimeError(f"sparsebert::{op} on CUDA runs Triton kernels: install triton==3.9.0 ({exc})") from exc
        return getattr(kernels, name)(*args)

    impl.__name__ = f"{op}_cuda"
    return impl


IMPLS = {op: _launcher(op, name) for op, name in LAUNCHERS.items()}


def _bsr_int8_ffn_cuda(x, uv, us, usum, ucrow, ucol, ub, ushape, ublock, dv, ds, dsum, dcrow, dcol, db, dshape,
                       dblock, act_quant="per_token", activation="gelu", norm_weight=None, norm_bias=None,
                       norm_eps=1e-12):
    """The two INT8 linear kernels one after the other, then add + LayerNorm (their definition)."""
    from .int8_linear import _check_ffn

    _check_ffn(ushape, dshape, act_quant, norm_weight, norm_bias)
    op = torch.ops.sparsebert.bsr_int8_linear.default
    h = op(x, uv, us, usum, ucrow, ucol, ub, ushape, ublock, act_quant, activation)
    y = op(h, dv, ds, dsum, dcrow, dcol, db, dshape, dblock, act_quant, "none")
    if norm_weight is None:
        return y
    return torch.ops.sparsebert.add_layer_norm.default(y, x, norm_weight, norm_bias, norm_eps)


IMPLS["bsr_int8_ffn"] = _bsr_int8_ffn_cuda


def _bsr_int8_linear_add_layer_norm_cuda(x, values, scale, wsum, crow, col, bias, shape, block, act_quant, residual,
                                         norm_weight, norm_bias, norm_eps):
    """The INT8 linear kernel, then add + LayerNorm (the definition)."""
    y = torch.ops.sparsebert.bsr_int8_linear.default(x, values, scale, wsum, crow, col, bias, shape, block, act_quant,
                                                     "none")
    return torch.ops.sparsebert.add_layer_norm.default(y, residual, norm_weight, norm_bias, norm_eps)


IMPLS["bsr_int8_linear_add_layer_norm"] = _bsr_int8_linear_add_layer_norm_cuda

for _op, _impl in IMPLS.items():
    torch.library.register_kernel(f"sparsebert::{_op}", "cuda", _impl)
