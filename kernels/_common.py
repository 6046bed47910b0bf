"""What every Triton launcher shares: interpreter detection, device checks, tile sizes."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

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


# Shared by the matmul kernels: bounds masks are dropped when the sizes divide the tiles.
EVEN_HEURISTICS = {
    "EVEN_M": lambda a: a["M"] % a["BLOCK_M"] == 0,
    "EVEN_K": lambda a: a["K"] % a["BC"] == 0,
    "EVEN_N": lambda a: a["N"] % a["BR"] == 0,
}


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BR: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program `pid`, in groups of GROUP_M row tiles that walk the
    column tiles together, so that consecutive programs share weights in L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BR)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_rows, (pid % per_group) // group_rows


@triton.jit
def store_tile(y_ptr, y, rm, cols, M, N, stride_ym, b_ptr, HAS_BIAS: tl.constexpr, EVEN: tl.constexpr,
               GELU: tl.constexpr = False):
    """y (+ bias[cols]), then the exact GELU if asked, into rows rm, columns cols of y, in y's dtype."""
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if GELU:
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    y_ptrs = y_ptr + rm[:, None] * stride_ym + cols[None, :]
    if EVEN:
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty))
    else:
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (cols[None, :] < N))
