#!/usr/bin/env python
"""Linear-layer kernels against torch's, in the same run, on BERT shapes. Prints a markdown
table; --json writes the rows.

--suite bsr (default): block-sparse linear (sparsebert.ops.bsr_linear) against dense F.linear
and torch's own BSR matmul.
--suite int8: Int8Linear and SparseInt8Linear against dense fp32 and bf16 F.linear, torch's
dynamic INT8 (quantize_dynamic) under every engine, per-tensor and per-channel, and
torch._int_mm (the int8 GEMM alone, activations already quantized: a lower bound).

    python benchmarks/bench_linear.py                       # the README table
    python benchmarks/bench_linear.py --blocks 16x16,16x1 --sparsity 0.9 --m 128 --threads 1,2 --cache hot,cold
    python benchmarks/bench_linear.py --suite int8 --m 1,8,128,512

Run it on a quiet machine: two cores shared with a build or a test suite measure contention.
Speedups are same-run ratios of medians; GFLOP/s is "effective": the dense layer's 2*M*N*K
flops divided by the method's time.

Roofline: before timing, the CPU's own limits are measured on each thread count (the fp32 FMA,
bf16 vdpbf16ps and INT8 vpdpbusd peaks of sparsebert._C.peak_ops, at the amx level the AMX tile
multiplies' too, and DRAM read bandwidth), and each row says how close to them it runs: the
operations a kernel actually does (stored blocks only) as a share of the peak of its instruction,
and for INT8 the weight bytes it streams per second as a share of DRAM bandwidth (the bound of
small M with cold weights).
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    keep_freed_memory_for_timing,
    Method, cold_pool_bytes, copies_for, cpu_peaks, describe_peaks, fmt_ms, fmt_ratio, gflops, header, markdown_table,
    tensor_bytes, time_methods, write_json,
)

from sparsebert import Int8Linear, SparseInt8Linear  # noqa: E402
from sparsebert.ops import bsr_linear, pack_bsr  # noqa: E402
from sparsebert.prune import block_magnitude_mask  # noqa: E402

# (in_features, out_features) of the Linear layers of one encoder layer.
SHAPES = {
    "bert-base": {"qkv": (768, 2304), "attn_out": (768, 768), "ffn_up": (768, 3072), "ffn_down": (3072, 768)},
    "bert-large": {"qkv": (1024, 3072), "attn_out": (1024, 1024), "ffn_up": (1024, 4096), "ffn_down": (4096, 1024)},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_list(text, conv):
    return [conv(v) for v in text.split(",") if v]


def checked_list(parser, flag: str, text: str, conv, ok=lambda v: True, what: str = "a valid value") -> list:
    """The comma-separated values of ``--flag`` through ``conv``; an argparse error (exit 2) naming
    the first one that does not convert or that ``ok`` refuses, or saying that none was given."""
    values = []
    for raw in text.split(","):
        if not raw:
            continue
        try:
            v = conv(raw)
        except (ValueError, KeyError):
            parser.error(f"--{flag}: {raw!r} is not {what}")
        if not ok(v):
            parser.error(f"--{flag}: {raw!r} is not {what}")
        values.append(v)
    if not values:
        parser.error(f"--{flag}: no value given")
    return values


def parse_block(text):
    r, c = text.lower().split("x")
    if int(r) < 1 or int(c) < 1:
        raise ValueError(f"block {text!r} has a side below 1")
    return int(r), int(c)


def parse_shape(text):
    model, _, layer = text.partition(":")
    layers = SHAPES[model] if not layer else {layer: SHAPES[model][layer]}
    return [(f"{model}:{name}", shape) for name, shape in layers.items()]


def torch_bsr_runs(w_bsr, k, dtype) -> bool:
    """Torch has BSR matmul kernels for some dtypes only (none for bf16 on CPU)."""
    try:
        with torch.no_grad():
            torch.mm(w_bsr, torch.zeros(k, 2, dtype=dtype))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def build_weights(k, n, sparsity, block, dtype, cold, cold_bytes):
    """One pruned weight, and per method a list of distinct copies (the cold-weight pool)."""
    w = torch.randn(n, k) / k**0.5
    w = (w * block_magnitude_mask(w, sparsity, block)).to(dtype)
    bias = torch.randn(n).to(dtype)
    values, crow, col = pack_bsr(w, block)
    pools = {}
    n_dense = copies_for(tensor_bytes(w), cold, cold_bytes)
    pools["dense"] = [w] + [w.clone() for _ in range(n_dense - 1)]
    n_ours = copies_for(tensor_bytes(values, crow, col), cold, cold_bytes)
    pools["sparsebert"] = [(values, crow, col)] + [
        (values.clone(), crow.clone(), col.clone()) for _ in range(n_ours - 1)
    ]
    bsr = w.to_sparse_bsr(block)
    if torch_bsr_runs(bsr, k, dtype):
        n_bsr = copies_for(tensor_bytes(bsr.values(), bsr.crow_indices(), bsr.col_indices()), cold, cold_bytes)
        pools["torch_bsr"] = [bsr] + [bsr.clone() for _ in range(n_bsr - 1)]
    return bias, pools


def run_case(k, n, m, block, dtype, bias, pools):
    x = torch.randn(m, k).to(dtype)
    xt = x.t()
    shape = (n, k)
    dense, ours = pools["dense"], pools["sparsebert"]
    methods = [
        Method("dense", lambda i: F.linear(x, dense[i], bias), len(dense)),
        Method("sparsebert", lambda i: bsr_linear(x, *ours[i], bias, shape, block), len(ours)),
    ]
    if "torch_bsr" in pools:
        tb = pools["torch_bsr"]
        methods.append(Method("torch_bsr", lambda i: torch.mm(tb[i], xt), len(tb)))
    # Torch's sparse tensors fail under inference_mode ("Cannot set version_counter"): no_grad.
    with torch.no_grad():
        timing = time_methods(methods)
    return {name: timing.median(name) for name in timing.samples}


QD_ENGINES = ("fbgemm", "x86", "onednn")


def quantized_dynamic(linear, engine, per_channel):
    """torch's dynamic INT8 Linear for `engine` (weights packed for that engine)."""
    import torch.ao.quantization as tq

    torch.backends.quantized.engine = engine
    qconfig = tq.per_channel_dynamic_qconfig if per_channel else tq.default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.quantize_dynamic(torch.nn.Sequential(copy.deepcopy(linear)), {torch.nn.Linear: qconfig},
                                   dtype=torch.qint8)


def build_int8_pools(k, n, sparsity, block, cold, cold_bytes, pack=None):
    """Per method, distinct copies of its weights (see build_weights)."""
    linear = torch.nn.Linear(k, n)
    pruned = copy.deepcopy(linear)
    with torch.no_grad():
        pruned.weight.mul_(block_magnitude_mask(pruned.weight, sparsity, block))
    pools = {}

    def pool(name, make, nbytes):
        pools[name] = [make() for _ in range(copies_for(nbytes, cold, cold_bytes))]

    pool("fp32", lambda: linear.weight.detach().clone(), k * n * 4)
    pool("bf16", lambda: linear.weight.detach().bfloat16(), k * n * 2)
    for engine in QD_ENGINES:
        if engine not in torch.backends.quantized.supported_engines:
            continue
        for per_channel in (False, True):
            name = f"qd_{engine}_{'channel' if per_channel else 'tensor'}"
            pool(name, lambda: quantized_dynamic(linear, engine, per_channel), k * n)
    q8 = Int8Linear.from_dense(linear)
    pool("int8_mm", lambda: torch.randint(-127, 127, (k, n), dtype=torch.int8), k * n)
    pool("Int8Linear", lambda: copy.deepcopy(q8), k * n)
    wo8 = Int8Linear.from_dense(linear, weight_only=True)
    pool("Int8Linear_wo", lambda: copy.deepcopy(wo8), k * n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pruned in other blocks than it is packed in: said in the header
        sq8 = SparseInt8Linear.from_dense(pruned, pack or block)
    pool("SparseInt8Linear", lambda: copy.deepcopy(sq8), tensor_bytes(sq8.values))
    sq8_gelu = copy.deepcopy(sq8)
    sq8_gelu.activation = "gelu"  # what fuse_activations makes of an FFN up projection
    pool("SparseInt8Linear_gelu", lambda: copy.deepcopy(sq8_gelu), tensor_bytes(sq8.values))
    return linear.bias.detach(), pools


def run_int8_case(k, n, m, bias, pools):
    x = torch.randn(m, k)
    xb = x.bfloat16()
    bb = bias.bfloat16()
    xq = torch.randint(-127, 127, (m, k), dtype=torch.int8)
    methods = [
        Method("fp32", lambda i: F.linear(x, pools["fp32"][i], bias), len(pools["fp32"])),
        Method("bf16", lambda i: F.linear(xb, pools["bf16"][i], bb), len(pools["bf16"])),
        Method("int8_mm", lambda i: torch._int_mm(xq, pools["int8_mm"][i]), len(pools["int8_mm"])),
        Method("Int8Linear", lambda i: pools["Int8Linear"][i](x), len(pools["Int8Linear"])),
        Method("Int8Linear_wo", lambda i: pools["Int8Linear_wo"][i](x), len(pools["Int8Linear_wo"])),
        Method("SparseInt8Linear", lambda i: pools["SparseInt8Linear"][i](x), len(pools["SparseInt8Linear"])),
        Method("SparseInt8Linear_gelu", lambda i: pools["SparseInt8Linear_gelu"][i](x),
               len(pools["SparseInt8Linear_gelu"])),
    ]
    for name in pools:
        if name.startswith("qd_"):
            engine = name.split("_")[1]

            def run(i, name=name, engine=engine):
                torch.backends.quantized.engine = engine  # the packed weights are this engine's
                return pools[name][i](x)

            methods.append(Method(name, run, len(pools[name])))
    with torch.inference_mode():
        timing = time_methods(methods)
    return {name: timing.median(name) for name in timing.samples}


def measure_peaks(threads):
    """{threads: peaks} for each thread count, measured before anything is timed."""
    return {t: cpu_peaks(t) for t in threads}


def peak_lines(peaks):
    return {"peaks": "; ".join(describe_peaks(p, t) for t, p in peaks.items())}


def int8_peak(peaks, m, block):
    """The INT8 peak of the kernel that runs a layer of `m` rows stored in `block` blocks: AMX's
    TDPBUSD where the amx level takes it (whole 16-output B tiles, whole k-quads, at least one
    16-row A tile: the rows past the last whole tile run on AVX-512 VNNI), the vpdpbusd one
    elsewhere. Returns (ops/s or None, label)."""
    br, bc = block
    kstep = min(bc, 64)
    if peaks.get("int8_amx") and m >= 16 and br % 16 == 0 and bc % 4 == 0 and bc % kstep == 0:
        return peaks["int8_amx"], "AMX"
    return peaks.get("int8_vnni"), "VNNI"


def bf16_peak(peaks, m, k, block):
    """The bf16 peak of the kernel that runs a bf16 layer (see int8_peak): AMX's TDPBF16PS where the
    amx level takes it (bsr_linear's amx_eligible), else vdpbf16ps, else the fp32 FMA one."""
    br, bc = block
    kstep = min(bc, 32)
    if peaks.get("bf16_amx") and m >= 16 and br % 16 == 0 and bc % 2 == 0 and bc % kstep == 0 and k % kstep == 0:
        return peaks["bf16_amx"]
    return peaks.get("bf16_dot") or peaks["fp32_fma"]


def pct(value, limit):
    return "n/a" if not limit else f"{value / limit:.0%}"


def main_int8(args, shapes, ms, threads, caches, cold_bytes, argv):
    sparsity = parse_list(args.sparsity, float)[-1] if args.sparsity != DEFAULT_SPARSITY else 0.9
    block = parse_list(args.blocks, parse_block)[0]
    pack = parse_block(args.pack) if args.pack else block
    allocator = keep_freed_memory_for_timing()
    peaks = measure_peaks(threads)
    print(header("bench_linear --suite int8: INT8 linear layers vs torch fp32, bf16 and dynamic INT8", {
        "command": "python benchmarks/bench_linear.py " + " ".join(argv),
        **allocator,
        "cold weights": f"each method rotates through {cold_bytes >> 20} MiB of distinct weight copies",
        "quantize_dynamic": "torch.ao.quantization.quantize_dynamic (qint8), engines " + ", ".join(QD_ENGINES)
                            + ", per-tensor and per-channel weights; 'best' is the fastest of them in that row",
        "int8_mm": "torch._int_mm on already-quantized int8 activations (the int8 GEMM alone, a lower bound)",
        "GELU epilogue": "the SparseInt8Linear with activation='gelu' (the exact GELU in the kernel's epilogue, as "
                         "compress leaves an FFN up projection)",
        "SparseInt8Linear": f"{sparsity:.0%} of {block[0]}x{block[1]} blocks pruned by magnitude"
                            + ("" if pack == block else f", stored in {pack[0]}x{pack[1]} blocks (any block "
                                                         "holding a nonzero is stored)"),
        **peak_lines(peaks),
        "roofline columns": "Int8Linear: 2*M*N*K / time as a share of the INT8 peak of the kernel that ran it "
                            "(AMX: the TDPBUSD peak, at the amx level from 16 rows on; VNNI: the vpdpbusd one), "
                            "and K*N weight bytes / time as a share of DRAM read bandwidth; SparseInt8: the "
                            "operations of its stored blocks only / time, as a share of its kernel's peak",
    }))
    print()
    columns = ["layer", "K->N", "M", "thr", "cache", "fp32 ms", "bf16 ms", "best quantize_dynamic ms",
               "_int_mm ms", "Int8Linear ms", "weight-only ms", "best int8 vs fp32", "best int8 vs best qd",
               f"SparseInt8 {sparsity:.0%} ms", "same + GELU epilogue ms", "vs fp32 ", "Int8Linear GOP/s (% peak)",
               "Int8Linear weights GB/s (% DRAM)", "SparseInt8 GOP/s done (% peak)"]
    rows, records = [], []
    engine_rows = []
    for layer, (k, n) in shapes:
        for cache in caches:
            bias, pools = build_int8_pools(k, n, sparsity, block, cache == "cold", cold_bytes, pack)
            for t in threads:
                torch.set_num_threads(t)
                for m in ms:
                    med = run_int8_case(k, n, m, bias, pools)
                    qd = {name: v for name, v in med.items() if name.startswith("qd_")}
                    best = min(qd, key=qd.get)
                    # The better of the two INT8 paths (dynamic, weight-only) in this row.
                    ours = min(med["Int8Linear"], med["Int8Linear_wo"])
                    sparse = med["SparseInt8Linear"]
                    dense_peak, dense_kind = int8_peak(peaks[t], m, (32, k))  # int8_linear's packing
                    sparse_peak, sparse_kind = int8_peak(peaks[t], m, pack)
                    dram = peaks[t]["dram_read"]
                    dense_ops = 2 * m * n * k
                    int8_gops = dense_ops / med["Int8Linear"] / 1e9
                    weight_gbs = k * n / med["Int8Linear"] / 1e9
                    sparse_gops = dense_ops * (1 - pools["SparseInt8Linear"][0].sparsity) / sparse / 1e9
                    rec = dict(layer=layer, k=k, n=n, m=m, threads=t, cache=cache, sparsity=sparsity,
                               block=list(block), **{f"{name}_s": v for name, v in med.items()},
                               best_quantize_dynamic=best, speedup_vs_fp32=med["fp32"] / ours,
                               speedup_vs_best_qd=qd[best] / ours, sparse_speedup_vs_fp32=med["fp32"] / sparse,
                               int8_gops=int8_gops, int8_peak_kind=dense_kind,
                               int8_share_of_peak=dense_peak and int8_gops * 1e9 / dense_peak,
                               int8_weight_gbs=weight_gbs, int8_share_of_dram=weight_gbs * 1e9 / dram,
                               sparse_gops_done=sparse_gops,
                               sparse_peak_kind=sparse_kind,
                               sparse_share_of_peak=sparse_peak and sparse_gops * 1e9 / sparse_peak, peaks=peaks[t])
                    records.append(rec)
                    row = [layer, f"{k}->{n}", str(m), str(t), cache, fmt_ms(med["fp32"]), fmt_ms(med["bf16"]),
                           f"{fmt_ms(qd[best])} ({best[3:]})", fmt_ms(med["int8_mm"]), fmt_ms(med["Int8Linear"]),
                           fmt_ms(med["Int8Linear_wo"]),
                           fmt_ratio(rec["speedup_vs_fp32"]), fmt_ratio(rec["speedup_vs_best_qd"]),
                           fmt_ms(sparse), fmt_ms(med["SparseInt8Linear_gelu"]),
                           fmt_ratio(rec["sparse_speedup_vs_fp32"]),
                           f"{int8_gops:,.0f} ({pct(int8_gops * 1e9, dense_peak)} {dense_kind})",
                           f"{weight_gbs:.1f} ({pct(weight_gbs * 1e9, dram)})",
                           f"{sparse_gops:,.0f} ({pct(sparse_gops * 1e9, sparse_peak)} {sparse_kind})"]
                    rows.append(row)
                    engine_rows.append([layer, str(m), str(t), cache] + [fmt_ms(qd[name]) for name in sorted(qd)])
                    engine_names = sorted(qd)
                    print("| " + " | ".join(row) + " |", file=sys.stderr, flush=True)
            del pools
    print(markdown_table(columns, rows))
    print()
    print("quantize_dynamic per engine (ms):")
    print()
    print(markdown_table(["layer", "M", "thr", "cache"] + [e[3:] for e in engine_names], engine_rows))
    write_json(args.json, {"argv": argv, "suite": "int8"}, records)


DEFAULT_SPARSITY = "0.5,0.7,0.8,0.9,0.95"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="bert-base:ffn_up,bert-base:ffn_down",
                   help="model[:layer] list; models: " + ", ".join(SHAPES))
    p.add_argument("--m", default="1,8,128,512,2048", help="tokens per call")
    p.add_argument("--suite", choices=("bsr", "int8"), default="bsr")
    p.add_argument("--sparsity", default=DEFAULT_SPARSITY,
                   help="bsr: the list; int8: the sparsity of the SparseInt8Linear rows (default 0.9)")
    p.add_argument("--blocks", default="32x32")
    p.add_argument("--pack", default=None,
                   help="int8: the block size SparseInt8Linear stores (default: the pruning block, the first of "
                        "--blocks); --blocks 1x1 --pack 1x4 is unstructured pruning stored in 1x4 blocks")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--threads", default="2")
    p.add_argument("--cache", default="cold", help="hot, cold or both (hot,cold)")
    p.add_argument("--cold-mb", type=int, default=None,
                   help="bytes of weight copies each method rotates through when cold "
                        "(default: 2x L3, at most 1024 MiB, and all methods' copies at most a quarter of the "
                        "available memory)")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = p.parse_args(argv)

    models = ", ".join(f"{m} (layers {', '.join(layers)})" for m, layers in SHAPES.items())
    shapes = [s for group in checked_list(p, "shapes", args.shapes, parse_shape, what=f"model[:layer] of {models}")
              for s in group]
    ms = checked_list(p, "m", args.m, int, lambda v: v >= 1, "a positive number of tokens")
    sparsities = checked_list(p, "sparsity", args.sparsity, float, lambda v: 0.0 <= v < 1.0, "a sparsity in [0, 1)")
    blocks = checked_list(p, "blocks", args.blocks, parse_block, what="a block size RxC of positive ints")
    if args.pack is not None:
        checked_list(p, "pack", args.pack, parse_block, what="a block size RxC of positive ints")
    dtypes = checked_list(p, "dtypes", args.dtypes, str, lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}")
    threads = checked_list(p, "threads", args.threads, int, lambda v: v >= 1, "a positive number of threads")
    caches = checked_list(p, "cache", args.cache, str, lambda v: v in ("hot", "cold"), "hot or cold")
    # the int8 suite rotates up to 14 pools (fp32, bf16, six quantize_dynamic variants, ...), the
    # fp32/bf16 one three
    cold_bytes = (args.cold_mb << 20) if args.cold_mb else cold_pool_bytes(14 if args.suite == "int8" else 3)
    argv_list = argv if argv is not None else sys.argv[1:]
    if args.suite == "int8":
        return main_int8(args, shapes, ms, threads, caches, cold_bytes, argv_list)

    allocator = keep_freed_memory_for_timing()
    peaks = measure_peaks(threads)
    print(header("bench_linear: block-sparse linear vs dense F.linear and torch BSR", {
        "command": "python benchmarks/bench_linear.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        **allocator,
        "cold weights": f"each method rotates through {cold_bytes >> 20} MiB of distinct weight copies",
        "torch BSR": "torch.mm(w_bsr, x.t()) under no_grad, no bias; n/a where torch has no kernel for the dtype or block size",
        **peak_lines(peaks),
        "% peak": "sparsebert's operations on its stored blocks only / time, as a share of the fp32 FMA peak "
                  "(fp32) or, for bf16, the AMX TDPBF16PS peak where the amx level runs the layer on tiles "
                  "(from 16 rows on), else the vdpbf16ps peak (the fp32 one where the CPU lacks it)",
    }))
    print()
    columns = ["layer", "K->N", "M", "dtype", "block", "sparsity", "thr", "cache", "dense ms", "torch BSR ms",
               "sparsebert ms", "GFLOP/s eff", "% peak", "vs dense", "vs torch BSR"]
    rows, records = [], []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for layer, (k, n) in shapes:
            for block in blocks:
                for sparsity in sparsities:
                    for cache in caches:
                        bias, pools = build_weights(k, n, sparsity, block, dtype, cache == "cold", cold_bytes)
                        for t in threads:
                            torch.set_num_threads(t)
                            for m in ms:
                                med = run_case(k, n, m, block, dtype, bias, pools)
                                ours, dense, tb = med["sparsebert"], med["dense"], med.get("torch_bsr")
                                values = pools["sparsebert"][0][0]
                                stored = values.shape[0] * block[0] * block[1] / (n * k)
                                peak = bf16_peak(peaks[t], m, k, block) if dtype_name == "bf16" \
                                    else peaks[t]["fp32_fma"]
                                done = 2 * m * n * k * stored / ours
                                rec = dict(layer=layer, k=k, n=n, m=m, dtype=dtype_name, block=list(block),
                                           sparsity=sparsity, threads=t, cache=cache, dense_s=dense,
                                           torch_bsr_s=tb, sparsebert_s=ours,
                                           gflops_eff=gflops(2 * m * n * k, ours), share_of_peak=done / peak,
                                           speedup_vs_dense=dense / ours,
                                           speedup_vs_torch_bsr=None if tb is None else tb / ours)
                                records.append(rec)
                                row = [layer, f"{k}->{n}", str(m), dtype_name, f"{block[0]}x{block[1]}",
                                       f"{sparsity:.2f}", str(t), cache, fmt_ms(dense), fmt_ms(tb), fmt_ms(ours),
                                       f"{rec['gflops_eff']:.0f}", pct(done, peak), fmt_ratio(rec["speedup_vs_dense"]),
                                       fmt_ratio(rec["speedup_vs_torch_bsr"])]
                                rows.append(row)
                                print("| " + " | ".join(row) + " |", file=sys.stderr, flush=True)
                        del pools
    print(markdown_table(columns, rows))
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]}, records)


if __name__ == "__main__":
    main()
