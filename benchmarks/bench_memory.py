"""Fresh pages per forward: BERT-base, 90% 32x32 blocks + INT8, unpadded, with and without
sparsebert.keep_freed_memory (SPARSEBERT_KEEP_FREED_MEMORY=1 / 0), each in its own process,
alternating process by process; page faults and milliseconds per warm forward (medians).

    python benchmarks/bench_memory.py [--batch 32] [--rounds 2] [--forwards 5]
"""

import argparse
import os
import statistics
import subprocess
import sys

CHILD = """
import resource, sys, time, torch
from transformers import BertConfig, BertModel
from sparsebert import CompressConfig, compress
batch, forwards = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = BertModel(BertConfig()).eval()
compress(model, CompressConfig(sparsity=0.9, int8="dynamic", attention="unpadded"))
ids = torch.randint(1000, 20000, (batch, 128))
mask = torch.ones_like(ids)
with torch.inference_mode():
    for _ in range(2):
        model(input_ids=ids, attention_mask=mask)
    for _ in range(forwards):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        ms = 1e3 * (time.perf_counter() - t0)
        print(ms, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--forwards", type=int, default=5)
    args = p.parse_args()
    results = {"1": [], "0": []}
    for _ in range(args.rounds):
        for keep in ("1", "0"):
            env = {**os.environ, "SPARSEBERT_KEEP_FREED_MEMORY": keep}
            r = subprocess.run([sys.executable, "-c", CHILD, str(args.batch), str(args.forwards)], env=env,
                               capture_output=True, text=True, check=True)
            results[keep] += [tuple(float(v) for v in line.split()) for line in r.stdout.strip().splitlines()]
    import torch

    from sparsebert.measure import cpu_model

    print(f"bench_memory: BERT-base 90% 32x32 + INT8, unpadded, {args.batch} x 128 tokens, {cpu_model()}, "
          f"{torch.get_num_threads()} threads, {args.rounds} alternating processes x {args.forwards} warm forwards")
    print("| allocator | ms per forward (median) | page faults per forward (median) |")
    print("|---|---|---|")
    med = {}
    for keep, label in (("0", "glibc defaults (SPARSEBERT_KEEP_FREED_MEMORY=0)"), ("1", "keep_freed_memory")):
        ms = statistics.median(r[0] for r in results[keep])
        faults = statistics.median(r[1] for r in results[keep])
        med[keep] = ms
        print(f"| {label} | {ms:.0f} | {faults:.0f} |")
    print(f"same-run ratio: {med['0'] / med['1']:.2f}x faster with keep_freed_memory")


if __name__ == "__main__":
    main()
