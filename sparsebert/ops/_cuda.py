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

for _op, _impl in IMPLS.items():
    torch.library.register_kernel(f"sparsebert::{_op}", "cuda", _impl)
