"""Freed memory stays in the process for the next forward.

A forward of a BERT allocates large temporaries (the FFN activations of a batch of 32 x 128 tokens
of BERT-base are 48 MiB each) and frees them before the next one. With glibc's defaults, blocks
above its mmap threshold (dynamic, at most 32 MiB) are mapped fresh on every allocation and
returned to the OS on free, so each forward takes new pages from the OS (page faults and zeroing:
on a 2-core Zen 5, ~74,000 faults per 32 x 128 forward of the 90%-sparse INT8 BERT-base, which
runs 1.15x faster without them; benchmarks/bench_memory.py).
Inference engines plan their memory once per input shape; here the same effect comes from telling
the allocator to keep what is freed: blocks under ``mmap_threshold`` come from the heap and free
heap space up to ``trim_threshold`` is kept, so a warm forward takes no new pages.

:func:`sparsebert.compress` and :func:`sparsebert.load` call :func:`keep_freed_memory` (set
``SPARSEBERT_KEEP_FREED_MEMORY=0`` in the environment to leave the allocator alone). It is a
process-wide setting of the C library's allocator (glibc ``mallopt``): the cost is that up to
``trim_threshold`` of freed memory stays resident instead of going back to the OS. On a C library
other than glibc it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory", "ENV"]

ENV = "SPARSEBERT_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_DEFAULT = 128 * 1024  # both thresholds' static defaults
_MAX_MMAP_THRESHOLD = 32 * 2**20  # what every 64-bit glibc accepts (HEAP_MAX_SIZE / 2)


def _libc():
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None  # not glibc
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory(enabled: bool = True, mmap_threshold: int = 256 * 2**20,
                      trim_threshold: int = 1024 * 2**20) -> bool:
    """Keeps freed blocks under ``mmap_threshold`` bytes in the heap for reuse, and up to
    ``trim_threshold`` bytes of free heap resident (``enabled=False``: glibc's static defaults,
    128 KiB each). Returns True when the allocator took the setting; False on a C library other
    than glibc, or with ``SPARSEBERT_KEEP_FREED_MEMORY=0`` in the environment (then nothing is
    changed). A glibc that refuses a threshold above 32 MiB gets 32 MiB.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ValueError(f"{name} must be a positive int below 2 GiB, got {value!r}")
    if os.environ.get(ENV, "1") == "0":
        return False
    libc = _libc()
    if libc is None:
        return False
    if not enabled:
        mmap_threshold = trim_threshold = _GLIBC_DEFAULT
    ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    if not ok:
        ok = libc.mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, _MAX_MMAP_THRESHOLD)) == 1
    return ok and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
