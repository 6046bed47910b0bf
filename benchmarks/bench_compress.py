#!/usr/bin/env python
"""The targets of whole-model compression, measured:

1. BERT-base shape (random weights), 90% 32x32 blocks + INT8 dynamic made by one
   ``sparsebert.compress`` call (``attention="unpadded"``), against the best configuration composed by hand from the same
   modules (every encoder Linear a SparseInt8Linear; SDPA, sparsebert or unpadded attention),
   interleaved in one run at 1x128 and 8x128; and whether ``kernel="auto"`` left any layer
   slower than dense (the report says so).
2. ``compress`` time for BERT-base with measurement: cold (empty timing cache) and warm.
3. The real MiniLM-L6 with ``int8="dynamic"`` calibrated on 64 real sentences: min cosine of
   pooled embeddings against fp32 on 256 other sentences, speed against the fp32 model at batch
   32 (real sentences, length-sorted, padded), and ``load(save(m))`` bit-equal.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import Method, fmt_ms, header, markdown_table, time_methods, write_json  # noqa: E402

import sparsebert  # noqa: E402
from sparsebert import CompressConfig, SparseInt8Linear  # noqa: E402
from sparsebert.compress import embedding_cosines  # noqa: E402
from sparsebert.data import load_minilm, split_sentences  # noqa: E402
from sparsebert.prune import block_magnitude_mask  # noqa: E402


def bert_base():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig()).eval()


def by_hand(model, attention: str | None):
    """Every encoder Linear pruned to 90% 32x32 blocks and made a SparseInt8Linear, by hand."""
    m = copy.deepcopy(model)
    for name, module in list(m.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and "encoder" in f"{name}.{child_name}":
                with torch.no_grad():
                    child.weight.mul_(block_magnitude_mask(child.weight, 0.9, (32, 32)))
                setattr(module, child_name, SparseInt8Linear.from_dense(child, (32, 32)))
    if attention == "sparsebert":
        m.set_attn_implementation("sparsebert")
    elif attention == "unpadded":
        sparsebert.use_unpadded(m)
    return m


def inputs(batch, seq, vocab=30522):
    g = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header("bench_compress: whole-model compression against its targets", {
        "command": "python benchmarks/bench_compress.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": str(args.threads),
    }))
    records = []

    # 2. compress time, cold then warm (its own timing cache, emptied first)
    base = bert_base()
    cfg = CompressConfig(sparsity=0.9, block_size=(32, 32), int8="dynamic", attention="unpadded")
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = os.path.join(cache_dir, "timings.json")
        t0 = time.perf_counter()
        auto = sparsebert.compress(copy.deepcopy(base), cfg, cache=cache)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        sparsebert.compress(copy.deepcopy(base), cfg, cache=cache)
        warm = time.perf_counter() - t0
    rep = sparsebert.report(auto)
    slower = rep.totals["slower_than_dense"]
    formats = sorted({r["format"] for r in rep})
    print("\n## compress of BERT-base (90% 32x32 + INT8 dynamic, unpadded, measured per layer)\n")
    print(markdown_table(["cold cache s", "warm cache s", "formats chosen", "layers slower than dense"],
                         [[f"{cold:.1f}", f"{warm:.1f}", ", ".join(formats), str(len(slower))]]))
    records.append(dict(case="compress_time", cold_s=cold, warm_s=warm, formats=formats, slower=slower))

    # 1. one compress call vs the best hand-composed configuration
    hands = {f"by hand, {a or 'sdpa'}": by_hand(base, a) for a in (None, "sparsebert", "unpadded")}
    methods = {"compress(...)": auto, **hands}
    rows = []
    for b, s in ((1, 128), (8, 128)):
        x = inputs(b, s)
        with torch.inference_mode():
            timing = time_methods([Method(n, lambda i, m=m: m(**x)) for n, m in methods.items()],
                                  min_rounds=args.rounds, max_rounds=args.rounds, min_seconds=0)
        best_hand = min(hands, key=timing.median)
        t_auto, t_hand = timing.median("compress(...)"), timing.median(best_hand)
        rows.append([f"{b}x{s}", fmt_ms(t_auto), f"{best_hand}: {fmt_ms(t_hand)}",
                     ", ".join(f"{n.split(', ')[1]} {fmt_ms(timing.median(n))}" for n in hands),
                     f"{t_auto / t_hand:.3f}"])
        records.append(dict(case="auto_vs_hand", batch=b, seq=s, auto_s=t_auto, best_hand=best_hand, hand_s=t_hand))
    print("\n## BERT-base, 90% 32x32 + INT8: one compress call vs composed by hand (ms, median)\n")
    print(markdown_table(["batch x seq", "compress(...)", "best by hand", "all by hand", "compress / best (<= 1.05)"],
                         rows))
    del methods, hands, auto, base

    # 3. MiniLM-L6, calibrated INT8
    model, tok = load_minilm()
    calib_s, test_s = split_sentences(64, 256)
    calib = tok(calib_s, padding=True, truncation=True, max_length=128, return_tensors="pt")
    fp32 = copy.deepcopy(model)
    q = sparsebert.compress(model, CompressConfig(int8="dynamic"), example_inputs=calib)
    cos = embedding_cosines(q, fp32, tok, test_s, batch=64).tolist()
    with tempfile.TemporaryDirectory() as d:
        sparsebert.save(q, d, tokenizer=tok)
        loaded = sparsebert.load(d)
    batch32 = sorted(test_s, key=len)[96:128]  # a length-sorted batch of 32 real sentences
    enc = tok(batch32, padding=True, return_tensors="pt")
    with torch.inference_mode():
        bit_equal = torch.equal(loaded(**enc).last_hidden_state, q(**enc).last_hidden_state)
        timing = time_methods([Method("fp32", lambda i: fp32(**enc)), Method("int8", lambda i: q(**enc))],
                              min_rounds=args.rounds * 2, min_seconds=0.5)
    cal = q.sparsebert_state["calibration"]
    mix = {}
    for r in sparsebert.report(q):
        label = r["format"] + (f" {r['act_quant']}" if r["act_quant"] else "") + (" +smooth" if r["smooth"] else "")
        mix[label] = mix.get(label, 0) + 1
    speed = timing.median("fp32") / timing.median("int8")
    print("\n## MiniLM-L6, int8='dynamic' calibrated on 64 real sentences\n")
    print(markdown_table(
        ["calibration min cos", "min cos, 256 other sentences (>= 0.999)", "batch 32 fp32 ms", "batch 32 INT8 ms",
         "speedup (> 1)", "load(save(m)) bit-equal", "layers"],
        [[f"{cal['min_cosine']:.5f}", f"{min(cos):.5f}", fmt_ms(timing.median("fp32")), fmt_ms(timing.median("int8")),
          f"{speed:.2f}x", str(bit_equal), "; ".join(f"{k}: {v}" for k, v in sorted(mix.items()))]]))
    records.append(dict(case="minilm_int8", calib_cos=cal["min_cosine"], test_min_cos=min(cos), speedup=speed,
                        bit_equal=bit_equal, layers=mix, batch=enc["input_ids"].shape))
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]}, records)


if __name__ == "__main__":
    main()
