"""Shared benchmark machinery: machine header, steady-state timing, units, table output.

The interleaved timer itself is sparsebert.measure's (shared with compress's per-layer choice);
see its docstring for the timing rules. Cold weights: each method rotates through a pool of
distinct weight copies larger than the L3 cache.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time

import torch

import sparsebert
from sparsebert.measure import Method, Timing, cpu_model, time_methods  # noqa: F401  (re-exported)


def l3_bytes() -> int:
    try:
        text = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip()
    except OSError:
        return 32 << 20
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all CPUs' time spent busy over `seconds` while this process sleeps: what other
    processes use (the load average would still count a benchmark that just finished)."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except OSError:
        return None
    return (busy1 - busy0) / max(1, total1 - total0)


TIMING = "median of interleaved rounds, each timed call right after an untimed one"


def header(title: str, extra: dict[str, str] | None = None, timing: str = TIMING) -> str:
    """The run's header lines; ``timing`` says how the benchmark times (the default: the interleaved
    timer of sparsebert.measure)."""
    busy = cpu_busy_fraction()
    quiet = "unknown" if busy is None else f"{busy:.0%} of CPU time used by other processes at start" + (
        "" if busy < 0.05 else " (NOT quiet: timings include contention)")
    lines = [
        f"# {title}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, L3 {l3_bytes() >> 20} MiB, "
        f"sparsebert ISA {sparsebert.detected_isa()}",
        f"- versions: sparsebert {sparsebert.__version__}, torch {torch.__version__}, "
        f"python {platform.python_version()}",
        f"- quiet machine check: {quiet}",
        f"- timing: {timing}",
    ]
    for k, v in (extra or {}).items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)


def keep_freed_memory_for_timing() -> dict[str, str]:
    """Every method of a layer benchmark runs with the allocator a compressed or loaded model runs
    with: glibc keeps freed memory (``sparsebert.keep_freed_memory``, which ``compress`` and
    ``load`` call). Without it, whether an output of several MiB comes from fresh pages (a page
    fault and zeroing per 4 KiB: ~4 ms for 12 MiB here) depended on the allocations before it, so
    the same layer measured 0.9 or 5.3 ms depending on which other shapes the run held. Call it
    before anything is timed; returns the header line."""
    if sparsebert.keep_freed_memory():
        return {"allocator": "glibc keeps freed memory (sparsebert.keep_freed_memory, as compress and load set "
                             "it): no method pays page faults for fresh output buffers"}
    return {"allocator": "sparsebert.keep_freed_memory unavailable here: large outputs may take fresh pages"}


PEAK_KINDS = {"fp32_fma": "fp32 FMA", "bf16_dot": "bf16 vdpbf16ps", "int8_vnni": "INT8 vpdpbusd",
              "bf16_amx": "bf16 AMX TDPBF16PS", "int8_amx": "INT8 AMX TDPBUSD",
              "int8_amx_loaded": "INT8 AMX TDPBUSD with 2 A + 2 B tile loads per 4"}


def cpu_peaks(threads: int, repeats: int = 5, dram_mib: int = 512) -> dict[str, float | None]:
    """The CPU's own limits on `threads` threads, each the best of `repeats` runs: operations per
    second of each peak loop of the extension (``sparsebert._C.peak_ops``: independent chains of
    one instruction on every thread; a multiply-add counts 2; None where the active ISA level
    lacks the instruction) and "dram_read", bytes per second of torch's sum over a tensor far
    larger than the caches."""
    from sparsebert import _C

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peaks: dict[str, float | None] = {}
        for kind in PEAK_KINDS:
            try:
                _C.peak_ops(kind, 1000)  # raises where the ISA level lacks it
            except ValueError:
                peaks[kind] = None
                continue
            best = 0.0
            for _ in range(repeats):
                ops, secs, _ = _C.peak_ops(kind, 5_000_000)
                best = max(best, ops / secs)
            peaks[kind] = best
        big = torch.ones(dram_mib << 18)  # float32: dram_mib MiB
        big.sum()
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            big.sum()
            best = min(best, time.perf_counter() - t0)
        peaks["dram_read"] = big.numel() * 4 / best
        del big
        return peaks
    finally:
        torch.set_num_threads(prev)


def describe_peaks(peaks: dict[str, float | None], threads: int) -> str:
    parts = [f"{label} {peaks[k] / 1e9:,.0f} G/s" for k, label in PEAK_KINDS.items() if peaks.get(k)]
    return (f"{threads} threads: " + ", ".join(parts) + f", DRAM read {peaks['dram_read'] / 1e9:.1f} GB/s "
            "(ops: a multiply-add counts 2; peaks of sparsebert._C.peak_ops, DRAM: torch.sum over 512 MiB)")


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (8 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


def cold_pool_bytes(pools: int) -> int:
    """Bytes of distinct weight copies each of `pools` methods rotates through when cold: twice
    the L3 cache, at most 1 GiB, and all pools together at most a quarter of the memory available
    (a VM may report a server's whole L3: 480 MiB on a 2-core share of a Xeon)."""
    return min(2 * l3_bytes(), 1 << 30, available_bytes() // (4 * max(1, pools)))


def copies_for(bytes_per_copy: int, cold: bool, cold_bytes: int) -> int:
    """Copies of one weight needed so that rotating through them streams from DRAM."""
    if not cold:
        return 1
    return max(2, math.ceil(cold_bytes / max(1, bytes_per_copy)))


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_json(path: str | None, meta: dict, rows: list[dict]) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
