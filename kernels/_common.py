"""What every Triton launcher shares: interpreter detection, device checks, tile sizes."""

from __future__ import annotations

import os

import torch
import triton

# TRITON_INTERPRET=1 (read when the kernels are defined, as triton.jit does) runs every kernel in
# Triton's interpreter on CPU tensors: how the kernels are tested on machines without a GPU.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(op: str, *tensors: torch.Tensor | None) -> None:
    """CUDA tensors (or CPU tensors under the interpreter), all on one device, and a Triton that
    can launch there: otherwise a clear error naming the constraint."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    (device,) = devices
    if device.type == "cpu" and INTERPRET:
        return
    if device.type != "cuda":
        raise ValueError(
            f"{op}: the Triton kernels take CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"
        )
    try:
        triton.runtime.driver.active.get_current_target()
    except Exception as exc:  # no usable driver: say so instead of failing inside a launch
        raise RuntimeError(f"{op}: Triton cannot launch kernels on this machine ({exc})") from exc


def next_pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(int(n)))


def allow_tf32() -> bool:
    """fp32 matmuls use TF32 tensor cores when torch allows it for CUDA matmuls."""
    return bool(torch.backends.cuda.matmul.allow_tf32)
