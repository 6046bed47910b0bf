#!/usr/bin/env python
"""Whole-model side by side: sparsebert against Hugging Face, torch's dynamic INT8 and the CPU
inference engines (ONNX Runtime, OpenVINO with NNCF, DeepSparse 1.8), all on the same weights.

Weights: ``--model bert-base`` (BertConfig(), random weights, seed 0), ``minilm`` (the real
all-MiniLM-L6-v2 with real sentences) or ``tiny`` (2 layers, hidden 128: checks the plumbing).
Pruned rows use 90% of the blocks pruned by magnitude; every runtime on such a row runs that
pruned model (exported to ONNX from it), and its outputs are compared with Hugging Face fp32 on
the same pruned weights.

Every method runs in a process of its own (``benchmarks/engines/worker.py``; torch methods in
this venv, engines in theirs under ``build/engines/``, made by
``benchmarks/engines/setup_engines.sh``), is timed there around the call alone, and is driven
round by round by ``sparsebert.measure.time_methods``: one timed call per method per round, each
right after an untimed call of the same method, no sleeps, medians. A method whose runtime is
not installed is skipped with its reason in the header.

    python benchmarks/bench_e2e.py --model bert-base [--shapes 1x128,8x128,8x128-mixed] \\
        [--threads 2] [--json results/e2e.json] [--plot results/e2e.png]
    python benchmarks/bench_e2e.py --check [--model tiny]     # every method once, outputs vs fp32
    python benchmarks/bench_e2e.py --profile [--profile-method sb_p32_int8]   # where the time goes
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import gc
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import Method, header, markdown_table, time_methods, write_json  # noqa: E402

import sparsebert  # noqa: E402
from sparsebert import CompressConfig  # noqa: E402

WORKER = HERE / "engines" / "worker.py"
DEFAULT_ENGINES_DIR = ROOT / "build" / "engines"
DEFAULT_WORK_DIR = ROOT / "build" / "bench_e2e"
GOMP_SPINCOUNT = "10000"  # every worker's libgomp idle spin (see Worker); GOMP_SPINCOUNT in the environment wins
HOLD_ENV = "SPARSEBERT_BENCH_HOLD_GIB"  # worker.py: GiB of other arrays a method's process holds
RECIPE = 2  # part of the prepared-files directory name: bump when export or quantization changes
INPUT_NAMES = ["input_ids", "attention_mask"]
OPSET = 17
SETUP_HINT = "bash benchmarks/engines/setup_engines.sh"
LOAD_JOBS = 2

# --- what is compared ------------------------------------------------------------------------------

PRUNING = {"dense": None, "p32": (0.9, (32, 32)), "p16": (0.9, (16, 4)), "p1x4": (0.9, (1, 4))}
WEIGHT_LABELS = {"dense": "dense", "p32": "90% 32x32 blocks", "p16": "90% 16x4 blocks", "p1x4": "90% 1x4 blocks"}

SB_CONFIGS = {
    "sb_int8": dict(int8="dynamic", kernel="dense", attention="unpadded"),
    "sb_p32_fp32": dict(sparsity=0.9, block_size=(32, 32), kernel="sparse", attention="unpadded"),
    "sb_p32_int8": dict(sparsity=0.9, block_size=(32, 32), int8="dynamic", kernel="sparse", attention="unpadded"),
    "sb_p16_int8": dict(sparsity=0.9, block_size=(16, 4), int8="dynamic", kernel="sparse", attention="unpadded"),
    "sb_p1x4_int8": dict(sparsity=0.9, block_size=(1, 4), int8="dynamic", kernel="sparse", attention="unpadded"),
}
# The same models with attention's matmuls on bf16-rounded inputs (CompressConfig(attention_precision="bf16")).
SB_CONFIGS.update({f"{k}_ab": dict(v, attention_precision="bf16") for k, v in list(SB_CONFIGS.items())
                   if k in ("sb_int8", "sb_p32_int8")})
# ... and with attention's matmuls in INT8 (attention_precision="int8", as the engines' INT8 BERTs).
SB_CONFIGS.update({f"{k}_ai": dict(v, attention_precision="int8") for k, v in list(SB_CONFIGS.items())
                   if k in ("sb_int8", "sb_p32_int8")})
# The same models compiled (CompressConfig(compile=True): inductor around the sparsebert kernels).
SB_CONFIGS.update({f"{k}_c": dict(v, compile=True) for k, v in list(SB_CONFIGS.items())
                   if k in ("sb_int8", "sb_p32_int8", "sb_p1x4_int8")})
QUANT_ENGINES = ("fbgemm", "x86", "onednn")

# Max relative difference (see compare()) a method may have against fp32 on its weights in --check.
TOL_FP32, TOL_BF16, TOL_INT8 = 1e-3, 0.1, 0.25
TOL_SAME_FILE = 0.05  # an engine against ONNX Runtime on the same INT8 file (requantization may differ)


@dataclass
class Spec:
    key: str
    label: str
    weights: str  # a key of PRUNING
    engine: str  # torch | onnxruntime | openvino | deepsparse
    venv: str | None = None  # None: this interpreter; else build/engines/<venv>
    artifact: str | None = None  # the engine's model file: a key of ARTIFACTS
    options: dict = field(default_factory=dict)
    tol: float = TOL_FP32
    static_shape: bool = False  # compiled per input shape
    group: str | None = None  # rows shown as one "best of" row in the table
    family: str = "torch"  # torch | sparsebert | engine (plot colors)
    baseline: bool = False  # runs the sparsebert package of --baseline DIR (key: METHOD@base)

    @property
    def method(self) -> str:
        """The method this row builds (the key without ``@base``)."""
        return self.key.split("@")[0]


def all_specs() -> list[Spec]:
    s = [
        Spec("hf_fp32", "Hugging Face fp32 (SDPA)", "dense", "torch", tol=1e-5),
        Spec("hf_bf16", "Hugging Face bf16 (SDPA)", "dense", "torch", tol=TOL_BF16),
    ]
    s += [Spec(f"torch_int8_{e}", f"torch quantize_dynamic INT8 ({e})", "dense", "torch", tol=TOL_INT8,
               group="torch_int8") for e in QUANT_ENGINES]
    s += [
        Spec("sb_int8", "sparsebert INT8, unpadded", "dense", "torch", tol=TOL_INT8, family="sparsebert"),
        Spec("sb_p32_fp32", "sparsebert fp32, unpadded", "p32", "torch", family="sparsebert"),
        Spec("sb_p32_int8", "sparsebert INT8, unpadded", "p32", "torch", tol=TOL_INT8, family="sparsebert"),
        Spec("sb_p16_int8", "sparsebert INT8, unpadded", "p16", "torch", tol=TOL_INT8, family="sparsebert"),
        Spec("sb_p1x4_int8", "sparsebert INT8, unpadded", "p1x4", "torch", tol=TOL_INT8, family="sparsebert"),
        Spec("sb_int8_ab", "sparsebert INT8, unpadded, bf16 attention", "dense", "torch", tol=TOL_INT8,
             family="sparsebert"),
        Spec("sb_p32_int8_ab", "sparsebert INT8, unpadded, bf16 attention", "p32", "torch", tol=TOL_INT8,
             family="sparsebert"),
        Spec("sb_int8_ai", "sparsebert INT8, unpadded, INT8 attention", "dense", "torch", tol=TOL_INT8,
             family="sparsebert"),
        Spec("sb_p32_int8_ai", "sparsebert INT8, unpadded, INT8 attention", "p32", "torch", tol=TOL_INT8,
             family="sparsebert"),
        Spec("sb_int8_c", "sparsebert INT8, unpadded, compiled", "dense", "torch", tol=TOL_INT8, family="sparsebert"),
        Spec("sb_p32_int8_c", "sparsebert INT8, unpadded, compiled", "p32", "torch", tol=TOL_INT8,
             family="sparsebert"),
        Spec("sb_p1x4_int8_c", "sparsebert INT8, unpadded, compiled", "p1x4", "torch", tol=TOL_INT8,
             family="sparsebert"),
        Spec("ort_fp32", "ONNX Runtime fp32 (BERT fusions)", "dense", "onnxruntime", "ov_ort", "ort_opt",
             family="engine"),
        Spec("ort_int8", "ONNX Runtime INT8 (BERT fusions, quantize_dynamic)", "dense", "onnxruntime", "ov_ort",
             "ort_int8",
             tol=TOL_INT8, family="engine"),
        Spec("ov_fp32", "OpenVINO fp32", "dense", "openvino", "ov_ort", "onnx", {"precision": "f32"},
             static_shape=True, family="engine"),
        Spec("ov_bf16", "OpenVINO bf16 (precision hint)", "dense", "openvino", "ov_ort", "onnx",
             {"precision": "bf16"}, tol=TOL_BF16, static_shape=True, family="engine"),
        Spec("ov_int8", "OpenVINO INT8 (NNCF)", "dense", "openvino", "ov_ort", "ov_int8", tol=TOL_INT8,
             static_shape=True, family="engine"),
        Spec("ds_p32_fp32", "DeepSparse fp32", "p32", "deepsparse", "deepsparse", "onnx", static_shape=True,
             family="engine"),
        Spec("ds_p32_int8", "DeepSparse INT8 (static QOperator)", "p32", "deepsparse", "deepsparse", "qop_int8",
             tol=TOL_INT8, static_shape=True, family="engine"),
        Spec("ds_p16_int8", "DeepSparse INT8 (static QOperator)", "p16", "deepsparse", "deepsparse", "qop_int8",
             tol=TOL_INT8, static_shape=True, family="engine"),
        Spec("ds_p1x4_int8", "DeepSparse INT8 (static QOperator)", "p1x4", "deepsparse", "deepsparse", "qop_int8",
             tol=TOL_INT8, static_shape=True, family="engine"),
    ]
    return s


# --- models ------------------------------------------------------------------------------------------


def load_base(model: str):
    """(fp32 model in eval mode with SDPA attention, tokenizer or None)."""
    from transformers import BertConfig, BertModel

    if model in ("bert-base", "tiny"):
        torch.manual_seed(0)
        config = BertConfig() if model == "bert-base" else BertConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
        m, tokenizer = BertModel(config).eval(), None
    elif model == "minilm":
        from sparsebert.data import load_minilm

        m, tokenizer = load_minilm()
    else:
        raise ValueError(f"unknown model {model!r}")
    # Every method is compared on last_hidden_state, and the engines run an ONNX graph with that as
    # its only output (export_onnx), where the pooler is dead code: the torch methods run the model
    # without it, so that every method does the same work (the pooler is a dense fp32 layer the
    # engines never run).
    m.pooler = None
    m.set_attn_implementation("sdpa")
    return m.float().eval(), tokenizer


def fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer: a worker must have built exactly these weights."""
    h = hashlib.blake2b(digest_size=8)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _compress(model: nn.Module, cfg: dict, cache) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return sparsebert.compress(model, CompressConfig(**cfg), cache=str(cache) if cache else False)


def pruned_dense(base: nn.Module, weights: str, cache) -> nn.Module:
    """The fp32 HF model with exactly the weights the sparsebert rows of ``weights`` run: pruned
    by compress itself, then back to nn.Linear (fp32 block values are stored exactly)."""
    if PRUNING[weights] is None:
        return base
    sparsity, block = PRUNING[weights]
    sparse = _compress(copy.deepcopy(base), dict(sparsity=sparsity, block_size=block, kernel="sparse",
                                                 attention=None), cache)
    dense = sparsebert.decompress(sparse)
    del sparse
    dense.set_attn_implementation("sdpa")
    return dense.float().eval()


def format_summary(model: nn.Module) -> str:
    from sparsebert.compress import STATE_ATTR

    state = getattr(model, STATE_ATTR, None) or {}
    counts: dict[str, int] = {}
    for info in state.get("layers", {}).values():
        counts[info.get("format", "?")] = counts.get(info.get("format", "?"), 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def build_torch_method(model: str, method: str, cache: str | None = None):
    """``(model, info)`` for one torch method; what a torch worker calls (see worker.py)."""
    base, _ = load_base(model)
    info = {"fingerprint": fingerprint(base), "package": str(Path(sparsebert.__file__).parent)}
    if method == "hf_fp32":
        m = base
    elif method == "hf_bf16":
        m = base.to(torch.bfloat16)
    elif method.startswith("torch_int8_"):
        engine = method[len("torch_int8_"):]
        if engine not in torch.backends.quantized.supported_engines:
            raise ValueError(f"torch has no quantized engine {engine!r} "
                             f"(supported: {torch.backends.quantized.supported_engines})")
        torch.backends.quantized.engine = engine  # one method per process: the engine stays set
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            m = torch.ao.quantization.quantize_dynamic(base, {nn.Linear}, dtype=torch.qint8, inplace=True)
        info["quantized_engine"] = engine
    elif method in SB_CONFIGS:
        m = _compress(base, SB_CONFIGS[method], cache)
        info["layers"] = format_summary(m)
    else:
        raise ValueError(f"unknown torch method {method!r}")
    return m.eval(), info


# --- inputs ------------------------------------------------------------------------------------------

SHAPE_RE = re.compile(r"^(\d+)x(\d+)(-?m|-mixed)?$")


def parse_shape(text: str) -> tuple[int, int, bool]:
    m = SHAPE_RE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"shape must look like 8x128 or 8x128-mixed, got {text!r}")
    return int(m.group(1)), int(m.group(2)), m.group(3) is not None


def shape_key(shape) -> str:
    b, s, mixed = shape
    return f"{b}x{s}" + ("-mixed" if mixed else "")


def shape_title(shape) -> str:
    b, s, mixed = shape
    return f"{b}x{s}" + (" mixed" if mixed else "")


def real_sentences(tokenizer):
    if tokenizer is None:
        return None
    try:
        from sparsebert.data import movie_review_sentences

        return movie_review_sentences()
    except FileNotFoundError:
        return None


def make_inputs(model, tokenizer, sentences, shape) -> dict:
    """``batch x seq`` token ids (real sentences when there are some); ``mixed``: lengths spread
    from seq/4 to seq, padded, the attention mask marking the padding."""
    from sparsebert.bench import make_inputs as _make

    b, s, mixed = shape
    inputs = _make(model, b, s, tokenizer=tokenizer, sentences=sentences, mixed=mixed)
    return {k: inputs[k].to(torch.int64).contiguous() for k in INPUT_NAMES}


def calibration_inputs(model, tokenizer, n: int, seq: int = 128) -> dict[str, np.ndarray]:
    """``n`` samples of ``seq`` tokens, drawn apart from the timed inputs (another seed)."""
    if tokenizer is not None:
        try:
            from sparsebert.data import split_sentences

            sents, _ = split_sentences(n, 0, seed=1)
            enc = tokenizer(sents, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
            return {k: enc[k].astype(np.int64) for k in INPUT_NAMES}
        except FileNotFoundError:
            pass
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(min(1000, vocab - 1), vocab, (n, seq), generator=g)
    return {"input_ids": ids.numpy().astype(np.int64), "attention_mask": np.ones((n, seq), dtype=np.int64)}


def compare(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(max |out - ref| / max |ref|, ||out - ref|| / ||ref||) over real tokens (padding excluded:
    the unpadded encoder leaves zeros there, the padded models leave values nothing reads)."""
    keep = mask.astype(bool)
    a, r = out[keep].astype(np.float64), ref[keep].astype(np.float64)
    if a.shape != r.shape:
        raise ValueError(f"output shape {out.shape} differs from the reference's {ref.shape}")
    diff = np.abs(a - r)
    return float(diff.max() / max(np.abs(r).max(), 1e-30)), float(np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30))


def hf_output(model, inputs) -> np.ndarray:
    with torch.inference_mode():
        return model(**inputs)[0].float().numpy()


# --- ONNX export and engine model preparation ------------------------------------------------------


class _LastHiddenState(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]


def export_onnx(model: nn.Module, path: Path) -> None:
    """The fp32 model to ONNX with dynamic batch and sequence axes. Eager attention, so that the
    graph holds the plain MatMul / Softmax / MatMul that the engines pattern-match and quantize.
    The example input has padding, so the mask path is part of the traced graph."""
    if importlib.util.find_spec("onnx") is None:
        raise ImportError(f"torch.onnx.export needs the onnx package in this venv ({SETUP_HINT} export)")
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(min(1000, vocab - 1), vocab, (2, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    tmp = path.with_name(path.name + ".tmp")
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings on shape-dependent Python in transformers
            axes = {0: "batch", 1: "sequence"}
            torch.onnx.export(_LastHiddenState(model).eval(), (ids, mask), str(tmp), input_names=INPUT_NAMES,
                              output_names=["last_hidden_state"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
        os.replace(tmp, path)
    finally:
        model.set_attn_implementation(prev)
        if tmp.exists():
            tmp.unlink()


class WorkerError(RuntimeError):
    pass


class Worker:
    """A ``worker.py`` process: JSON lines over its stdin/stdout, its stderr in a log file."""

    def __init__(self, name: str, python: str, log_path: Path, threads: int, env: dict | None = None):
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **(env or {}))
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        # libgomp's idle threads spin for 300,000 iterations (milliseconds) after each parallel
        # region, so a torch process keeps both cores busy after its call returns and slows the
        # method timed next, as ONNX Runtime's spinning does (turned off in worker.py). MiniLM at
        # 1x128, the 90% model after the dense INT8 one: 2.9-4.4 ms a call with this, 6-11 without.
        # 10,000 iterations still spin through the gaps between the ops of one forward.
        env.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
        if name.startswith(("hello-", "tools-")):
            env.pop(HOLD_ENV, None)  # only the timed methods hold the memory
        self._log_file = open(log_path, "w")
        self.proc = subprocess.Popen([python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log_file, text=True, cwd=str(ROOT), env=env, bufsize=1)

    def send(self, cmd: str, **kw) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(f"{self.name}: worker exited ({self._tail()})") from None

    def recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise WorkerError(f"{self.name}: worker exited with code {self.proc.returncode} ({self._tail()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerError(f"{self.name}: {reply.get('error')}")
        return reply

    def call(self, cmd: str, **kw) -> dict:
        self.send(cmd, **kw)
        return self.recv()

    def cpu_ticks(self) -> int | None:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            return None

    def _tail(self) -> str:
        try:
            self._log_file.flush()
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            return " | ".join(lines[-3:]) or f"no output; log {self.log_path}"
        except OSError:
            return f"log {self.log_path}"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
                self.proc.wait(timeout=30)
            except (WorkerError, subprocess.TimeoutExpired, OSError, ValueError):
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def venv_python(engines_dir: Path, venv: str) -> Path | None:
    p = engines_dir / venv / "bin" / "python"
    return p if p.exists() else None


# artifact -> (file name, worker command, the artifact it is made from, venvs that can make it, calibrated)
ARTIFACTS = {
    "onnx": ("{w}.onnx", None, None, (), False),
    "ort_opt": ("{w}-ort-opt.onnx", "ort_optimize", "onnx", ("ov_ort",), False),
    "ort_int8": ("{w}-ort-opt-int8.onnx", "ort_quantize_dynamic", "ort_opt", ("ov_ort",), False),
    "ov_int8": ("{w}-ov-int8-c{n}.xml", "nncf_quantize", "onnx", ("ov_ort",), True),
    "qop_int8": ("{w}-qop-int8-c{n}.onnx", "ort_quantize_static_qoperator", "onnx", ("ov_ort", "deepsparse"), True),
}


class Prepared:
    """The ONNX files and engine models of each set of weights, made once and kept under
    ``build/bench_e2e/<model>-<weights hash>-r<RECIPE>/``, each with a ``.recipe`` file saying
    how it was made. Files are written under a temporary name and renamed, so an interrupted run
    never leaves a half file that a later run would reuse."""

    def __init__(self, workdir: Path, calib: dict[str, np.ndarray], tools: dict[str, Worker], model_config):
        self.dir = workdir
        self.tools = tools
        self.heads = model_config.num_attention_heads
        self.hidden = model_config.hidden_size
        self.recipes: dict[str, str] = {}
        self.calib_files = {}
        self.n_calib = len(calib["input_ids"])
        for k, a in calib.items():
            p = workdir / f"calib{self.n_calib}-{k}.npy"
            if not p.exists():
                np.save(p, a)
            self.calib_files[k] = str(p)

    def path(self, weights: str, artifact: str) -> Path:
        return self.dir / ARTIFACTS[artifact][0].format(w=weights, n=self.n_calib)

    def make(self, weights: str, artifact: str, models: dict) -> Path:
        dst = self.path(weights, artifact)
        recipe = dst.with_name(dst.name + ".recipe")
        if dst.exists():
            if recipe.exists():
                self.recipes[artifact] = recipe.read_text().strip()
            return dst
        _, cmd, source, venvs, calibrated = ARTIFACTS[artifact]
        if cmd is None:
            log(f"exporting {weights} weights to ONNX")
            export_onnx(models[weights], dst)
            return dst
        src = self.make(weights, source, models)
        tmp = dst.with_name("tmp-" + dst.name)
        errors = []
        for venv in venvs:
            worker = self.tools.get(venv)
            if worker is None:
                errors.append(f"no {venv} venv")
                continue
            log(f"{cmd} of {weights} weights in {venv}")
            kw = {"src": str(src), "dst": str(tmp)}
            if calibrated:
                kw["calib"] = self.calib_files
            if cmd == "ort_optimize":
                kw.update(num_heads=self.heads, hidden_size=self.hidden)
            try:
                reply = worker.call(cmd, **kw)
            except WorkerError as e:
                errors.append(str(e))
                continue
            if artifact == "ov_int8":
                os.replace(tmp.with_suffix(".bin"), dst.with_suffix(".bin"))
            os.replace(tmp, dst)
            self.recipes[artifact] = reply.get("recipe", cmd)
            recipe.write_text(self.recipes[artifact] + "\n")
            return dst
        raise WorkerError(f"{cmd}: " + "; ".join(errors))


# --- the run ---------------------------------------------------------------------------------------


def untimed_header(title: str, extra: dict) -> str:
    """common.header without its line on interleaved timing (the modes that use it time nothing)."""
    return "\n".join(ln for ln in header(title, extra).splitlines() if not ln.startswith("- timing:"))


def log(msg: str) -> None:
    print(f"[bench_e2e] {msg}", file=sys.stderr, flush=True)


@dataclass
class Active:
    spec: Spec
    worker: Worker
    runner: str | None = None  # loaded runner id
    runner_shape: tuple | None = None
    info: dict = field(default_factory=dict)


BASELINE_SUFFIX = "@base"


def select_specs(patterns: str, baseline: str | None = None) -> list[Spec]:
    """The methods ``patterns`` selects; with ``baseline``, each sparsebert one twice: as built here
    and as ``METHOD@base`` from the package in that directory."""
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    specs = [s for s in all_specs() if any(fnmatch.fnmatchcase(s.key, p) for p in pats)]
    if not specs:
        raise SystemExit(f"--methods {patterns!r} matches no method; methods: {', '.join(s.key for s in all_specs())}")
    if baseline:
        ours = [s for s in specs if s.family == "sparsebert"]
        if not ours:
            raise SystemExit(f"--baseline needs a sparsebert method in --methods, got {patterns!r}")
        specs += [replace(s, key=s.key + BASELINE_SUFFIX, label=f"{s.label} [baseline build]", baseline=True)
                  for s in ours]
    return specs


def check_baseline(directory: str) -> str:
    """``directory`` as an absolute path, if it holds a sparsebert package with its extension built."""
    d = Path(directory).resolve()
    pkg = d / "sparsebert"
    if not (pkg / "__init__.py").is_file():
        raise SystemExit(f"--baseline {directory!r}: no sparsebert package there (expected {pkg}/__init__.py)")
    if not list(pkg.glob("_C*.so")):
        raise SystemExit(f"--baseline {directory!r}: {pkg} has no built extension (_C*.so); build it in place "
                         f"there first: python setup.py build_ext --inplace")
    return str(d)


def setup(args, shapes) -> dict:
    """Builds everything before the first timed call: references, ONNX files, engine models and
    one loaded worker per method. Returns the run's state; skipped methods with their reasons."""
    specs = select_specs(args.methods, args.baseline)
    skipped: dict[str, str] = {}
    engines_dir = Path(args.engines_dir)
    work_root = Path(args.work_dir)

    # Runtimes present?
    hello: dict[str, dict] = {}
    for venv in sorted({s.venv for s in specs if s.venv}):
        py = venv_python(engines_dir, venv)
        if py is None:
            continue
        w = Worker(f"hello-{venv}", str(py), work_root / "logs" / f"hello-{venv}.log", args.threads)
        try:
            hello[venv] = w.call("hello")
        except WorkerError as e:
            hello[venv] = {"error": str(e)}
        finally:
            w.close()
    onnx_ok = None if importlib.util.find_spec("onnx") else (
        f"torch.onnx.export needs onnx in this venv ({SETUP_HINT} export)")
    for s in specs:
        if s.engine == "torch":
            if s.key.startswith("torch_int8_"):
                e = s.key[len("torch_int8_"):]
                if e not in torch.backends.quantized.supported_engines:
                    skipped[s.key] = f"torch {torch.__version__} has no quantized engine {e}"
            continue
        if onnx_ok:
            skipped[s.key] = onnx_ok
        elif s.venv not in hello:
            skipped[s.key] = f"{engines_dir / s.venv} not built ({SETUP_HINT})"
        elif "error" in hello[s.venv]:
            skipped[s.key] = hello[s.venv]["error"]
        else:
            versions = hello[s.venv]["versions"]
            need = [s.engine] + (["nncf"] if s.artifact == "ov_int8" else []) + (
                ["sympy"] if s.artifact in ("ort_opt", "ort_int8") else [])  # ONNX Runtime's BERT optimizer needs it
            missing = [n for n in need if not versions.get(n)]
            if missing:
                skipped[s.key] = f"{', '.join(missing)} not installed in {engines_dir / s.venv} ({SETUP_HINT})"
    specs = [s for s in specs if s.key not in skipped]

    # Weights, inputs, references.
    log(f"loading {args.model}")
    base, tokenizer = load_base(args.model)
    fp = fingerprint(base)
    workdir = work_root / f"{args.model}-{fp}-r{RECIPE}"
    (workdir / "inputs").mkdir(parents=True, exist_ok=True)
    (workdir / "out").mkdir(parents=True, exist_ok=True)
    cache = work_root / "compress_timings.json"
    models = {"dense": base}
    for w in sorted({s.weights for s in specs} - {"dense"}):
        log(f"pruning to {WEIGHT_LABELS[w]}")
        models[w] = pruned_dense(base, w, cache)
    sentences = real_sentences(tokenizer)
    inputs, refs = {}, {}
    for shape in shapes:
        key = shape_key(shape)
        t = make_inputs(base, tokenizer, sentences, shape)
        files = {}
        for name, tensor in t.items():
            p = workdir / "inputs" / f"{key}-{name}.npy"
            np.save(p, tensor.numpy())
            files[name] = str(p)
        inputs[key] = {"files": files, "mask": t["attention_mask"].numpy(),
                       "real_tokens": int(t["attention_mask"].sum())}
        log(f"fp32 references at {key}")
        for w in models:
            refs[w, key] = hf_output(models[w], t)

    # Engine models.
    tools: dict[str, Worker] = {}
    prepared = None
    engine_specs = [s for s in specs if s.engine != "torch"]
    if engine_specs:
        # The engines' own venvs, and every installed venv that can make a file they need (the
        # static INT8 file DeepSparse runs is made with ONNX Runtime's quantizer when installed).
        needed = set()
        for s in engine_specs:
            a = s.artifact
            while a is not None:
                needed.add(a)
                a = ARTIFACTS[a][2]
        makers = {v for a in needed for v in ARTIFACTS[a][3] if venv_python(engines_dir, v) is not None}
        for venv in sorted({s.venv for s in engine_specs} | makers):
            tools[venv] = Worker(f"tools-{venv}", str(venv_python(engines_dir, venv)),
                                 workdir / "logs" / f"tools-{venv}.log", args.threads)
        calib = calibration_inputs(base, tokenizer, args.calib)
        prepared = Prepared(workdir, calib, tools, base.config)
        artifacts: dict[tuple[str, str], Path | str] = {}
        for s in engine_specs:
            k = (s.weights, s.artifact)
            if k not in artifacts:
                try:
                    artifacts[k] = prepared.make(s.weights, s.artifact, models)
                except Exception as e:  # noqa: BLE001 - any failure skips the methods that need it
                    artifacts[k] = f"preparing {s.artifact} of {s.weights}: {type(e).__name__}: {e}".splitlines()[0]
            if isinstance(artifacts[k], str):
                skipped[s.key] = artifacts[k]
        for w in tools.values():
            w.close()
    specs = [s for s in specs if s.key not in skipped]
    models.clear()
    del base
    gc.collect()

    # One worker per method. The shape-independent runners are loaded now, a few at a time: each
    # torch worker builds the whole model, and all at once would not fit a small machine.
    active: list[Active] = []
    for s in specs:
        py = sys.executable if s.venv is None else str(venv_python(engines_dir, s.venv))
        env = None
        if s.baseline:  # its `import sparsebert` finds the baseline's package first
            env = {"PYTHONPATH": os.pathsep.join(p for p in (args.baseline, os.environ.get("PYTHONPATH")) if p)}
        if SB_CONFIGS.get(s.method, {}).get("compile"):
            # An empty inductor cache of its own: the first call at each shape is a cold compile,
            # what a new deployment pays, not a hit on an earlier run's cache.
            cold = workdir / "inductor-cold" / s.key
            shutil.rmtree(cold, ignore_errors=True)
            env = dict(env or {}, TORCHINDUCTOR_CACHE_DIR=str(cold))
        active.append(Active(s, Worker(s.key, py, workdir / "logs" / f"{s.key}.log", args.threads, env)))
    todo = [a for a in active if not a.spec.static_shape]
    for i in range(0, len(todo), LOAD_JOBS):
        pending = []
        for a in todo[i:i + LOAD_JOBS]:
            log(f"loading {a.spec.key}")
            try:
                a.worker.send("load", **load_request(a, prepared, args, None, cache))
                pending.append(a)
            except WorkerError as e:
                skipped[a.spec.key] = str(e).splitlines()[0]
        for a in pending:
            try:
                reply = a.worker.recv()
                a.runner, a.info = a.spec.key, reply.get("info", {})
                if a.spec.engine == "torch" and a.info.get("fingerprint") != fp:
                    raise WorkerError(f"{a.spec.key}: the worker built other weights "
                                      f"({a.info.get('fingerprint')} != {fp})")
            except WorkerError as e:
                skipped[a.spec.key] = str(e).splitlines()[0]
    for a in active:
        if a.spec.key not in skipped:
            try:
                for key, inp in inputs.items():
                    a.worker.call("inputs", id=key, files=inp["files"])
            except WorkerError as e:
                skipped[a.spec.key] = str(e).splitlines()[0]
        if a.spec.key in skipped:
            a.worker.close()
    active = [a for a in active if a.spec.key not in skipped]
    return dict(active=active, skipped=skipped, inputs=inputs, refs=refs, workdir=workdir, fingerprint=fp,
                hello=hello, recipes=prepared.recipes if prepared else {}, prepared=prepared, cache=cache,
                tokenizer=tokenizer is not None, sentences=sentences is not None)


def load_request(a: Active, prepared: Prepared | None, args, shape, cache) -> dict:
    s = a.spec
    req = {"id": s.key if shape is None else f"{s.key}@{shape[0]}x{shape[1]}", "engine": s.engine,
           "threads": args.threads, "shape": None if shape is None else [shape[0], shape[1]],
           "input_names": INPUT_NAMES, "options": dict(s.options, inspect=bool(args.check))}
    if s.engine == "torch":
        req["builder"] = {"directory": str(HERE), "function": "bench_e2e:build_torch_method",
                          "args": {"model": args.model, "method": s.method, "cache": str(cache)}}
    else:
        req["path"] = str(prepared.path(s.weights, s.artifact))
    return req


def ensure_runner(a: Active, state: dict, args, shape) -> None:
    """Static-shape runtimes are compiled per [batch, seq] (8x128 and 8x128-mixed share one)."""
    if not a.spec.static_shape:
        return
    want = (shape[0], shape[1])
    if a.runner is not None and a.runner_shape == want:
        return
    if a.runner is not None:
        a.worker.call("unload", id=a.runner)
        a.runner = None
    log(f"compiling {a.spec.key} for {want[0]}x{want[1]}")
    reply = a.worker.call("load", **load_request(a, state["prepared"], args, want, state["cache"]))
    a.runner, a.runner_shape = f"{a.spec.key}@{want[0]}x{want[1]}", want
    a.info = reply.get("info", {})
    a.info["load_s"] = round(reply.get("load_s", 0.0), 2)


def check_output(a: Active, state: dict, key: str) -> tuple[float, float]:
    path = state["workdir"] / "out" / f"{a.spec.key}-{key}.npy"
    a.worker.call("output", id=a.runner, inputs=key, path=str(path))
    out = np.load(path)
    return compare(out, state["refs"][a.spec.weights, key], state["inputs"][key]["mask"])


class SameFileReference:
    """ONNX Runtime's CPU execution of the very file an engine runs. Static INT8 with per-tensor
    activations can land far from fp32 on some weights (a property of the recipe, whichever
    runtime runs it); agreement with ONNX Runtime on the same file shows the engine computes
    what the file says."""

    def __init__(self, args, state):
        self.args, self.state = args, state
        self.worker: Worker | None = None
        self.loaded: set[str] = set()
        self.inputs: set[str] = set()

    def compare(self, a: Active, key: str) -> float | None:
        py = venv_python(Path(self.args.engines_dir), "ov_ort")
        if py is None or a.spec.artifact != "qop_int8":
            return None
        if self.worker is None:
            self.worker = Worker("same-file-ort", str(py), self.state["workdir"] / "logs" / "same-file-ort.log",
                                 self.args.threads)
        rid = f"{a.spec.weights}-{a.spec.artifact}"
        if rid not in self.loaded:
            self.worker.call("load", id=rid, engine="onnxruntime", threads=self.args.threads, shape=None,
                             path=str(self.state["prepared"].path(a.spec.weights, a.spec.artifact)))
            self.loaded.add(rid)
        if key not in self.inputs:
            self.worker.call("inputs", id=key, files=self.state["inputs"][key]["files"])
            self.inputs.add(key)
        path = self.state["workdir"] / "out" / f"ort-same-file-{rid}-{key}.npy"
        self.worker.call("output", id=rid, inputs=key, path=str(path))
        mine = np.load(self.state["workdir"] / "out" / f"{a.spec.key}-{key}.npy")
        return compare(mine, np.load(path), self.state["inputs"][key]["mask"])[0]

    def close(self):
        if self.worker is not None:
            self.worker.close()


def idle_cpu_after_return(a: Active, key: str, window: float = 0.2) -> float | None:
    """Share of one core the method's process burns in the ``window`` seconds after a call has
    returned (threads left spinning slow whatever runs next on the same cores)."""
    a.worker.call("run", id=a.runner, inputs=key, n=1)
    t0 = a.worker.cpu_ticks()
    time.sleep(window)
    t1 = a.worker.cpu_ticks()
    if t0 is None or t1 is None:
        return None
    return (t1 - t0) / os.sysconf("SC_CLK_TCK") / window


def run_check(args, state: dict, shapes) -> int:
    rows, failed = [], []
    same_file = SameFileReference(args, state)
    try:
        for shape in shapes:
            key = shape_key(shape)
            for a in list(state["active"]):
                s = a.spec
                try:
                    ensure_runner(a, state, args, shape)
                    mx, l2 = check_output(a, state, key)
                    same = same_file.compare(a, key)
                    spin = idle_cpu_after_return(a, key)
                except WorkerError as e:
                    failed.append(s.key)
                    rows.append([s.key, s.label, WEIGHT_LABELS[s.weights], "error", "", "", "", "",
                                 str(e).splitlines()[0][:120]])
                    continue
                if mx <= s.tol:
                    verdict = "ok"
                elif same is not None and same <= TOL_SAME_FILE:
                    verdict = "ok: same as ONNX Runtime on its file, the distance to fp32 is the recipe's"
                else:
                    verdict = "FAIL"
                    failed.append(s.key)
                rows.append([s.key, s.label, WEIGHT_LABELS[s.weights], f"{mx:.2e}", f"{l2:.2e}", f"{s.tol:g}",
                             "" if same is None else f"{same:.2e}", "n/a" if spin is None else f"{spin:.0%}", verdict])
    finally:
        same_file.close()
    extra = {
        "command": "python benchmarks/bench_e2e.py " + " ".join(sys.argv[1:]),
        "model": f"{args.model} (weights {state['fingerprint']})",
        "shapes": ", ".join(shape_title(s) for s in shapes) + ("; real sentences" if state["sentences"]
                                                             else "; random token ids"),
        "threads": str(args.threads),
    }
    print(untimed_header("bench_e2e --check: every method once, outputs against Hugging Face fp32 on the same weights",
                         extra))
    for k, why in state["skipped"].items():
        print(f"- skipped {k}: {why}")
    print()
    print(markdown_table(["method", "label", "weights", "max rel diff", "rel L2", "tol", "vs ORT, same file",
                          "CPU after return", "result"], rows))
    print()
    print("max rel diff: max |out - ref| / max |ref| over real tokens; ref: Hugging Face fp32 (SDPA) on the "
          "method's weights (the pruned fp32 model for pruned rows). vs ORT, same file: the same measure against "
          f"ONNX Runtime running the engine's own INT8 file (tolerance {TOL_SAME_FILE:g}). CPU after return: share "
          "of one core the method's process used in the 0.2 s after a call returned.")
    print()
    for a in state["active"]:
        print(f"- {a.spec.key}: {json.dumps(a.info, sort_keys=True)}")
    for k, r in state["recipes"].items():
        print(f"- {k}: {r}")
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all methods within tolerance'}")
    return 1 if failed else 0


def run_bench(args, state: dict, shapes) -> None:
    results: dict[str, dict[str, dict]] = {}
    dropped: dict[str, str] = {}
    head = bench_header(args, state, shapes)
    print(head + "\n", flush=True)
    for shape in shapes:
        key = shape_key(shape)
        active = []
        for a in state["active"]:
            if a.spec.key in dropped:
                continue
            try:
                ensure_runner(a, state, args, shape)
                t0 = time.perf_counter()
                mx, l2 = check_output(a, state, key)  # the first call at this shape: compiles where it does
                first = time.perf_counter() - t0
            except WorkerError as e:
                dropped[a.spec.key] = f"at {key}: {str(e).splitlines()[0]}"
                continue
            results.setdefault(a.spec.key, {})[key] = {"max_rel_diff": mx, "rel_l2": l2, "first_call_s": first}
            active.append(a)
        inner: dict[str, list[float]] = {a.spec.key: [] for a in active}

        def runner(a):
            def run(_i):
                if a.spec.key in dropped:
                    return
                try:
                    inner[a.spec.key].append(a.worker.call("run", id=a.runner, inputs=key, n=1)["times"][0])
                except WorkerError as e:
                    dropped[a.spec.key] = f"at {key}: {str(e).splitlines()[0]}"
            return run

        log(f"timing {len(active)} methods at {key}")
        timing = time_methods([Method(a.spec.key, runner(a)) for a in active], min_rounds=args.rounds,
                              max_rounds=max(args.rounds, args.max_rounds), min_seconds=args.min_seconds)
        for a in active:
            if a.spec.key in dropped:
                results[a.spec.key].pop(key, None)
                continue
            timed = inner[a.spec.key][1::2]  # calls alternate untimed, timed
            r = results[a.spec.key][key]
            r.update(ms=statistics.median(timed) * 1e3, samples_ms=[t * 1e3 for t in timed],
                     ms_with_ipc=timing.median(a.spec.key) * 1e3, rounds=len(timed), info=dict(a.info))
    report(args, state, shapes, results, dropped, head)


def _cell(ms: float | None, base: float | None, extra: str = "") -> str:
    if ms is None:
        return "n/a"
    text = f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"
    parts = [f"{base / ms:.1f}x"] if base else []
    if extra:
        parts.append(extra)
    return text + (f" ({', '.join(parts)})" if parts else "")


def table_rows(specs: list[Spec], results, shapes) -> list[dict]:
    """One display row per method, torch quantize_dynamic's engines as one best-of row."""
    rows, seen = [], set()
    for s in specs:
        if s.key not in results or s.group in seen:
            continue
        members = [m for m in specs if m.group == s.group and m.key in results] if s.group else [s]
        cells, worst = {}, 0.0
        for shape in shapes:
            key = shape_key(shape)
            have = [(results[m.key][key]["ms"], m) for m in members if "ms" in results[m.key].get(key, {})]
            if not have:
                continue
            ms, best = min(have, key=lambda x: x[0])
            cells[key] = {"ms": ms, "key": best.key, "engine": best.key.split("_")[-1] if s.group else ""}
            worst = max(worst, results[best.key][key]["max_rel_diff"])
        if s.group:
            seen.add(s.group)
        label = "torch quantize_dynamic INT8, best engine" if s.group else s.label
        rows.append({"spec": s, "label": label, "cells": cells, "max_rel_diff": worst})
    return rows


def baseline_commit(directory: str) -> str:
    """`` (git commit X)`` when the directory is the top of a git checkout or worktree, else empty (a
    plain directory inside another checkout would otherwise report that checkout's commit)."""
    if not (Path(directory) / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", "-C", directory, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" (git commit {out.stdout.strip()})" if out.returncode == 0 and out.stdout.strip() else ""


def bench_header(args, state, shapes) -> str:
    """The header, made right before the first timed call (its quiet-machine check samples then)."""
    runtimes = [f"torch {torch.__version__} (this venv)"]
    wanted = {"ov_ort": ("onnxruntime", "openvino", "nncf"), "deepsparse": ("deepsparse",)}
    for venv, h in state["hello"].items():
        v = h.get("versions", {})
        names = ", ".join(f"{n} {v[n]}" for n in wanted.get(venv, ()) if v.get(n))
        runtimes.append(f"{names} ({venv} venv: python {h.get('python')}, numpy {h.get('numpy')})")
    extra = {
        "command": "python benchmarks/bench_e2e.py " + " ".join(sys.argv[1:]),
        "model": f"{args.model} (weights {state['fingerprint']}); pruned rows: the same weights with 90% of the "
                 "blocks pruned by magnitude, every runtime on them runs that pruned model",
        "inputs": ", ".join(shape_title(s) for s in shapes) + "; mixed: lengths spread evenly from seq/4 to seq, "
                  "padded, the attention mask marks the padding; "
                  + ("real sentences" if state["sentences"] else "random token ids"),
        "threads": f"{args.threads} per method; every method in a process of its own, timed there around the call; "
                   f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', GOMP_SPINCOUNT)} (an idle OpenMP thread stops "
                   "spinning soon after a call, instead of taking the cores from the method timed next)",
        "runtimes": "; ".join(runtimes),
    }
    if args.baseline:
        extra["baseline"] = (f"rows marked [baseline build] (METHOD{BASELINE_SUFFIX}) run the sparsebert package in "
                             f"{args.baseline}{baseline_commit(args.baseline)}, the others this checkout's")
    if args.hold_gib:
        extra["held memory"] = (f"every method's process holds {args.hold_gib:g} GiB of other arrays (64 MiB each, "
                                "every page written) from before it builds or loads its model to its end")
    for k, why in state["skipped"].items():
        extra[f"skipped {k}"] = why
    return header(f"Whole model, side by side: {args.model}", extra)


def report(args, state, shapes, results, dropped, head: str) -> None:
    specs = [a.spec for a in state["active"]]
    rows = table_rows(specs, results, shapes)
    base = {shape_key(sh): results.get("hf_fp32", {}).get(shape_key(sh), {}).get("ms") for sh in shapes}
    columns = ["method", "weights"] + [f"{shape_title(s)} ms" for s in shapes] + ["max rel diff"]
    table = []
    for r in rows:
        line = [r["label"], WEIGHT_LABELS[r["spec"].weights]]
        for sh in shapes:
            c = r["cells"].get(shape_key(sh))
            line.append(_cell(c and c["ms"], base[shape_key(sh)] if r["spec"].key != "hf_fp32" else None,
                              c["engine"] if c else ""))
        line.append(f"{r['max_rel_diff']:.1e}")
        table.append(line)
    print(markdown_table(columns, table))
    print()
    rounds = {shape_key(sh): max((res[shape_key(sh)].get("rounds", 0) for res in results.values()
                                  if shape_key(sh) in res), default=0) for sh in shapes}
    notes = [
        f"ms: median of interleaved rounds ({', '.join(f'{k}: {v}' for k, v in rounds.items())}), measured inside "
        "each method's process around the call; (Nx): Hugging Face fp32 time / this time.",
        "max rel diff: max |out - ref| / max |ref| over real tokens, worst shape; ref: Hugging Face fp32 on the "
        "row's weights.",
        "sparsebert rows run attention='unpadded' (no work on padding); the engines and Hugging Face run the padded "
        "batch as given.",
        "torch methods build their model in their process, then hand the freed heap back to the OS (malloc_trim), "
        "as a process that loads a saved model would never have held it.",
    ]
    q = [s for s in specs if s.group == "torch_int8" and s.key in results]
    if q:
        per = "; ".join(f"{s.key.split('_')[-1]} " + " / ".join(
            f"{results[s.key][shape_key(sh)]['ms']:.1f}" for sh in shapes
            if "ms" in results[s.key].get(shape_key(sh), {})) for s in q)
        notes.append(f"torch quantize_dynamic per engine (ms, shapes in column order): {per}.")
    compiled = [s for s in specs if SB_CONFIGS.get(s.method, {}).get("compile") and s.key in results]
    if compiled:
        per = "; ".join(f"{s.key} " + " / ".join(
            f"{results[s.key][shape_key(sh)]['first_call_s']:.1f}" for sh in shapes
            if "first_call_s" in results[s.key].get(shape_key(sh), {})) for s in compiled)
        notes.append(f"torch.compile time, the first call at each shape in column order (s, a cold compile "
                     f"plus one forward: each compiled method starts with an empty inductor cache): {per}.")
    by_engine: dict[str, list[Active]] = {}
    for a in state["active"]:
        by_engine.setdefault(a.spec.engine, []).append(a)
    for a in by_engine.get("onnxruntime", [])[:1]:
        spin = "on" if a.info.get("allow_spinning") == "1" else "off"
        notes.append(f"ONNX Runtime: intra-op thread spinning {spin} (a pool left spinning after run() returns "
                     "slows the next method on the same cores), ORT_ENABLE_ALL on top of the offline BERT fusions.")
    for a in by_engine.get("openvino", []):
        i = a.info
        notes.append(f"{a.spec.key}: precision hint {i.get('INFERENCE_PRECISION_HINT')}, "
                     f"{i.get('INFERENCE_NUM_THREADS')} threads, CPU pinning {i.get('ENABLE_CPU_PINNING')}, "
                     "compiled per static shape.")
    for a in by_engine.get("deepsparse", []):
        i = a.info
        notes.append(f"{a.spec.key}: fraction of supported ops {i.get('fraction_of_supported_ops')}, "
                     f"{i.get('cpu_avx_type')}, VNNI {i.get('cpu_vnni')}, compiled per static shape.")
    if any(s.artifact == "qop_int8" for s in specs):
        notes.append("DeepSparse INT8 rows: static per-tensor activation scales (the file DeepSparse runs fast); "
                     "their distance to fp32 is that recipe's, ONNX Runtime lands at the same place on the same "
                     "file (--check shows it).")
    for k, r in state["recipes"].items():
        notes.append(f"{k}: {r}.")
    for k, why in dropped.items():
        notes.append(f"dropped {k}: {why}")
    print("\n".join(f"- {n}" for n in notes))
    json_rows = []
    for s in specs:
        for sh in shapes:
            r = results.get(s.key, {}).get(shape_key(sh))
            if not r or "ms" not in r:
                continue
            b = base[shape_key(sh)]
            json_rows.append({"method": s.key, "label": s.label, "weights": s.weights, "engine": s.engine,
                              "shape": shape_key(sh), "batch": sh[0], "seq": sh[1], "mixed": sh[2],
                              "real_tokens": state["inputs"][shape_key(sh)]["real_tokens"],
                              "speedup_vs_hf_fp32": b / r["ms"] if b else None, **r})
    meta = {"header": head, "notes": notes, "argv": sys.argv[1:], "model": args.model,
            "fingerprint": state["fingerprint"], "threads": args.threads, "hold_gib": args.hold_gib,
            "skipped": state["skipped"],
            "dropped": dropped, "hello": state["hello"], "recipes": state["recipes"],
            "python": platform.python_version(), "torch": torch.__version__, "sparsebert": sparsebert.__version__}
    write_json(args.json, meta, json_rows)
    if args.plot:
        plot(rows, shapes, args.plot, f"{args.model}, {args.threads} threads: latency per forward")
        print(f"\nplot: {args.plot}")


def plot(rows: list[dict], shapes, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"torch": "#8c8c8c", "sparsebert": "#d62728", "engine": "#1f77b4"}
    labels = [f"{r['label']} [{WEIGHT_LABELS[r['spec'].weights]}]" for r in rows]
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.0 * len(shapes) + 3.5, 0.34 * len(rows) + 1.4),
                             sharey=True, squeeze=False)
    for ax, sh in zip(axes[0], shapes):
        key = shape_key(sh)
        vals = [r["cells"][key]["ms"] if key in r["cells"] else 0.0 for r in rows]
        ax.barh(range(len(rows)), vals, color=[colors[r["spec"].family] for r in rows])
        top = max(vals) if vals else 1.0
        for y, v in enumerate(vals):
            ax.text(v + top * 0.01, y, f"{v:.1f}" if v else "n/a", va="center", fontsize=7)
        ax.set_title(shape_title(sh), fontsize=9)
        ax.set_xlabel("ms per forward (lower is better)", fontsize=8)
        ax.set_xlim(0, top * 1.18)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(range(len(rows)), labels)
    axes[0][0].invert_yaxis()
    from matplotlib.patches import Patch

    names = {"torch": "Hugging Face / torch", "sparsebert": "sparsebert", "engine": "inference engines"}
    present = list(dict.fromkeys(r["spec"].family for r in rows))
    axes[0][-1].legend(handles=[Patch(color=colors[f], label=names[f]) for f in present], fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- profile ---------------------------------------------------------------------------------------
#
# The profile records every op one forward dispatches (a TorchDispatchMode, below autograd: what
# the kernels see), then replays each recorded call on its own recorded inputs, round by round,
# and takes each call's median. torch.profiler was the first method: at 8x128 its own bookkeeping
# tripled the forward (103 -> 333 ms on a Zen 5) and its allocations put page faults into
# whichever op first wrote a fresh buffer (GELU showed 38%), so its shares were not the model's.
# A replayed op runs with its inputs hot in cache, as in the forward, where each op reads what
# the op before it wrote. Whatever the replay does not cover (Python between the ops, the
# dispatcher above them, hooks) is the wall time of the unprofiled forward minus the replayed
# sum: the "Python/dispatch overhead" row.

LINEAR_NORM_OP = "sparsebert::bsr_int8_linear_add_layer_norm"
FFN_OP = "sparsebert::bsr_int8_ffn"
FFN_GEMM = "GEMM in sparsebert::bsr_int8_ffn (its two projections replayed alone)"
FFN_REST = "GELU, add + LayerNorm in sparsebert::bsr_int8_ffn (the rest of its time)"
PARTS = [
    ("GEMM sparsebert::bsr_int8_linear", ("sparsebert::bsr_int8_linear",)),
    (FFN_GEMM, ()),
    (FFN_REST, ()),
    ("GEMM sparsebert::int8_linear", ("sparsebert::int8_linear",)),
    ("GEMM sparsebert::int8_weight_only_linear", ("sparsebert::int8_weight_only_linear",)),
    ("GEMM sparsebert::bsr_linear", ("sparsebert::bsr_linear",)),
    ("GEMM aten::linear/addmm", ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "aten::bmm",
                                 "quantized::linear_dynamic")),
    ("attention", ("sparsebert::attention_varlen", "sparsebert::attention", "aten::scaled_dot_product_attention",
                   "aten::_scaled_dot_product_flash_attention_for_cpu")),
    ("GELU", ("aten::gelu",)),
    ("LayerNorm", ("aten::layer_norm", "aten::native_layer_norm")),
    ("add + LayerNorm (fused)", ("sparsebert::add_layer_norm",)),
    ("adds (residual, embeddings)", ("aten::add", "aten::add_")),
    ("packing/unpacking", ("aten::index_select", "aten::index_copy", "aten::index_copy_", "aten::nonzero")),
]
# bsr_int8_linear_add_layer_norm: its projection (replayed alone) counts as a bsr_int8_linear GEMM,
# the rest of its time as the add + LayerNorm.
LINEAR_NORM_PARTS = ("GEMM sparsebert::bsr_int8_linear", "add + LayerNorm (fused)")
OTHER = "other aten ops"
OVERHEAD = "Python/dispatch overhead"


def _part_of(name: str) -> str:
    for part, names in PARTS:
        if name in names:
            return part
    return OTHER


def record_calls(model: nn.Module, inputs: dict) -> list:
    """Every op one forward dispatches, as (overload, args, kwargs), inputs kept alive."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            # In-place ops replay on copies: the recorded inputs of later calls stay as they were.
            self.calls.append((func, args, kwargs, func._schema.is_mutable))
            return func(*args, **kwargs)

    rec = Recorder()
    with torch.inference_mode(), rec:
        model(**inputs)
    return rec.calls


def ffn_probes(call) -> list:
    """The two projections of a recorded ``sparsebert::bsr_int8_ffn`` call as separate
    ``bsr_int8_linear`` calls (up without its activation; down on up's real output): replayed
    beside the fused op, they split its time into the GEMMs (their activation quantization
    included, as every GEMM row's) and the rest (the GELU, the residual add and LayerNorm)."""
    func, args, kwargs, _ = call
    bound = func._schema.arguments
    values = {a.name: (args[i] if i < len(args) else kwargs.get(a.name, a.default_value)) for i, a in enumerate(bound)}
    lin = torch.ops.sparsebert.bsr_int8_linear.default
    up = [values[f"up_{n}"] for n in ("values", "weight_scale", "weight_sum", "crow_indices", "col_indices", "bias",
                                      "shape", "block_size")]
    down = [values[f"down_{n}"] for n in ("values", "weight_scale", "weight_sum", "crow_indices", "col_indices",
                                          "bias", "shape", "block_size")]
    with torch.inference_mode():
        hidden = lin(values["x"], *up, values["act_quant"], values["activation"])
    return [(lin, (values["x"], *up, values["act_quant"], "none"), {}, False),
            (lin, (hidden, *down, values["act_quant"], "none"), {}, False)]


def linear_norm_probes(call) -> list:
    """The projection of a recorded ``sparsebert::bsr_int8_linear_add_layer_norm`` call as a
    separate ``bsr_int8_linear`` call: replayed beside the op, it splits its time into the GEMM (its
    activation quantization included) and the residual add + LayerNorm."""
    func, args, kwargs, _ = call
    bound = func._schema.arguments
    values = {a.name: (args[i] if i < len(args) else kwargs.get(a.name, a.default_value)) for i, a in enumerate(bound)}
    lin = torch.ops.sparsebert.bsr_int8_linear.default
    names = ("x", "values", "weight_scale", "weight_sum", "crow_indices", "col_indices", "bias", "shape",
             "block_size", "act_quant")
    return [(lin, (*(values[n] for n in names), "none"), {}, False)]


def replay_times(calls: list, rounds: int) -> list[float]:
    """Median seconds of each recorded call, replayed once per round in forward order; the
    cost of calling an op from Python (measured on aten::alias) is subtracted."""
    import torch.utils._pytree as pytree

    def prepared(call):
        func, args, kwargs, mutable = call
        if mutable:
            args, kwargs = pytree.tree_map_only(torch.Tensor, lambda t: t.clone(), (args, kwargs))
        return func, args, kwargs

    probe = torch.zeros(1)
    base = []
    per_call = [[] for _ in calls]
    clock = time.perf_counter
    with torch.inference_mode():
        for _ in range(rounds):
            for i, call in enumerate(calls):
                func, args, kwargs = prepared(call)
                t0 = clock()
                func(*args, **kwargs)
                per_call[i].append(clock() - t0)
            for _ in range(50):
                t0 = clock()
                torch.ops.aten.alias.default(probe)
                base.append(clock() - t0)
    cost = statistics.median(base)
    return [max(0.0, statistics.median(ts) - cost) for ts in per_call]


def run_profile(args, shapes) -> None:
    torch.set_num_threads(args.threads)
    method = args.profile_method
    log(f"building {method} on {args.model}")
    model, info = build_torch_method(args.model, method, str(Path(args.work_dir) / "compress_timings.json"))
    tokenizer = load_base(args.model)[1] if args.model == "minilm" else None
    sentences = real_sentences(tokenizer)
    results = {}
    for shape in shapes:
        inputs = make_inputs(model, tokenizer, sentences, shape)
        with torch.inference_mode():
            for _ in range(2):
                model(**inputs)
            walls = []
            for _ in range(args.profile_iters):
                t0 = time.perf_counter()
                model(**inputs)
                walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls) * 1e6
        calls = record_calls(model, inputs)
        probe_of = {FFN_OP: ffn_probes, LINEAR_NORM_OP: linear_norm_probes}
        probes = {i: probe_of[c[0]._schema.name](c) for i, c in enumerate(calls) if c[0]._schema.name in probe_of}
        extra_calls = [p for i in sorted(probes) for p in probes[i]]
        times = replay_times(calls + extra_calls, args.profile_iters)
        probe_times, pos = {}, len(calls)
        for i in sorted(probes):
            probe_times[i] = times[pos:pos + len(probes[i])]
            pos += len(probes[i])
        times = times[:len(calls)]
        parts = {p: 0.0 for p, _ in PARTS}
        parts[OTHER] = 0.0
        others: dict[str, float] = {}
        for i, ((func, *_), t) in enumerate(zip(calls, times)):
            name = func._schema.name
            if name in probe_of:
                gemm = min(t, sum(probe_times[i]))
                gemm_part, rest_part = (FFN_GEMM, FFN_REST) if name == FFN_OP else LINEAR_NORM_PARTS
                parts[gemm_part] += gemm * 1e6
                parts[rest_part] += (t - gemm) * 1e6
                continue
            part = _part_of(name)
            parts[part] += t * 1e6
            if part == OTHER:
                others[name] = others.get(name, 0.0) + t * 1e6
        inside = sum(parts.values())
        parts[OVERHEAD] = max(0.0, wall - inside)
        results[shape_key(shape)] = {"wall_us": max(wall, inside), "iters": args.profile_iters, "ops": len(calls),
                                     "unprofiled_wall_us": wall, "replayed_sum_us": inside,
                                     "parts_us": parts, "others_us": others}
        del calls
    extra = {
        "command": "python benchmarks/bench_e2e.py " + " ".join(sys.argv[1:]),
        "method": f"{method} ({info.get('layers', '')}) on {args.model}",
        "profile": f"each op of one forward (recorded below autograd) replayed on its own inputs, median of "
                   f"{args.profile_iters} interleaved rounds; wall = median of {args.profile_iters} plain forwards; "
                   f"{args.threads} threads",
    }
    print(untimed_header(f"Where the time goes: {method}", extra))
    print()
    names = [p for p, _ in PARTS] + [OTHER, OVERHEAD]
    columns = ["part"] + [c for s in shapes for c in (f"{shape_title(s)} ms", f"{shape_title(s)} %")]
    walls = [results[shape_key(s)]["wall_us"] for s in shapes]
    rows = []
    for n in names:
        vals = [results[shape_key(s)]["parts_us"][n] for s in shapes]
        if any(vals):
            rows.append([n] + [c for v, w in zip(vals, walls) for c in (f"{v / 1e3:.2f}", f"{v / w:.1%}")])
    rows.append(["total (wall per forward)"] + [c for w in walls for c in (f"{w / 1e3:.2f}", "100%")])
    print(markdown_table(columns, rows))
    print()
    gemm = {k: sum(v for n, v in results[k]["parts_us"].items() if n.startswith("GEMM")) for k in results}
    print("non-GEMM share: " + ", ".join(
        f"{shape_title(s)} {1 - gemm[shape_key(s)] / results[shape_key(s)]['wall_us']:.1%}" for s in shapes))
    for s in shapes:
        top = sorted(results[shape_key(s)]["others_us"].items(), key=lambda kv: -kv[1])[:6]
        w = results[shape_key(s)]["wall_us"]
        print(f"largest {OTHER} at {shape_title(s)}: " + ", ".join(f"{n} {v / w:.1%}" for n, v in top))
    print("ops per forward: " + ", ".join(f"{shape_title(s)} {results[shape_key(s)]['ops']}" for s in shapes))
    print(f"\n{OVERHEAD}: the plain forward's wall time minus the sum of the replayed ops (Python between the "
          "ops, module calls, the dispatcher above the kernels). A replayed op's time is its median over the "
          "rounds, less the cost of calling an op from Python.")
    write_json(args.json, {"argv": sys.argv[1:], "model": args.model, "method": method, "info": info},
               [{"shape": k, **v} for k, v in results.items()])


# --- main ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    keys = [s.key for s in all_specs()]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="methods: " + ", ".join(keys))
    p.add_argument("--model", choices=("bert-base", "minilm", "tiny"), default="bert-base")
    p.add_argument("--shapes", default=None,
                   help="comma-separated BxS or BxS-mixed (default 1x128,8x128,8x128-mixed; --profile: 1x128,8x128; "
                        "--check: 2x32-mixed)")
    p.add_argument("--methods", default="*", help="comma-separated method keys or patterns (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7, help="minimum interleaved rounds per shape")
    p.add_argument("--max-rounds", type=int, default=40)
    p.add_argument("--min-seconds", type=float, default=0.5,
                   help="per method and shape; rounds continue past --rounds until this is reached")
    p.add_argument("--hold-gib", type=float, default=0.0,
                   help="each timed method's process first allocates and writes this many GiB of other arrays "
                        "and holds them (a server process that holds much else)")
    p.add_argument("--calib", type=int, default=16,
                   help="calibration samples (1x128) for NNCF and the static INT8 ONNX")
    p.add_argument("--engines-dir", default=str(DEFAULT_ENGINES_DIR))
    p.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="ONNX files, engine models, logs")
    p.add_argument("--json", default=None)
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="a directory holding another build of the package (DIR/sparsebert with its extension "
                        "built in place, e.g. a worktree of an earlier commit): each selected sparsebert method "
                        "also runs from it as METHOD@base, in its own process, interleaved round by round")
    p.add_argument("--plot", default=None, help="PNG path")
    p.add_argument("--check", action="store_true", help="every method once on a small shape, outputs against fp32")
    p.add_argument("--profile", action="store_true", help="where one forward of a torch method spends its time")
    p.add_argument("--profile-method", default="sb_p32_int8",
                   choices=[k for k in keys if k in SB_CONFIGS or k.startswith(("hf_", "torch_int8_"))])
    p.add_argument("--profile-iters", type=int, default=7)
    args = p.parse_args(argv)
    if args.baseline:
        if args.profile:
            p.error("--baseline compares timed runs; it does not apply to --profile")
        args.baseline = check_baseline(args.baseline)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.hold_gib < 0:
        p.error(f"--hold-gib must be >= 0, got {args.hold_gib}")
    if args.hold_gib:
        os.environ[HOLD_ENV] = f"{args.hold_gib:g}"
    default_shapes = "2x32-mixed" if args.check else "1x128,8x128" if args.profile else "1x128,8x128,8x128-mixed"
    try:
        shapes = [parse_shape(t) for t in (args.shapes or default_shapes).split(",") if t.strip()]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    if args.profile:
        run_profile(args, shapes)
        return 0
    state = setup(args, shapes)
    try:
        if args.check:
            return run_check(args, state, shapes)
        run_bench(args, state, shapes)
        return 0
    finally:
        for a in state["active"]:
            a.worker.close()


if __name__ == "__main__":
    sys.exit(main())
