"""Fused attention against eager softmax attention and F.scaled_dot_product_attention, same run.

Op rows: q, k, v [B, 12, S, 64], fp32 and bf16, B in {1, 8}, S in {128, 384, 512}; sparsebert
at three precisions ("precision=bf16": the matmuls on bf16-rounded inputs, bf16 dot products where
the CPU has them; "precision=int8": q, k, v and the probabilities in 8 bits, vpdpbusd where the CPU
has AVX-512 VNNI). "padded"
rows give every method the same key-padding mask, with sequence lengths spread evenly over
S/16 .. S (B = 8: 32, 100, ..., 512 at S = 512; B = 1: the midpoint, 17 S / 32); eager and SDPA
get it as the boolean [B, 1, 1, S] mask transformers would build, sparsebert as the [B, S]
padding mask. "full" rows have no mask.

Encoder row: BERT-base shapes (12 layers, hidden 768, 12 heads, random weights: speed does not
depend on the values), batch 8 with lengths spread evenly over 32..512 and padded to 512;
Hugging Face's own padded path (attn_implementation "sdpa", its default) against
sparsebert.use_unpadded. The outputs are compared on the real tokens.

    python benchmarks/bench_attention.py [--threads 2] [--json results/attention.json]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sparsebert  # noqa: E402
from common import (  # noqa: E402
    Method, fmt_ms, header, keep_freed_memory_for_timing, markdown_table, time_methods, write_json,
)
from sparsebert.ops import attention  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HEADS, HEAD_DIM = 12, 64


def lengths_for(batch: int, seq: int) -> torch.Tensor:
    if batch == 1:
        return torch.tensor([17 * seq // 32])
    return torch.linspace(seq / 16, seq, batch).round().long()


def eager_attention(q, k, v, mask):
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
    return torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def op_rows(dtypes, batches, seqs):
    rows, records = [], []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for b in batches:
            for s in seqs:
                q, k, v = (torch.randn(b, HEADS, s, HEAD_DIM).to(dtype) for _ in range(3))
                for padded in (False, True):
                    if padded:
                        keep = torch.arange(s)[None, :] < lengths_for(b, s)[:, None]
                        bool4d = keep[:, None, None, :]
                    else:
                        keep = bool4d = None
                    ours = attention(q, k, v, keep)
                    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bool4d)
                    rows_kept = slice(None) if keep is None else keep[:, None, :, None].expand_as(ref)
                    err = (ours.float() - ref)[rows_kept].abs().max().item()
                    err_bf = (attention(q, k, v, keep, precision="bf16").float() - ref)[rows_kept].abs().max().item()
                    err_i8 = (attention(q, k, v, keep, precision="int8").float() - ref)[rows_kept].abs().max().item()
                    timing = time_methods([
                        Method("eager", lambda i: eager_attention(q, k, v, bool4d)),
                        Method("sdpa", lambda i: F.scaled_dot_product_attention(q, k, v, attn_mask=bool4d)),
                        Method("sparsebert", lambda i: attention(q, k, v, keep)),
                        Method("sparsebert_bf16", lambda i: attention(q, k, v, keep, precision="bf16")),
                        Method("sparsebert_int8", lambda i: attention(q, k, v, keep, precision="int8")),
                    ])
                    te, tsd, tsb, tbf, ti8 = (timing.median(n) for n in ("eager", "sdpa", "sparsebert", "sparsebert_bf16",
                                                                          "sparsebert_int8"))
                    tokens = int(keep.sum()) if keep is not None else b * s
                    rec = dict(dtype=dtype_name, batch=b, seq=s, padded=padded, real_tokens=tokens,
                               eager_s=te, sdpa_s=tsd, sparsebert_s=tsb, vs_eager=te / tsb, vs_sdpa=tsd / tsb,
                               max_abs_err_vs_fp32_sdpa=err, sparsebert_bf16_s=tbf, bf16_vs_sdpa=tsd / tbf,
                               bf16_max_abs_err_vs_fp32_sdpa=err_bf, sparsebert_int8_s=ti8, int8_vs_sdpa=tsd / ti8,
                               int8_max_abs_err_vs_fp32_sdpa=err_i8)
                    records.append(rec)
                    rows.append([dtype_name, str(b), str(s), "padded" if padded else "full", str(tokens),
                                 fmt_ms(te), fmt_ms(tsd), fmt_ms(tsb), f"{te / tsb:.2f}x", f"{tsd / tsb:.2f}x",
                                 f"{err:.1e}", fmt_ms(tbf), f"{tsd / tbf:.2f}x", f"{err_bf:.1e}", fmt_ms(ti8),
                                 f"{tsd / ti8:.2f}x", f"{err_i8:.1e}"])
    table = markdown_table(["dtype", "B", "S", "mask", "real tokens", "eager ms", "SDPA ms", "sparsebert ms",
                            "vs eager", "vs SDPA", "max abs err vs fp32 SDPA", "precision=bf16 ms", "vs SDPA",
                            "max abs err", "precision=int8 ms", "vs SDPA", "max abs err"], rows)
    return table, records


def encoder_rows(dtypes, batch: int, seq: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    base = BertModel(BertConfig()).eval()
    lengths = torch.linspace(32, seq, batch).round().long()
    keep = torch.arange(seq)[None, :] < lengths[:, None]
    ids = torch.randint(1000, 20000, (batch, seq)) * keep
    inputs = {"input_ids": ids, "attention_mask": keep.long()}
    rows, records = [], []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        padded = copy.deepcopy(base).to(dtype)
        padded.set_attn_implementation("sdpa")
        unpadded = sparsebert.use_unpadded(copy.deepcopy(base).to(dtype))
        with torch.inference_mode():
            h_pad = padded(**inputs).last_hidden_state.float()
            h_unpad = unpadded(**inputs).last_hidden_state.float()
            timing = time_methods([
                Method("padded", lambda i: padded(**inputs)),
                Method("unpadded", lambda i: unpadded(**inputs)),
            ], min_rounds=3)
        rel = ((h_unpad - h_pad)[keep].abs().max() / h_pad[keep].abs().max()).item()
        tp, tu = timing.median("padded"), timing.median("unpadded")
        records.append(dict(dtype=dtype_name, batch=batch, seq=seq, real_tokens=int(keep.sum()), hf_padded_s=tp,
                            unpadded_s=tu, speedup=tp / tu, max_rel_diff=rel))
        rows.append([dtype_name, f"{batch}x{seq}", str(int(keep.sum())), fmt_ms(tp), fmt_ms(tu), f"{tp / tu:.2f}x",
                     f"{rel:.1e}"])
    table = markdown_table(["dtype", "batch x padded length", "real tokens", "HF padded (sdpa) ms",
                            "sparsebert unpadded ms", "speedup", "max rel. diff (real tokens)"], rows)
    return table, records


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--seqs", default="128,384,512")
    p.add_argument("--encoder-dtypes", default="fp32,bf16", help="empty: skip the encoder rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for flag, text in (("dtypes", args.dtypes), ("encoder-dtypes", args.encoder_dtypes)):
        bad = [v for v in text.split(",") if v not in DTYPES and (v or flag == "dtypes")]
        if bad:
            p.error(f"--{flag}: {bad[0]!r} is not one of {', '.join(DTYPES)}")
    for flag, text in (("batches", args.batches), ("seqs", args.seqs)):
        for v in text.split(","):
            if not (v.isdigit() and int(v) >= 1):
                p.error(f"--{flag}: {v!r} is not a positive int")
    if args.threads < 1:
        p.error(f"--threads: {args.threads} is not a positive number of threads")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtypes = args.dtypes.split(",")
    allocator = keep_freed_memory_for_timing()
    print(header("sparsebert attention: fused CPU attention and the unpadded encoder", {
        "command": "python benchmarks/bench_attention.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        **allocator,
        "threads": str(args.threads),
        "op rows": f"{HEADS} heads, head_dim {HEAD_DIM}; padded: lengths spread over S/16..S, the same mask for "
                   "every method",
    }))
    print()
    table, records = op_rows(dtypes, [int(b) for b in args.batches.split(",")], [int(s) for s in args.seqs.split(",")])
    print("## attention op")
    print()
    print(table)
    enc_records = []
    if args.encoder_dtypes:
        enc_table, enc_records = encoder_rows(args.encoder_dtypes.split(","), 8, 512)
        print()
        print("## encoder: BERT-base, batch 8, lengths spread over 32..512")
        print()
        print(enc_table)
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]},
               [dict(kind="op", **r) for r in records] + [dict(kind="encoder", **r) for r in enc_records])


if __name__ == "__main__":
    main()
