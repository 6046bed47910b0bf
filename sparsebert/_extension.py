"""Loads the compiled extension ``sparsebert._C`` (op schemas and CPU kernels)."""

import torch  # noqa: F401  (loads libtorch and libc10, which _C links against)

try:
    from . import _C
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "sparsebert's C++ extension (sparsebert._C) is not built or does not load: run "
        "`make install` (or `pip install --no-build-isolation -e .` with torch installed). "
        f"Cause: {e}"
    ) from e

detected_isa = _C.detected_isa
active_isa = _C.active_isa
int8_dot = _C.int8_dot

__all__ = ["detected_isa", "active_isa", "int8_dot"]
