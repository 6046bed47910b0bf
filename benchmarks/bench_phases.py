"""What changes when a machine's speed changes under the same work: a forward of BERT-base
(90% 32x32 blocks + INT8, INT8 attention, 1x128) sampled again and again, each sample beside the
CPU's own limits measured in the same second: the INT8 vpdpbusd peak (``sparsebert._C.peak_ops``,
compute only), DRAM read bandwidth (torch.sum over 512 MiB), a sum over 8 MiB (from the threads'
L3) and a sum over 384 KiB (small enough that the two threads' fork, join and handoff weigh in).

On a VM the same forward can run at two levels for tens of seconds each. Samples are split into
a fast and a slow group at the midpoint of the forward times (when the slowest sample is 1.3x
the fastest or more) and each metric's median printed per group: which limit moved with the
forward says what the slow phase is.

    python benchmarks/bench_phases.py [--seconds 120] [--threads 2] [--json results/phases.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, keep_freed_memory_for_timing, markdown_table, write_json  # noqa: E402

import sparsebert  # noqa: E402
from sparsebert import CompressConfig, _C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = [("forward_ms", "forward ms"), ("vnni_gops", "INT8 vpdpbusd G/s"), ("dram_gbs", "DRAM GB/s"),
           ("l3_gbs", "8 MiB sum GB/s"), ("small_gbs", "384 KiB sum GB/s")]
SPLIT_RATIO = 1.3


def build_model(cache: str | None):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval()
    cfg = CompressConfig(sparsity=0.9, block_size=(32, 32), int8="dynamic", kernel="sparse", attention="unpadded",
                         attention_precision="int8")
    return sparsebert.compress(model, cfg, cache=cache or False)


def read_bandwidth(t: torch.Tensor, reps: int) -> float:
    t.sum()
    t0 = time.perf_counter()
    for _ in range(reps):
        t.sum()
    return t.numel() * t.element_size() * reps / (time.perf_counter() - t0) / 1e9


def sample(model, inputs, arrays, forwards: int) -> dict[str, float]:
    times = []
    for _ in range(forwards):
        t0 = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - t0)
    ops, secs, _ = _C.peak_ops("int8_vnni", 5_000_000)
    return {"forward_ms": statistics.median(times) * 1e3, "vnni_gops": ops / secs / 1e9,
            "dram_gbs": read_bandwidth(arrays["dram"], 2), "l3_gbs": read_bandwidth(arrays["l3"], 40),
            "small_gbs": read_bandwidth(arrays["small"], 2000)}


def split_phases(samples: list[dict]) -> tuple[list[dict], list[dict]] | None:
    """(fast, slow) at the midpoint of the forward times, or None when they spread by less than 1.3x."""
    ms = [s["forward_ms"] for s in samples]
    if not ms or max(ms) < SPLIT_RATIO * min(ms):
        return None
    mid = (min(ms) + max(ms)) / 2
    return [s for s in samples if s["forward_ms"] < mid], [s for s in samples if s["forward_ms"] >= mid]


def summary_rows(samples: list[dict]) -> list[list[str]]:
    groups = split_phases(samples)
    parts = [("all samples", samples)] if groups is None else [("fast phase", groups[0]), ("slow phase", groups[1])]
    rows = []
    for name, group in parts:
        rows.append([name, str(len(group))] + [f"{statistics.median(s[k] for s in group):.1f}" for k, _ in METRICS])
    if groups is not None:
        fast, slow = ([statistics.median(s[k] for s in g) for k, _ in METRICS] for g in groups)
        rows.append(["slow / fast", ""] + [f"{b / a:.2f}x" for a, b in zip(fast, slow)])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--forwards", type=int, default=20, help="forwards per sample (their median is the sample's)")
    p.add_argument("--cache", default=str(ROOT / "build" / "cache" / "bench_phases"),
                   help="compress cache directory ('' for none)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.threads < 1 or args.forwards < 1:
        p.error(f"--seconds, --threads and --forwards must be positive, got {args.seconds}, {args.threads}, "
                f"{args.forwards}")
    torch.set_num_threads(args.threads)
    allocator = keep_freed_memory_for_timing()
    model = build_model(args.cache)
    inputs = {"input_ids": torch.randint(1000, 20000, (1, 128)), "attention_mask": torch.ones(1, 128, dtype=torch.long)}
    arrays = {"dram": torch.ones(128 * 2**20), "l3": torch.ones(2 * 2**20), "small": torch.ones(96 * 2**10)}
    print(header("bench_phases: one forward beside the CPU's limits, sample by sample", {
        "command": "python benchmarks/bench_phases.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": "BERT-base (random weights, seed 0), 90% 32x32 blocks + INT8 dynamic, INT8 attention, unpadded; "
                 f"1x128; each sample the median of {args.forwards} forwards",
        "threads": str(args.threads), **allocator,
    }))
    samples = []
    t_start = time.time()
    with torch.inference_mode():
        for _ in range(3):
            model(**inputs)
        while time.time() - t_start < args.seconds:
            s = sample(model, inputs, arrays, args.forwards)
            s["t"] = time.time() - t_start
            samples.append(s)
            print(f"{s['t']:6.1f} s  " + "  ".join(f"{label} {s[k]:.1f}" for k, label in METRICS), file=sys.stderr,
                  flush=True)
    print()
    print(markdown_table(["samples", "n"] + [label for _, label in METRICS], summary_rows(samples)))
    if split_phases(samples) is None:
        print(f"\nThe forward times spread by less than {SPLIT_RATIO}x: one phase only in this run.")
    write_json(args.json, {"argv": sys.argv[1:] if argv is None else argv, "threads": args.threads}, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
