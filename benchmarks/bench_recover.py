#!/usr/bin/env python
"""Seconds per ``sparsebert.recover`` step on the real MiniLM-L6 and Rotten Tomatoes sentences,
for the ways a step can be run: batches of a plain shuffle or grouped by length
(``Recipe.group_by_length``), fp32 or bfloat16 autocast (``Recipe.bf16``).

Each run prunes a copy of MiniLM-L6 with a 2-class head to 90% of 32x32 blocks while distilling
from the unpruned copy, on ``--examples`` training sentences (``--steps`` steps of 32): the
steps of the first epoch run the teacher, the later ones reuse its cached logits, and the table
gives the median seconds per step of both phases. Configurations are interleaved round by round
(``--rounds``); the first step of a run (set-up) is not counted.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import header, markdown_table, write_json  # noqa: E402

from sparsebert.recover import Recipe, encode, recover  # noqa: E402

CONFIGS = {  # name: Recipe fields
    "shuffle-fp32": dict(group_by_length=False, bf16=False),  # batches of a plain shuffle
    "bylen-fp32": dict(group_by_length=True, bf16=False),  # grouped by length
    "bylen-bf16": dict(group_by_length=True, bf16=True),  # grouped by length, bfloat16 autocast
}


class _TimedLog(list):
    """recover's ``log``: one entry per finished step, stamped with the time it finished."""

    def append(self, entry):
        entry["t"] = time.perf_counter()
        super().append(entry)


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=_positive(int), default=1024, help="training sentences (an epoch of steps)")
    p.add_argument("--steps", type=_positive(int), default=44, help="steps per run (more than an epoch: both phases)")
    p.add_argument("--rounds", type=_positive(int), default=3)
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated, of: {', '.join(CONFIGS)}")
    p.add_argument("--threads", type=_positive(int), default=2)
    p.add_argument("--json", default=None)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    if bad or not names:
        parser().error(f"--configs: unknown {bad[0]!r} (known: {', '.join(CONFIGS)})" if bad else "--configs: none")
    epoch = -(-args.examples // 32)
    if args.steps <= epoch + 1:
        parser().error(f"--steps {args.steps} must exceed an epoch ({epoch} steps of 32) by 2 to time cached steps")
    torch.set_num_threads(args.threads)

    import bench_accuracy
    from transformers import AutoTokenizer

    from sparsebert.data import minilm_path

    texts = bench_accuracy.split(bench_accuracy.DATASETS["movies"](), 0)[0][: args.examples]
    data = encode(AutoTokenizer.from_pretrained(minilm_path()), [t for t, _ in texts], [y for _, y in texts])
    teacher = bench_accuracy.base_model(0, 2).eval()
    samples = {c: {"teacher": [], "cached": []} for c in names}
    for r in range(args.rounds):
        for c in names:
            student = copy.deepcopy(teacher)
            log = _TimedLog()
            recipe = Recipe(sparsity=0.9, block_size=(32, 32), steps=args.steps, lr=1e-4, seed=r, **CONFIGS[c])
            recover(student, teacher, data, recipe, progress=False, log=log)
            for i in range(1, len(log)):
                phase = "teacher" if log[i]["step"] < epoch else "cached"
                samples[c][phase].append(log[i]["t"] - log[i - 1]["t"])
            print(f"round {r + 1}/{args.rounds}: {c}", file=sys.stderr)
    rows = []
    base = statistics.median(samples[names[0]]["cached"])
    for c in names:
        t, k = statistics.median(samples[c]["teacher"]), statistics.median(samples[c]["cached"])
        rows.append({"config": c, "teacher_s": t, "cached_s": k, "speedup_vs_first": base / k})
    print(header("bench_recover: seconds per recover step, MiniLM-L6, Rotten Tomatoes sentences", {
        "command": "python benchmarks/bench_recover.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "threads": str(args.threads),
        "run": f"{args.examples} sentences ({epoch} steps of 32 an epoch), {args.steps} steps per run, 90% of 32x32 "
               f"blocks, distilled from the unpruned copy; {args.rounds} rounds interleaved, medians",
    }, timing="wall time between consecutive optimizer steps (forward, loss, backward, update) "
              "from recover's log; one whole run per configuration per round, configurations in turn; medians over "
              "the steps of every round, the first step of a run (set-up) left out"))
    print()
    print(markdown_table(["configuration", "s / step, first epoch (teacher runs)", "s / step, later epochs (cached)",
                          f"later epochs vs {names[0]}"],
                         [[r["config"], f"{r['teacher_s']:.3f}", f"{r['cached_s']:.3f}",
                           f"{r['speedup_vs_first']:.2f}x"] for r in rows]))
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
