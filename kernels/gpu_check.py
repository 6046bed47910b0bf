"""Lowers every Triton kernel, for every autotune configuration, to PTX and cubin for sm_80 and
sm_90 with ``triton.compile`` (no GPU needed), and checks that the matmul kernels use tensor-core
instructions (``mma`` in the PTX; sm_90 also accepts ``wgmma``). Exits non-zero on any failure.

    python -m sparsebert.kernels.gpu_check [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("gpu_check lowers compiled kernels: run it without TRITON_INTERPRET=1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import importlib  # noqa: E402

# The modules (the package exports functions of the same names).
attn_mod = importlib.import_module(".attention", __package__)
ln_mod = importlib.import_module(".layer_norm", __package__)
bsr_mod = importlib.import_module(".bsr_linear", __package__)
int8_mod = importlib.import_module(".int8_linear", __package__)

TARGETS = (80, 90)
PTR = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}


def bsr_linear_cases(quick):
    names = ["x_ptr", "v_ptr", "crow_ptr", "col_ptr", "b_ptr", "y_ptr", "M", "N", "K", "stride_xm", "stride_ym"]
    blocks = [(32, 32)] if quick else [(16, 16), (32, 32), (64, 64), (16, 64), (64, 16)]
    for dt, tf32 in (("fp32", True), ("fp32", False), ("bf16", False), ("fp16", False)):
        for br, bc in blocks:
            for i, cfg in enumerate(bsr_mod.CONFIGS):
                for even in ((False, True) if i == 0 else (False,)):
                    sig = dict(zip(names, [PTR[dt], PTR[dt], "*i32", "*i32", PTR[dt], PTR[dt]] + ["i32"] * 5))
                    const = dict(HAS_BIAS=True, BR=br, BC=bc, KP=1 if dt == "fp32" else 2, GROUP_M=bsr_mod.GROUP_M,
                                 ALLOW_TF32=tf32, IS_FP32=dt == "fp32", EVEN_M=even, EVEN_K=even, EVEN_N=even,
                                 INTERPRET=False, **cfg.kwargs)
                    yield (f"bsr_linear {dt}{' tf32' if tf32 else ''} {br}x{bc} {cfg.kwargs} even={even}",
                           bsr_mod.bsr_linear_kernel, sig, const, cfg, dt != "fp32" or tf32)


def int8_cases(quick):
    names = ["q_ptr", "sx_ptr", "w_ptr", "sw_ptr", "crow_ptr", "col_ptr", "b_ptr", "y_ptr",
             "M", "N", "K", "KQ", "stride_qm", "stride_ym"]
    variants = [(False, *int8_mod.DENSE_TILE)] + [(True, br, bc) for br, bc in
                                                   ([(32, 32)] if quick else [(16, 32), (32, 32), (64, 64), (32, 64)])]
    for dt in ("fp32", "bf16"):
        for sparse, br, bc in variants:
            for i, cfg in enumerate(int8_mod.CONFIGS):
                for even in ((False, True) if i == 0 else (False,)):
                    sig = dict(zip(names, ["*i8", "*fp32", "*i8", "*fp32", "*i32", "*i32", PTR[dt], PTR[dt]]
                                   + ["i32"] * 6))
                    # The even variant also carries the GELU epilogue (activation="gelu").
                    const = dict(SPARSE=sparse, HAS_BIAS=True, BR=br, BC=bc, GROUP_M=8, EVEN_M=even, EVEN_K=even,
                                 EVEN_N=even, GELU=even, INTERPRET=False, **cfg.kwargs)
                    kind = f"bsr_int8_linear {br}x{bc}" if sparse else "int8_linear"
                    yield (f"{kind} out {dt} {cfg.kwargs} even={even} gelu={even}", int8_mod.int8_linear_kernel,
                           sig, const, cfg, True)
    for dt in ("fp32", "bf16", "fp16"):
        sig = {"x_ptr": PTR[dt], "q_ptr": "*i8", "s_ptr": "*fp32", "K": "i32", "stride_xm": "i32", "stride_qm": "i32"}
        yield (f"quantize_per_token {dt}", int8_mod.quantize_per_token_kernel, sig, {"BLOCK_K": 1024},
               triton.Config({}, num_warps=4), False)


def attention_cases(quick):
    names = ["q_ptr", "k_ptr", "v_ptr", "o_ptr", "kp_ptr", "cu_ptr", "sq_b", "sq_h", "sq_s", "sk_b", "sk_h", "sk_s",
             "sv_b", "sv_h", "sv_s", "so_b", "so_h", "so_s", "skp_b", "H", "SQ", "SK", "D", "scale"]
    dims = [64] if quick else [64, 128]
    for dt, tf32, rnd in (("bf16", False, False), ("fp16", False, False), ("fp32", True, False),
                          ("fp32", False, False), ("fp32", False, True)):
        for d in dims:
            for has_kp, varlen in ((True, False), (False, True)):
                for cfg in attn_mod.CONFIGS:
                    sig = dict(zip(names, [PTR[dt]] * 4 + ["*i8", "*i32"] + ["i32"] * 17 + ["fp32"]))
                    const = dict(HAS_KP=has_kp, VARLEN=varlen, IS_FP32=dt == "fp32" and not rnd, ALLOW_TF32=tf32,
                                 BLOCK_D=d, INTERPRET=False, ROUND_BF16=rnd, **cfg.kwargs)
                    mode = "varlen" if varlen else "key-padding"
                    extra = " tf32" if tf32 else " precision=bf16" if rnd else ""
                    yield (f"attention {mode} {dt}{extra} D={d} {cfg.kwargs}",
                           attn_mod.attention_kernel, sig, const, cfg, dt != "fp32" or tf32 or rnd)


def layer_norm_cases(quick):
    for dt in ("fp32", "bf16", "fp16"):
        for block in ([1024] if quick else [1024, 4096]):
            sig = {"x_ptr": PTR[dt], "r_ptr": PTR[dt], "w_ptr": PTR[dt], "b_ptr": PTR[dt], "o_ptr": PTR[dt],
                   "N": "i32", "eps": "fp32"}
            yield (f"add_layer_norm {dt} BLOCK={block}", ln_mod.add_layer_norm_kernel, sig, {"BLOCK": block},
                   triton.Config({}, num_warps=4), False)


def lower(fn, sig, const, cfg, cap):
    for name in const:
        sig[name] = "constexpr"
    src = ASTSource(fn=fn, signature=sig, constexprs=const)
    return triton.compile(src, target=GPUTarget("cuda", cap, 32),
                          options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one block size / head dim per kernel")
    args = p.parse_args(argv)
    failures, n = [], 0
    start = time.time()
    for cases in (bsr_linear_cases, int8_cases, attention_cases, layer_norm_cases):
        for name, fn, sig, const, cfg, needs_mma in cases(args.quick):
            for cap in TARGETS:
                n += 1
                label = f"sm_{cap} {name}"
                try:
                    compiled = lower(fn, dict(sig), dict(const), cfg, cap)
                    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
                except Exception as exc:  # report every failure, not only the first
                    failures.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                    continue
                if not cubin:
                    failures.append(f"{label}: empty cubin")
                elif needs_mma and "mma" not in ptx:
                    failures.append(f"{label}: no tensor-core instruction (mma/wgmma) in the PTX")
    print(f"gpu_check: {n} lowerings (sm_80, sm_90) in {time.time() - start:.0f} s, {len(failures)} failed")
    for f in failures:
        print("  FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
