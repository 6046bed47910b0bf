"""The GPU path (Triton kernels behind the same ops) against cuBLAS dense, torch's Triton BSR
matmul, torch._int_mm and F.scaled_dot_product_attention, same run. Runs wherever a CUDA
device exists; on a machine without one it says so and exits (GPU speed is not measured here).

    python benchmarks/bench_gpu.py --device cuda [--json results/gpu.json]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sparsebert  # noqa: E402,F401
from common import fmt_ms, markdown_table, write_json  # noqa: E402
from sparsebert.ops import add_layer_norm, attention, bsr_linear, int8_linear, pack_bsr  # noqa: E402
from sparsebert.ops.int8_format import pack_int8_dense, quantize_symmetric, weight_sum  # noqa: E402
from sparsebert.prune import block_magnitude_mask  # noqa: E402

SHAPES = {"ffn_up": (3072, 768), "ffn_down": (768, 3072)}


def bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3


def linear_rows(device, tokens, sparsity):
    rows, recs = [], []
    for name, (n, k) in SHAPES.items():
        for dtype in (torch.float16, torch.bfloat16):
            w = torch.randn(n, k)
            w = (w * block_magnitude_mask(w, sparsity, (32, 32))).to(dtype)
            vals, crow, col = (t.to(device) for t in pack_bsr(w, (32, 32)))
            wd = w.to(device)
            w_bsr = wd.to_sparse_bsr((32, 32))
            for m in tokens:
                x = torch.randn(m, k, dtype=dtype, device=device)
                t_dense = bench(lambda: F.linear(x, wd))
                t_bsr_torch = bench(lambda: (w_bsr @ x.t()).t())
                t_ours = bench(lambda: bsr_linear(x, vals, crow, col, None, (n, k), (32, 32)))
                recs.append(dict(op="bsr_linear", shape=name, dtype=str(dtype), m=m, cublas_s=t_dense,
                                 torch_bsr_s=t_bsr_torch, sparsebert_s=t_ours))
                rows.append([f"bsr_linear {sparsity:.0%}", name, str(dtype).split(".")[1], str(m), fmt_ms(t_dense),
                             fmt_ms(t_bsr_torch), fmt_ms(t_ours), f"{t_dense / t_ours:.2f}x"])
        q_w, scale = quantize_symmetric(torch.randn(n, k))
        weight, ws = pack_int8_dense(q_w).to(device), weight_sum(q_w).to(device)
        scale = scale.to(device)
        wt = q_w.t().contiguous().to(device)
        w16 = q_w.to(device=device, dtype=torch.float16)
        for m in tokens:
            x = torch.randn(m, k, dtype=torch.float16, device=device)
            xi = torch.randint(-127, 127, (m, k), dtype=torch.int8, device=device)
            t_dense = bench(lambda: F.linear(x, w16))
            t_int_mm = bench(lambda: torch._int_mm(xi, wt))
            t_ours = bench(lambda: int8_linear(x, weight, scale, ws, None, (n, k)))
            recs.append(dict(op="int8_linear", shape=name, m=m, cublas_fp16_s=t_dense, int_mm_s=t_int_mm,
                             sparsebert_s=t_ours))
            rows.append(["int8_linear", name, "fp16 in", str(m), fmt_ms(t_dense), f"_int_mm {fmt_ms(t_int_mm)}",
                         fmt_ms(t_ours), f"{t_dense / t_ours:.2f}x"])
    table = markdown_table(["op", "shape", "dtype", "M", "cuBLAS dense ms", "torch BSR / _int_mm ms",
                            "sparsebert ms", "vs cuBLAS"], rows)
    return table, recs


def attention_rows(device):
    rows, recs = [], []
    for dtype in (torch.float16, torch.bfloat16):
        for b, s in ((8, 512), (32, 128)):
            q, k, v = (torch.randn(b, 12, s, 64, dtype=dtype, device=device) for _ in range(3))
            keep = torch.arange(s, device=device)[None, :] < torch.linspace(s / 16, s, b, device=device)[:, None]
            t_sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :]))
            t_ours = bench(lambda: attention(q, k, v, keep))
            recs.append(dict(op="attention", dtype=str(dtype), batch=b, seq=s, sdpa_s=t_sdpa, sparsebert_s=t_ours))
            rows.append([str(dtype).split(".")[1], f"{b}x{s}", fmt_ms(t_sdpa), fmt_ms(t_ours), f"{t_sdpa / t_ours:.2f}x"])
    # fp32 inputs at precision="bf16": bf16 tensor-core dots inside, fp32 in and out
    for b, s in ((8, 512), (32, 128)):
        q, k, v = (torch.randn(b, 12, s, 64, device=device) for _ in range(3))
        keep = torch.arange(s, device=device)[None, :] < torch.linspace(s / 16, s, b, device=device)[:, None]
        t_sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :]))
        t_ours = bench(lambda: attention(q, k, v, keep, precision="bf16"))
        recs.append(dict(op="attention", dtype="float32, precision=bf16", batch=b, seq=s, sdpa_s=t_sdpa,
                         sparsebert_s=t_ours))
        rows.append(["float32 (precision=bf16; SDPA fp32)", f"{b}x{s}", fmt_ms(t_sdpa), fmt_ms(t_ours),
                     f"{t_sdpa / t_ours:.2f}x"])
    return markdown_table(["dtype", "batch x seq (padded)", "SDPA ms", "sparsebert ms", "vs SDPA"], rows), recs


def layer_norm_rows(device):
    rows, recs = [], []
    for dtype in (torch.float32, torch.bfloat16):
        for t in (1024, 16384):
            x, r = (torch.randn(t, 768, dtype=dtype, device=device) for _ in range(2))
            w, bias = torch.ones(768, dtype=dtype, device=device), torch.zeros(768, dtype=dtype, device=device)
            t_torch = bench(lambda: F.layer_norm(x + r, (768,), w, bias, 1e-12))
            t_ours = bench(lambda: add_layer_norm(x, r, w, bias, 1e-12))
            recs.append(dict(op="add_layer_norm", dtype=str(dtype), tokens=t, torch_s=t_torch, sparsebert_s=t_ours))
            rows.append([str(dtype).split(".")[1], f"{t}x768", fmt_ms(t_torch), fmt_ms(t_ours),
                         f"{t_torch / t_ours:.2f}x"])
    return markdown_table(["dtype", "tokens x hidden", "torch add + layer_norm ms", "sparsebert ms", "vs torch"],
                          rows), recs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda"], help="the GPU path runs on CUDA devices only")
    p.add_argument("--tokens", default="128,1024,4096")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU path is verified by the interpreter tests and make gpu-check, "
              "its speed is not measured on this machine")
        return 0
    device = torch.device(args.device)
    print(f"# sparsebert GPU path on {torch.cuda.get_device_name(device)} (torch {torch.__version__})\n")
    table, recs = linear_rows(device, [int(t) for t in args.tokens.split(",")], args.sparsity)
    print(table, "\n")
    att_table, att_recs = attention_rows(device)
    print(att_table, "\n")
    ln_table, ln_recs = layer_norm_rows(device)
    print(ln_table)
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]}, recs + att_recs + ln_recs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
