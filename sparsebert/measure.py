"""Steady-state timing, shared by the per-layer kernel choice of :func:`sparsebert.compress`,
``sparsebert bench`` and the scripts in ``benchmarks/``.

Timing rules (a VM slows down after idle gaps: a call after 100-300 ms of idle can take 4-5x
longer): no sleeps between samples; an untimed call of the same method right before each timed
one; methods interleaved round by round; medians. Cold weights: a method may rotate through
copies of its weights (``Method.copies``); the untimed call uses the copy *before* the timed
one, so the timed call finds its weights in DRAM while code, threads and activations are warm.

The per-layer timings of ``compress`` are cached in a JSON file keyed by everything a time
depends on (CPU, ISA level, threads, versions, shape, format, density), so a second
``compress`` of the same shapes measures nothing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

__all__ = ["Method", "Timing", "time_methods", "TimingCache", "cpu_model", "default_cache_path"]


@dataclass
class Method:
    """A method to time. ``run(i)`` runs it on copy ``i`` of its weights (``i < copies``)."""

    name: str
    run: Callable[[int], object]
    copies: int = 1


@dataclass
class Timing:
    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])


def time_methods(methods: list[Method], min_rounds: int = 5, max_rounds: int = 200,
                 min_seconds: float = 0.2) -> Timing:
    """Interleaved steady-state timing (see the module docstring): at least ``min_rounds``
    rounds and about ``min_seconds`` per method, at most ``max_rounds``."""
    timing = Timing({m.name: [] for m in methods})
    cursor = {m.name: 0 for m in methods}
    start = time.perf_counter()
    for rnd in range(max_rounds):
        for m in methods:
            i = cursor[m.name]
            j = (i + 1) % m.copies
            m.run(i)  # untimed: same method, other weights when cold
            t0 = time.perf_counter()
            m.run(j)
            timing.samples[m.name].append(time.perf_counter() - t0)
            cursor[m.name] = (j + 1) % m.copies
        if rnd + 1 >= min_rounds and time.perf_counter() - start >= min_seconds * len(methods):
            break
    return timing


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def default_cache_path() -> Path:
    """``$SPARSEBERT_CACHE_DIR/timings.json``, else ``$XDG_CACHE_HOME/sparsebert`` or
    ``~/.cache/sparsebert``."""
    root = os.environ.get("SPARSEBERT_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sparsebert")
    return Path(root) / "timings.json"


class TimingCache:
    """Median seconds per key, in a JSON file (``path=None``: in memory only). A missing or
    unreadable file is an empty cache; writes go through a temporary file and a rename, so a
    concurrent reader never sees half a file."""

    VERSION = 2  # 2: keys name the group of formats timed together (1's mixed runs: dropped)

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)
        self._data: dict[str, float] = {}
        self._data = self._read()

    def _read(self) -> dict[str, float]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("version") == self.VERSION and isinstance(raw.get("timings"), dict):
                return {k: float(v) for k, v in raw["timings"].items()}
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        return {}

    @staticmethod
    def key(**parts) -> str:
        from ._extension import active_isa, int8_dot
        from ._version import __version__

        machine = {"cpu": cpu_model(), "isa": active_isa(), "int8_dot": int8_dot(), "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "sparsebert": __version__}
        return json.dumps({**machine, **parts}, sort_keys=True)

    def get(self, key: str) -> float | None:
        return self._data.get(key)

    def put(self, key: str, seconds: float) -> None:
        self._data[key] = seconds

    def save(self) -> None:
        """Merges with what another process wrote meanwhile and writes; a cache that cannot be
        written is a warning (the timings of this run stay in memory), not a failure."""
        if self.path is None:
            return
        try:
            self._data = {**self._read(), **self._data}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".timings.")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": self.VERSION, "timings": self._data}, f)
            os.replace(tmp, self.path)
        except OSError as e:
            warnings.warn(f"sparsebert: cannot write the timing cache {str(self.path)!r} ({e}); set "
                          "SPARSEBERT_CACHE_DIR to a writable directory", UserWarning, stacklevel=2)
