#!/usr/bin/env python
"""The INT8 kernels on every INT8 path this CPU can run, side by side: each ISA level with the
dot-product instructions the CPU has there (``sparsebert.int8_dot``: AVX-512 VNNI, the 256-bit
VNNI of the avx2 level) and, below avx512bf16, without them (``SPARSEBERT_VNNI=0``: the int16
``vpmaddwd`` kernel of CPUs without VNNI). This is how a CPU of a lower level runs, measured on
this one: on a CPU with AVX-512 VNNI but not AVX-VNNI (Ice Lake, Zen 4) the avx2 level runs the
256-bit kernel in its EVEX encoding, the same instruction AVX-VNNI CPUs (Alder Lake and later
client cores, Sierra Forest) execute in its VEX form.

Dense ``Int8Linear`` and ``SparseInt8Linear`` (``--blocks``, pruned by block magnitude to
``--sparsity``) on BERT layer shapes, random weights, every path of a layer interleaved round by
round (``sparsebert.measure.time_methods``), medians. GOP/s count a multiply-add as 2 and, for
sparse weights, only the stored blocks.

    python benchmarks/bench_int8_paths.py [--shapes bert-base:ffn_up,bert-base:ffn_down] \\
        [--m 1,8,128,1024] [--blocks dense,32x32] [--sparsity 0.9] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_linear import SHAPES, checked_list, parse_block, parse_shape  # noqa: E402
from common import header, markdown_table, write_json  # noqa: E402

import sparsebert  # noqa: E402
from sparsebert.measure import Method, time_methods  # noqa: E402
from sparsebert.nn import Int8Linear, SparseInt8Linear  # noqa: E402
from sparsebert.prune import block_magnitude_mask  # noqa: E402

LEVELS = ("scalar", "avx2", "avx512", "avx512bf16", "amx")


def int8_paths(include_scalar: bool) -> list[tuple[str, bool]]:
    """(level, vnni) for every path this CPU runs: each supported level with VNNI as the CPU has it,
    and without it below avx512bf16 (where turning it off emulates a CPU that lacks it)."""
    best = LEVELS.index(sparsebert.detected_isa())
    paths = []
    for level in LEVELS[1 if not include_scalar else 0: best + 1]:
        if level in ("avx2", "avx512"):
            paths.append((level, False))
        paths.append((level, True))
    return paths


def path_name(level: str, vnni: bool) -> str:
    return level if vnni else f"{level}, SPARSEBERT_VNNI=0"


class _Path:
    """Sets SPARSEBERT_ISA / SPARSEBERT_VNNI for one path; read by the kernels on every call."""

    def __init__(self, level: str, vnni: bool):
        self.level, self.vnni = level, vnni

    def __enter__(self):
        self.before = {k: os.environ.get(k) for k in ("SPARSEBERT_ISA", "SPARSEBERT_VNNI")}
        os.environ["SPARSEBERT_ISA"] = self.level
        if self.vnni:
            os.environ.pop("SPARSEBERT_VNNI", None)
        else:
            os.environ["SPARSEBERT_VNNI"] = "0"
        return self

    def __exit__(self, *exc):
        for k, v in self.before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_layer(k: int, n: int, block, sparsity: float):
    lin = torch.nn.Linear(k, n)
    if block is None:
        return Int8Linear.from_dense(lin)
    with torch.no_grad():
        lin.weight.mul_(block_magnitude_mask(lin.weight, sparsity, block))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SparseInt8Linear.from_dense(lin, block)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="bert-base:ffn_up,bert-base:ffn_down",
                   help="model[:layer] list; models: " + ", ".join(SHAPES))
    p.add_argument("--m", default="1,8,128,1024", help="rows of x (tokens)")
    p.add_argument("--blocks", default="dense,32x32", help="dense and/or block sizes RxC")
    p.add_argument("--sparsity", type=float, default=0.9, help="pruned share of blocks for the sparse layers")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7, help="minimum interleaved rounds")
    p.add_argument("--scalar", action="store_true", help="also the plain C++ path (slow at large M)")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    shapes = [s for text in checked_list(p, "shapes", args.shapes, parse_shape, what="a model[:layer] of "
                                         + ", ".join(SHAPES)) for s in text]
    ms = checked_list(p, "m", args.m, int, ok=lambda v: v >= 1, what="a positive row count")
    blocks = checked_list(p, "blocks", args.blocks, lambda t: None if t == "dense" else parse_block(t),
                          what="dense or a block size RxC")
    if not 0.0 <= args.sparsity < 1.0:
        p.error(f"--sparsity must be in [0, 1), got {args.sparsity!r}")
    if args.threads < 1 or args.rounds < 1:
        p.error(f"--threads and --rounds must be positive, got {args.threads} and {args.rounds}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paths = int8_paths(args.scalar)
    dots = {}
    for level, vnni in paths:
        with _Path(level, vnni):
            dots[(level, vnni)] = sparsebert.int8_dot()

    rows = []
    with torch.inference_mode():
        for name, (k, n) in shapes:
            for block in blocks:
                layer = make_layer(k, n, block, args.sparsity)
                density = 1.0 if block is None else 1.0 - layer.sparsity
                for m in ms:
                    x = torch.randn(m, k)

                    def run(level, vnni):
                        def call(_i):
                            with _Path(level, vnni):
                                return layer(x)
                        return call

                    methods = [Method(path_name(*pth), run(*pth)) for pth in paths]
                    timing = time_methods(methods, min_rounds=args.rounds)
                    base = timing.median(path_name(*paths[0]))
                    for pth in paths:
                        ms_ = timing.median(path_name(*pth)) * 1e3
                        rows.append({"layer": name, "k": k, "n": n, "m": m,
                                     "weights": "dense" if block is None else f"{block[0]}x{block[1]} "
                                                                              f"{args.sparsity:.0%}",
                                     "path": path_name(*pth), "int8_dot": dots[pth], "ms": ms_,
                                     "vs_first": base * 1e3 / ms_, "gops": 2 * m * k * n * density / ms_ / 1e6})
    print(header("bench_int8_paths: INT8 layers on every INT8 path of this CPU", {
        "command": "python benchmarks/bench_int8_paths.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "threads": str(args.threads),
        "paths": "; ".join(f"{path_name(*pth)}: {dots[pth]}" for pth in paths),
    }))
    print()
    # One line per layer, weights and M; per path its ms and GOP/s, and each path's speedup over
    # the first one (the avx2 level without VNNI, or scalar with --scalar).
    names = [path_name(*pth) for pth in paths]
    table = {}
    for r in rows:
        table.setdefault((r["layer"], r["k"], r["n"], r["weights"], r["m"]), {})[r["path"]] = r
    cols = ["layer", "K->N", "weights", "M"] + [f"{nm} ms (GOP/s)" for nm in names] + \
           [f"{nm} vs {names[0]}" for nm in names[1:]]
    lines = []
    for (layer, k, n, weights, m), by in table.items():
        lines.append([layer, f"{k}->{n}", weights, str(m)]
                     + [f"{by[nm]['ms']:.3f} ({by[nm]['gops']:.0f})" for nm in names]
                     + [f"{by[nm]['vs_first']:.2f}x" for nm in names[1:]])
    print(markdown_table(cols, lines))
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
