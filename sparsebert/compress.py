"""``sparsebert.compress``: one call from a Hugging Face BERT-family model to a faster one.

The shape is torchao's ``quantize_(model, config, filter_fn)``: a config dataclass says what
happens, ``filter_fn`` narrows which ``nn.Linear`` layers it happens to, and the model is
converted in place and returned. Per layer:

1. **Weights**: pruned here by one-shot block magnitude when ``sparsity`` is given, else the
   zeros the weights already have are kept (a model pruned elsewhere).
2. **Kernel** (``kernel="auto"``): the candidate formats are timed at the layer's real shape
   and a token count on this machine (cached, :mod:`sparsebert.measure`); the fastest is kept,
   and dense stays dense where nothing beats it.
3. **Precision** (``int8="dynamic"`` with calibration ``example_inputs``): each layer starts in
   its fastest INT8 mode; while the model's output on the calibration batch is further from the
   unquantized model than ``min_cosine`` allows, the layers with the largest quantization error
   move up a ladder (per-token -> SmoothQuant + asymmetric -> weight-only -> no INT8).

Everything is validated and every new module built before the model is touched, so a failed
``compress`` leaves the model as it was. :func:`sparsebert.report` shows what was chosen and why.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .memory import keep_freed_memory
from .measure import Method, TimingCache, default_cache_path, time_methods
from .nn import Int8Linear, SparseInt8Linear, SparseLinear
from .ops.bsr_format import check_block_size
from .ops.int8_format import ACT_QUANT_MODES
from .prune import block_magnitude_mask

__all__ = ["CompressConfig", "compress", "FORMATS", "DEFAULT_SKIP", "is_compressed", "decompress",
           "fuse_activations", "unfuse_activations", "STATE_ATTR"]

# A layer's format: what module it becomes.
FORMATS = {
    "dense": nn.Linear,  # kept as it is (in the config's dtype)
    "sparse": SparseLinear,
    "int8": Int8Linear,
    "int8_weight_only": Int8Linear,
    "sparse_int8": SparseInt8Linear,
}
CONVERTED = (SparseLinear, Int8Linear, SparseInt8Linear)
DEFAULT_SKIP = ("*embeddings*", "*pooler*", "*classifier*", "cls.*", "*lm_head*", "*qa_outputs*")
INT8_MODES = ("dynamic", "weight_only")
ATTENTION_MODES = ("sparsebert", "unpadded")
ATTENTION_PRECISIONS = ("fp32", "bf16", "int8")
KERNELS = ("auto", "sparse", "dense")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
STATE_ATTR = "sparsebert_state"  # the record compress leaves on the model (report, save)
CALIBRATION_SAFETY = 0.5  # share of the min_cosine distance the calibrated choice may use
# A precision rung is worth its error only where it is this much faster than the more accurate
# rungs above it. Without the margin the noise of one timing decided: weight-only INT8 timed 0.2%
# faster than fp32 on MiniLM-L6's layers at 3712 tokens (4.370 / 4.380 ms), stayed a rung, and
# the calibration then held min_cosine 0.999 with 25 layers weight-only and 7 fp32: make demo's
# calibrated model at 1.26x / 1.10x / 1.12x Hugging Face fp32 (1x128 / 8x128 / 32x64; Xeon with
# AMX). With this margin, the same tree and the same cached timings: 16 layers fp32, the rest INT8,
# 1.76x / 1.94x / 1.94x, the same fidelity budget met.
LADDER_MIN_GAIN = 0.10


@dataclass
class CompressConfig:
    """What :func:`compress` does. Every field is validated before the model is touched.

    - ``sparsity``: fraction of ``block_size`` blocks to prune by magnitude in every converted
      layer (a float in [0, 1)), or a dict of module-name pattern (``fnmatch``, e.g.
      ``"*.intermediate.dense"``) -> fraction (first match wins; unmatched layers keep their
      zeros), or None: keep the zeros the weights already have.
    - ``block_size``: (rows, cols) of the sparse blocks.
    - ``int8``: ``"dynamic"`` (int8 weights, activations quantized per token in the op),
      ``"weight_only"`` (int8 weights, float activations) or None.
    - ``act_quant``: the activation quantization of ``"dynamic"`` without calibration inputs
      (``per_token``, ``per_token_asym``, ``per_tensor``, ``per_tensor_asym``); with them each
      layer's mode is chosen against ``min_cosine``.
    - ``dtype``: ``"float32"`` or ``"bfloat16"`` (the model's activations and float weights).
    - ``attention``: ``"sparsebert"`` (fused attention kernel), ``"unpadded"`` (plus the encoder
      on packed tokens: no work on padding) or None (leave the model's own).
    - ``attention_precision``: ``"fp32"``, ``"bf16"`` (the inputs of attention's two matmuls
      rounded to bfloat16, accumulated in fp32: bf16 dot products at twice the fp32 rate on CPUs
      with AVX-512 BF16) or ``"int8"`` (q, k, v and the probabilities quantized to 8 bits, both
      matmuls in int32: ``vpdpbusd`` on AVX-512 VNNI CPUs; an error near 1% of the output scale,
      CPU only); see ``sparsebert.ops.attention``. Needs ``attention`` set.
    - ``skip``: module-name patterns never converted (default: embeddings, pooler and task heads).
    - ``kernel``: ``"auto"`` (measure and keep the fastest per layer), ``"sparse"`` or
      ``"dense"`` (force one structure everywhere).
    - ``min_cosine``: fidelity budget of the calibrated INT8 choice: minimum cosine similarity,
      per example, between the pooled output of the converted and the unquantized model (judged
      in float32).
    - ``tokens``: rows of the activation the per-layer timing uses (default: the token count of
      ``example_inputs``, else 128).
    - ``compile``: also compile the converted model in place (``model.compile(dynamic=True)``):
      torch's inductor fuses the work between the sparsebert kernels (residual adds, LayerNorm,
      reshapes, a GELU that ``fuse`` left as an op) and plans its buffers. The first forward
      compiles (tens of seconds for BERT-base on 2 cores, once more for the first batch of another
      size; inductor caches on disk); ``load`` compiles a saved model again. Outputs move by INT8
      rounding flips only (see ``benchmarks/bench_e2e.py``, which measures it beside the eager
      model).
    - ``fuse``: move each FFN's GELU into the epilogue of its up projection when that layer is
      dynamic INT8 (:func:`fuse_activations`): one pass less over the largest activation. Same
      math (the exact GELU), in float32 registers instead of a separate op. And run each block's
      residual add and LayerNorm as one op (:func:`sparsebert.hf.fuse_layer_norms`). And compute
      each self-attention's query, key and value as one layer (:func:`sparsebert.hf.fuse_qkv`: one
      GEMM, one activation quantization) where the three were converted alike. And run each FFN
      whose two projections are block-sparse INT8 as one op (:func:`sparsebert.hf.fuse_ffn`: the
      hidden activation stays in each core's caches), the same numbers.
    """

    sparsity: float | dict[str, float] | None = None
    block_size: tuple[int, int] = (32, 32)
    int8: str | None = None
    act_quant: str = "per_token"
    dtype: str = "float32"
    attention: str | None = "sparsebert"
    attention_precision: str = "fp32"
    skip: tuple[str, ...] = DEFAULT_SKIP
    kernel: str = "auto"
    min_cosine: float = 0.999
    tokens: int | None = None
    compile: bool = False
    fuse: bool = True

    def __post_init__(self):
        if isinstance(self.dtype, torch.dtype):
            names = {v: k for k, v in DTYPES.items()}
            if self.dtype not in names:
                raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype}")
            self.dtype = names[self.dtype]
        if isinstance(self.skip, str):
            self.skip = (self.skip,)
        self.skip = tuple(self.skip)
        self.block_size = check_block_size(tuple(self.block_size) if isinstance(self.block_size, list)
                                           else self.block_size)
        self.validate()

    def validate(self) -> None:
        _check_sparsity("sparsity", self.sparsity) if not isinstance(self.sparsity, dict) else None
        if isinstance(self.sparsity, dict):
            for pattern, value in self.sparsity.items():
                if not isinstance(pattern, str):
                    raise ValueError(f"sparsity patterns must be strings, got {pattern!r}")
                _check_sparsity(f"sparsity[{pattern!r}]", value)
        if self.int8 not in (None, *INT8_MODES):
            raise ValueError(f"int8 must be one of {INT8_MODES} or None, got {self.int8!r}")
        if self.act_quant not in ACT_QUANT_MODES:
            raise ValueError(f"act_quant must be one of {ACT_QUANT_MODES}, got {self.act_quant!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.attention not in (None, *ATTENTION_MODES):
            raise ValueError(f"attention must be one of {ATTENTION_MODES} or None, got {self.attention!r}")
        if self.attention_precision not in ATTENTION_PRECISIONS:
            raise ValueError(f"attention_precision must be one of {ATTENTION_PRECISIONS}, got "
                             f"{self.attention_precision!r}")
        if self.attention is None and self.attention_precision != "fp32":
            raise ValueError(f"attention_precision={self.attention_precision!r} needs sparsebert attention "
                             "(attention='sparsebert' or 'unpadded'), got attention=None")
        if not all(isinstance(p, str) for p in self.skip):
            raise ValueError(f"skip must be module-name patterns (strings), got {self.skip!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if not isinstance(self.fuse, bool):
            raise ValueError(f"fuse must be True or False, got {self.fuse!r}")
        if self.kernel == "sparse" and self.int8 == "weight_only":
            raise ValueError("kernel='sparse' with int8='weight_only': there is no block-sparse weight-only kernel; "
                             "use int8='dynamic' or kernel='auto'")
        if isinstance(self.min_cosine, bool) or not isinstance(self.min_cosine, (int, float)) \
                or not -1.0 <= self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine must be a number in [-1, 1], got {self.min_cosine!r}")
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                                        or self.tokens < 1):
            raise ValueError(f"tokens must be a positive int or None, got {self.tokens!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_size"] = list(self.block_size)
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CompressConfig":
        """The inverse of :meth:`to_dict` (a manifest's ``compress_config``); ValueError for
        anything else."""
        if not isinstance(d, dict):
            raise ValueError(f"a CompressConfig dict is needed, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CompressConfig fields: {sorted(unknown)}")
        for key in ("block_size", "skip"):
            if key in d and not isinstance(d[key], list):
                raise ValueError(f"CompressConfig {key} must be a list, got {d[key]!r}")
        return cls(**{k: tuple(v) if k in ("block_size", "skip") else v for k, v in d.items()})


def _check_sparsity(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


# --- choices -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One way to run a layer: a format plus its INT8 options."""

    format: str
    act_quant: str | None = None
    smooth: bool = False

    def label(self) -> str:
        parts = [self.format]
        if self.act_quant and self.format in ("int8", "sparse_int8"):
            parts.append(self.act_quant)
        if self.smooth:
            parts.append("smoothquant")
        return " ".join(parts)


def _structure_candidates(cfg: CompressConfig, has_empty_blocks: bool) -> list[str]:
    """Formats whose speed decides a layer's structure (before the precision ladder)."""
    if cfg.kernel == "dense":
        return [{None: "dense", "dynamic": "int8", "weight_only": "int8_weight_only"}[cfg.int8]]
    if cfg.kernel == "sparse":
        return ["sparse_int8" if cfg.int8 == "dynamic" else "sparse"]
    if cfg.int8 == "dynamic":
        return ["int8", "dense"] + (["sparse_int8"] if has_empty_blocks else [])
    if cfg.int8 == "weight_only":
        return ["int8_weight_only", "dense"] + (["sparse"] if has_empty_blocks else [])
    return ["dense"] + (["sparse"] if has_empty_blocks else [])


def _ladder(fmt: str, calibrated: bool, act_quant: str) -> list[Choice]:
    """From the fastest to the most accurate way to run a layer of structure ``fmt``."""
    # Asymmetric per-token without SmoothQuant is not a rung: SmoothQuant + asymmetric runs the
    # same GEMM (plus one elementwise multiply) and is the larger step in accuracy; with the plain
    # asymmetric rung in between, MiniLM-L6 at min_cosine 0.999 kept 24 of 36 layers in fp32
    # instead of 16 (benchmarks/bench_compress.py).
    if fmt == "int8" and calibrated:
        return [Choice("int8", "per_token"), Choice("int8", "per_token_asym", True), Choice("int8_weight_only"),
                Choice("dense")]
    if fmt == "sparse_int8" and calibrated:
        return [Choice("sparse_int8", "per_token"), Choice("sparse_int8", "per_token_asym", True), Choice("sparse")]
    if fmt in ("int8", "sparse_int8"):
        return [Choice(fmt, act_quant)]
    return [Choice(fmt)]


def _prune_ladder(ladder: list[Choice], timings: dict[str, float]) -> list[Choice]:
    """Drops the rungs that are not at least ``LADDER_MIN_GAIN`` faster than every more accurate
    rung of another format (weight-only INT8 where fp32 is as fast). Rungs of one format (the INT8
    modes) share a time and all stay; the first rung always stays."""
    return [c for i, c in enumerate(ladder)
            if i == 0 or not any(timings[d.format] <= timings[c.format] * (1.0 + LADDER_MIN_GAIN)
                                 for d in ladder[i + 1:] if d.format != c.format)]


def _build(choice: Choice, linear: nn.Linear, cfg: CompressConfig, act_absmax: Tensor | None = None) -> nn.Module:
    """The module for ``choice`` from a (pruned) fp32 ``linear``, in the config's dtype."""
    dtype = DTYPES[cfg.dtype]
    smooth = act_absmax if choice.smooth else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # block-pattern warnings are given once per layer by compress
        if choice.format == "dense":
            module = copy.deepcopy(linear)
        elif choice.format == "sparse":
            module = SparseLinear.from_dense(linear, cfg.block_size)
        elif choice.format == "int8":
            module = Int8Linear.from_dense(linear, act_absmax=smooth, act_quant=choice.act_quant)
        elif choice.format == "int8_weight_only":
            module = Int8Linear.from_dense(linear, weight_only=True)
        else:
            module = SparseInt8Linear.from_dense(linear, cfg.block_size, act_absmax=smooth,
                                                 act_quant=choice.act_quant)
    return module.to(dtype).eval()


# --- model walking -------------------------------------------------------------------------------


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress expects a Hugging Face BERT-family model (nn.Module), got {type(model).__name__}")
    try:
        from transformers import PreTrainedModel
    except ImportError as e:  # pragma: no cover - transformers is a dependency of the model level
        raise ImportError("sparsebert.compress needs transformers (pip install transformers)") from e
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"compress expects a Hugging Face BERT-family model (a transformers PreTrainedModel), "
                        f"got {type(model).__name__}")
    from .hf import encoder_of

    encoder_of(model, "compress")  # TypeError unless embeddings + encoder.layer of BERT-style layers
    if getattr(model, STATE_ATTR, None) is not None:
        raise ValueError("this model is already compressed: compress the original model (sparsebert.decompress "
                         "gives a dense copy of this one)")


def _targets(model: nn.Module, cfg: CompressConfig, filter_fn) -> dict[str, nn.Linear]:
    names = [n for n, _ in model.named_modules()]
    if cfg.skip != DEFAULT_SKIP:
        for pattern in cfg.skip:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                warnings.warn(f"skip pattern {pattern!r} matches no module of {type(model).__name__}", UserWarning,
                              stacklevel=3)
    if isinstance(cfg.sparsity, dict):
        for pattern in cfg.sparsity:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                warnings.warn(f"sparsity pattern {pattern!r} matches no module of {type(model).__name__}",
                              UserWarning, stacklevel=3)
    out = {}
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in cfg.skip):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        out[name] = module
    return out


def _layer_sparsity(cfg: CompressConfig, name: str) -> float | None:
    if isinstance(cfg.sparsity, dict):
        return next((v for p, v in cfg.sparsity.items() if fnmatch.fnmatchcase(name, p)), None)
    return cfg.sparsity


def _pruned_fp32(linear: nn.Linear, sparsity: float | None, block_size) -> nn.Linear:
    """An fp32 copy of ``linear`` with its blocks pruned (the original is not modified)."""
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        w = linear.weight.detach().float()
        if sparsity:
            w = w * block_magnitude_mask(w, sparsity, block_size)
        out.weight.copy_(w)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach().float())
    return out.eval()


def _empty_block_share(weight: Tensor, block_size) -> tuple[float, float]:
    """(share of zero entries, share of entries in all-zero blocks)."""
    br, bc = block_size
    n, k = weight.shape
    nb, ncb = math.ceil(n / br), math.ceil(k / bc)
    nz = torch.nn.functional.pad(weight.ne(0), (0, ncb * bc - k, 0, nb * br - n))
    empty = ~nz.reshape(nb, br, ncb, bc).any(3).any(1)  # (NB, NCB)
    real = torch.ones(n, k, dtype=torch.bool)
    real = torch.nn.functional.pad(real, (0, ncb * bc - k, 0, nb * br - n)).reshape(nb, br, ncb, bc)
    in_empty = (real & empty[:, None, :, None]).sum().item()
    return 1.0 - nz.sum().item() / max(1, n * k), in_empty / max(1, n * k)


def _put(model: nn.Module, modules: dict[str, nn.Module], replaced: list) -> None:
    """Puts ``modules`` (by qualified name) into ``model``, appending (owner, attr, old module)
    to ``replaced`` as it goes, so that a failure part way can still be undone."""
    for name, module in modules.items():
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        replaced.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, module)


def _restore(replaced: list) -> None:
    for owner, attr, module in reversed(replaced):
        setattr(owner, attr, module)


@contextmanager
def _swapped(model: nn.Module, modules: dict[str, nn.Module]):
    """Temporarily puts ``modules`` (by qualified name) into ``model``; always restores."""
    replaced: list = []
    try:
        _put(model, modules, replaced)
        yield model
    finally:
        _restore(replaced)


# --- measurement ---------------------------------------------------------------------------------


def _time_formats(linear: nn.Linear, formats: list[str], cfg: CompressConfig, tokens: int, cache: TimingCache,
                  empty_share: float) -> dict[str, float]:
    """Median seconds of each format at this layer's shape, all timed in one interleaved run.

    The formats are one comparison: the cache holds them under keys naming the whole group,
    and when any of them is missing all are timed again together. A time is never compared
    with one taken in another run (another minute of a noisy machine, another process beside
    it): one slow moment cached for one format would otherwise decide every later compress."""
    formats = sorted(set(formats))
    shape = [linear.out_features, linear.in_features]
    density = round(1.0 - empty_share, 2)
    keys = {}
    for fmt in formats:
        sparse = fmt in ("sparse", "sparse_int8")
        keys[fmt] = cache.key(format=fmt, group=formats, shape=shape, tokens=tokens, dtype=cfg.dtype,
                              block=list(cfg.block_size) if sparse else None, density=density if sparse else None)
    if any(cache.get(keys[f]) is None for f in formats):
        x = torch.randn(tokens, linear.in_features).to(DTYPES[cfg.dtype])
        # INT8 formats are timed in per-token mode: the other modes run the same GEMM plus an
        # elementwise pass, so one time per format keeps the cache key free of the mode.
        modules = {f: _build(Choice(f, "per_token"), linear, cfg) for f in formats}
        with torch.inference_mode():
            timing = time_methods([Method(f, lambda i, m=m: m(x)) for f, m in modules.items()],
                                  min_rounds=5, max_rounds=50, min_seconds=0.03)
        for f in formats:
            cache.put(keys[f], timing.median(f))
    return {f: cache.get(keys[f]) for f in formats}


# --- calibration ---------------------------------------------------------------------------------


def _check_example_inputs(example_inputs) -> dict:
    if not isinstance(example_inputs, Mapping) or "input_ids" not in example_inputs:
        raise ValueError("example_inputs must be a dict of tokenized model inputs with 'input_ids' (as a tokenizer "
                         f"returns them), got {type(example_inputs).__name__}")
    ids = example_inputs["input_ids"]
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.numel() == 0:
        raise ValueError("example_inputs['input_ids'] must be a non-empty 2-D tensor [batch, seq], got "
                         f"{getattr(ids, 'shape', type(ids).__name__)}")
    return dict(example_inputs)


def pooled_output(output, attention_mask: Tensor | None) -> Tensor:
    """[batch, features] float32: the model's first output (last hidden state or logits),
    mean-pooled over real tokens when it has a token axis."""
    t = output[0] if not isinstance(output, Tensor) else output
    t = t.float()
    if t.dim() == 3:
        m = torch.ones(t.shape[:2]) if attention_mask is None else attention_mask.to(t.device).float()
        t = (t * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    return t.reshape(t.shape[0], -1)


def min_cosine(a: Tensor, b: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).min().item()


def embedding_cosines(model, original, tokenizer, sentences: list[str], batch: int = 32) -> Tensor:
    """Per sentence, the cosine between the pooled outputs of ``model`` and ``original`` (float64)."""
    out = []
    for i in range(0, len(sentences), batch):
        enc = tokenizer(sentences[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.inference_mode():
            a = pooled_output(model(**enc), enc["attention_mask"])
            b = pooled_output(original(**enc), enc["attention_mask"])
        out.append(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


class _Calibrator:
    """Per-layer activation statistics on the calibration batch: absmax per input feature (for
    SmoothQuant) and a sample of input rows (for each choice's error)."""

    MAX_ROWS = 256

    def __init__(self, modules: dict[str, nn.Module]):
        self.absmax: dict[str, Tensor] = {}
        self.rows: dict[str, Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name):
        def hook(module, args, output):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            amax = x.abs().amax(0)
            self.absmax[name] = amax if name not in self.absmax else torch.maximum(self.absmax[name], amax)
            step = max(1, x.shape[0] // self.MAX_ROWS)
            self.rows[name] = x[::step][: self.MAX_ROWS].clone()
        return hook

    def remove(self):
        for h in self._handles:
            h.remove()


def _relative_error(module: nn.Module, reference: nn.Linear, x: Tensor) -> float:
    """||module(x) - reference(x)|| / ||reference(x)|| (both float32 modules)."""
    with torch.inference_mode():
        ref = reference(x)
        out = module(x).float()
    return ((out - ref).norm() / ref.norm().clamp(min=1e-12)).item()


def _run(model, inputs):
    with torch.inference_mode():
        return pooled_output(model(**inputs), inputs.get("attention_mask"))


# --- compress ------------------------------------------------------------------------------------


def compress(model: nn.Module, config: CompressConfig | None = None, *, filter_fn: Callable | None = None,
             example_inputs: Mapping | None = None, cache: bool | str = True, progress: bool = False) -> nn.Module:
    """Converts ``model`` (a Hugging Face BERT-family model, any task head) in place and returns it.

    ``config``: a :class:`CompressConfig` (default: keep the weights' zeros, fp32, measured
    per-layer choice, sparsebert attention). ``filter_fn(module, name) -> bool`` narrows which
    ``nn.Linear`` layers are converted (on top of ``config.skip``). ``example_inputs``: tokenized
    calibration inputs (a dict as a tokenizer returns it): they set the timing token count and,
    with ``int8="dynamic"``, turn on the calibrated per-layer INT8 choice. ``cache``: True (the
    default timing cache, :func:`sparsebert.measure.default_cache_path`), a file path, or False.
    ``progress``: a progress bar over layers on stderr.

    Also calls :func:`sparsebert.memory.keep_freed_memory` (process-wide: a warm forward then takes
    no fresh pages from the OS; ``SPARSEBERT_KEEP_FREED_MEMORY=0`` leaves the allocator alone).

    Raises (before the model is modified): TypeError for a model that is not BERT-family,
    ValueError for a bad config or bad ``example_inputs``.
    """
    cfg = config if config is not None else CompressConfig()
    if not isinstance(cfg, CompressConfig):
        raise TypeError(f"config must be a CompressConfig, got {type(cfg).__name__}")
    cfg.validate()
    _check_model(model)
    inputs = _check_example_inputs(example_inputs) if example_inputs is not None else None
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, name) -> bool, got {type(filter_fn).__name__}")
    if cache is True:
        timing_cache = TimingCache(default_cache_path())
    elif cache is False or cache is None:
        timing_cache = TimingCache(None)
    else:
        timing_cache = TimingCache(cache)
    keep_freed_memory()  # before timing: the layers are measured as they will run

    targets = _targets(model, cfg, filter_fn)
    if not targets:
        warnings.warn(f"compress: no nn.Linear of {type(model).__name__} is left to convert after skip/filter_fn",
                      UserWarning, stacklevel=2)
    tokens = cfg.tokens or (inputs["input_ids"].numel() if inputs is not None else 128)
    calibrated = inputs is not None and cfg.int8 == "dynamic"

    from tqdm.auto import tqdm

    layers: dict[str, dict] = {}
    pruned: dict[str, nn.Linear] = {}
    bar = tqdm(targets.items(), desc="sparsebert: choosing kernels", unit="layer", disable=not progress)
    for name, linear in bar:
        sparsity = _layer_sparsity(cfg, name)
        lin = _pruned_fp32(linear, sparsity, cfg.block_size)
        pruned[name] = lin
        zero_share, empty_share = _empty_block_share(lin.weight.detach(), cfg.block_size)
        if cfg.kernel != "dense" and zero_share >= 0.2 and empty_share < 0.5 * zero_share:
            warnings.warn(
                f"{name}: {zero_share:.1%} of the weight is zeros but only {empty_share:.1%} lies in empty "
                f"{cfg.block_size[0]}x{cfg.block_size[1]} blocks, which is all a block-sparse kernel can skip "
                "(an unstructured pattern). Prune in blocks (CompressConfig(sparsity=...) or "
                "sparsebert.prune.block_magnitude_mask) or use the block size the model was pruned with.",
                UserWarning, stacklevel=2)
        formats = _structure_candidates(cfg, empty_share > 0)
        # One timing run per layer: the structure candidates, dense, and every rung of the
        # precision ladders they could lead to, so that each choice compares times of one run.
        rungs = {c.format for f in formats for c in _ladder(f, calibrated, cfg.act_quant)}
        timed = _time_formats(lin, sorted(set(formats) | rungs | {"dense"}), cfg, tokens, timing_cache, empty_share)
        fmt = min(formats, key=lambda f: timed[f]) if cfg.kernel == "auto" else formats[0]
        layers[name] = {"structure": fmt, "timings": timed, "zero_share": zero_share, "empty_share": empty_share,
                        "pruned_to": sparsity}
    timing_cache.save()

    # Precision: the calibrated ladder, or the one choice the config names.
    ladders = {}
    for name in targets:
        ladder = _ladder(layers[name]["structure"], calibrated, cfg.act_quant)
        # A rung slower than a more accurate one above it is never worth taking (its times were
        # taken with the structure's).
        ladders[name] = _prune_ladder(ladder, layers[name]["timings"])
    level = {n: 0 for n in targets}
    calibration = None
    absmax: dict[str, Tensor] = {}
    if calibrated:
        level, absmax, calibration = _calibrate(model, targets, pruned, ladders, cfg, inputs)

    # Build every final module, then commit (nothing above modified the model).
    new_modules = {}
    for name in targets:
        choice = ladders[name][level[name]]
        new_modules[name] = _build(choice, pruned[name], cfg, absmax.get(name))
        info = layers[name]
        info.update(format=choice.format, act_quant=choice.act_quant if choice.format in ("int8", "sparse_int8")
                    else None, smooth=choice.smooth, reason=_reason(choice, info, cfg, level[name], tokens))
        info["speedup"] = info["timings"]["dense"] / info["timings"][choice.format]

    _commit(model, new_modules, cfg, {
        "config": cfg.to_dict(),
        "tokens": tokens,
        "calibration": calibration,
        "layers": {n: {k: v for k, v in info.items() if k != "structure"} for n, info in layers.items()},
    })
    return model


def _commit(model: nn.Module, new_modules: dict[str, nn.Module], cfg: CompressConfig, state: dict) -> None:
    """Swaps the new modules in, casts the model to the config's dtype (the layers left as they
    were too: a bf16 model with the default config becomes float32 throughout), sets the
    attention and marks the model. Any failure puts back what was there before re-raising."""
    from .hf import (ATTN_IMPLEMENTATION, attention_precision, fuse_ffn, fuse_layer_norms, fuse_qkv, mark_compressed,
                     set_attention_precision, unfuse_ffn, unfuse_layer_norms, unfuse_qkv, use_unpadded)

    replaced: list = []
    old_precision = attention_precision(model)
    acts = [(m, getattr(m, FFN_ACT_ATTR)) for m in model.modules() if hasattr(m, FFN_ACT_ATTR)]
    old_attn = model.config._attn_implementation
    old_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        _put(model, new_modules, replaced)
        model.to(DTYPES[cfg.dtype])
        if cfg.attention == "sparsebert":
            model.set_attn_implementation(ATTN_IMPLEMENTATION)
        elif cfg.attention == "unpadded":
            use_unpadded(model)
        if cfg.attention is not None:
            set_attention_precision(model, cfg.attention_precision)
        state["fused"] = fuse_activations(model) if cfg.fuse else []
        state["fused_norms"] = fuse_layer_norms(model) if cfg.fuse else []
        state["fused_qkv"] = fuse_qkv(model) if cfg.fuse else []
        state["fused_ffn"] = fuse_ffn(model) if cfg.fuse else []
        setattr(model, STATE_ATTR, state)
        mark_compressed(model)
        if cfg.compile:
            compile_model(model)
    except BaseException:
        model._compiled_call_impl = None
        unfuse_ffn(model)
        unfuse_qkv(model)
        unfuse_layer_norms(model)
        for module, act in acts:  # the FFN activations fuse_activations replaced
            setattr(module, FFN_ACT_ATTR, act)
        _restore(replaced)
        if cfg.attention == "unpadded":
            use_unpadded(model, enabled=False)
        model.set_attn_implementation(old_attn)
        set_attention_precision(model, old_precision)
        model.to(old_dtype)
        model.__dict__.pop(STATE_ATTR, None)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        raise


def _reason(choice: Choice, info: dict, cfg: CompressConfig, level: int, tokens: int) -> str:
    t = info["timings"]
    ms = lambda f: f"{t[f] * 1e3:.3f} ms"  # noqa: E731
    if cfg.kernel != "auto":
        why = f"kernel={cfg.kernel!r}"
    else:
        others = ", ".join(f"{f} {ms(f)}" for f in t if f != info["structure"])
        why = f"fastest at {tokens} tokens: {info['structure']} {ms(info['structure'])}" + (
            f" vs {others}" if others else "")
        if info["structure"] == "dense" and len(t) > 1:
            why = f"dense kept: nothing beat it ({ms('dense')}; {others})"
    if level:
        why += f"; kept at {choice.label()} (step {level} of the precision ladder) to hold min_cosine {cfg.min_cosine}"
    return why


def _calibrate(model, targets, pruned, ladders, cfg, inputs):
    """The calibrated INT8 choice (see the module docstring). Returns (level per layer, act
    absmax per layer, a summary for the report). Judged in float32: a model in another dtype is
    calibrated on a float32 copy."""
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()
    was_training = model.training
    model.eval()
    try:
        calib = _Calibrator(pruned)
        try:
            with _swapped(model, dict(pruned)):
                reference = _run(model, inputs)  # the unquantized (pruned) model
        finally:
            calib.remove()
        absmax = calib.absmax
        # Each rung's error on the layer's own calibration inputs ranks which layer moves up first.
        built: dict[tuple[str, int], nn.Module] = {}
        errors: dict[tuple[str, int], float] = {}
        unseen = [n for n in targets if n not in calib.rows]  # e.g. cross-attention without encoder inputs
        level = {n: 0 for n in targets}
        for name in unseen:  # nothing to judge them by: their most accurate rung
            level[name] = len(ladders[name]) - 1
        for name in targets:
            for i, choice in enumerate(ladders[name]):
                module = _build(choice, pruned[name], cfg, absmax.get(name)).float()
                built[name, i] = module
                errors[name, i] = 0.0 if name in unseen else _relative_error(module, pruned[name], calib.rows[name])

        def cosine():
            with _swapped(model, {n: built[n, level[n]] for n in targets}):
                return min_cosine(_run(model, inputs), reference)

        def next_rung(n):  # the next rung that is more accurate than the current one
            nxt = level[n] + 1
            while nxt + 1 < len(ladders[n]) and errors[n, nxt] >= errors[n, level[n]]:
                nxt += 1
            return nxt

        # Move the worst layers up one rung at a time, 1, 2, 4, ... layers per step; once a step
        # meets the budget, bisect it down to the fewest of its moves that still do.
        # The calibration batch is a sample: the worst unseen sentence lands further away than the
        # worst calibration one (MiniLM-L6, 64 calibration / 256 other movie-review sentences:
        # 0.99902 -> 0.99776), so the ladder aims at half the allowed distance.
        target = 1.0 - (1.0 - cfg.min_cosine) * CALIBRATION_SAFETY
        cos, steps, k = cosine(), 0, 1
        start_cos = cos
        while cos < target:
            movable = [n for n in targets if level[n] + 1 < len(ladders[n])]
            if not movable:
                break
            movable.sort(key=lambda n: errors[n, level[n]], reverse=True)
            before = dict(level)
            moves = [(n, next_rung(n)) for n in movable[:k]]
            for n, r in moves:
                level[n] = r
            cos, steps, k = cosine(), steps + 1, k * 2
            if cos >= target and len(moves) > 1:
                lo, hi, best = 1, len(moves), (len(moves), cos)
                while lo < hi:
                    mid = (lo + hi) // 2
                    level.update(before)
                    level.update(dict(moves[:mid]))
                    c = cosine()
                    steps += 1
                    if c >= target:
                        hi, best = mid, (mid, c)
                    else:
                        lo = mid + 1
                level.update(before)
                level.update(dict(moves[:best[0]]))
                cos = best[1]
        summary = {"min_cosine": cos, "min_cosine_all_fastest": start_cos, "budget": cfg.min_cosine, "target": target,
                   "not_reached_by_calibration": unseen,
                   "steps": steps, "examples": int(inputs["input_ids"].shape[0]),
                   "met": cos >= cfg.min_cosine}
        if cos < cfg.min_cosine:
            warnings.warn(f"compress: min cosine {cos:.5f} on the calibration batch is below min_cosine="
                          f"{cfg.min_cosine} even with every layer unquantized", UserWarning, stacklevel=3)
        return level, absmax, summary
    finally:
        model.train(was_training)


# --- helpers for users and the other model-level modules -----------------------------------------


# A BERT-family FFN (BertIntermediate, RobertaIntermediate, ...): ``dense`` then this activation.
FFN_ACT_ATTR = "intermediate_act_fn"


def _is_exact_gelu(module) -> bool:
    """nn.GELU() or transformers' GELUActivation on F.gelu: the erf GELU the kernels fuse (the
    tanh and other approximations are left as they are)."""
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    try:
        from transformers.activations import GELUActivation
    except ImportError:  # pragma: no cover - transformers is a dependency of the model level
        return False
    return isinstance(module, GELUActivation) and getattr(module, "act", None) is F.gelu


def _fusable(layer) -> bool:
    return isinstance(layer, SparseInt8Linear) or (isinstance(layer, Int8Linear) and not layer.weight_only)


def fused_layout(model: nn.Module) -> None:
    """Replaces the FFN activation after every layer that applies it itself (``activation !=
    "none"``) with ``nn.Identity``: what :func:`fuse_activations` leaves, rebuilt by ``load``
    from the layers' specs."""
    for module in model.modules():
        dense = getattr(module, "dense", None)
        if (_fusable(dense) and dense.activation != "none"
                and not isinstance(getattr(module, FFN_ACT_ATTR, None), (nn.Identity, type(None)))):
            setattr(module, FFN_ACT_ATTR, nn.Identity())


def fuse_activations(model: nn.Module) -> list[str]:
    """Moves the GELU of every BERT-family FFN into its up projection's kernel, in place.

    A module with ``dense`` (a dynamic INT8 :class:`~sparsebert.nn.Int8Linear` or
    :class:`~sparsebert.nn.SparseInt8Linear`) and ``intermediate_act_fn`` (the exact GELU) gets
    ``dense.activation = "gelu"`` and ``intermediate_act_fn = nn.Identity()``: the kernel applies
    the GELU to each output tile while it is in registers, so the ``[tokens, intermediate]``
    activation is written once instead of written, read and written again. :func:`compress`
    calls it (``CompressConfig(fuse=True)``, the default); call it yourself on a model converted
    by hand. Weight-only layers, other activations and layers already fused are left as they
    are. Returns the names of the layers fused; :func:`unfuse_activations` undoes it.
    """
    fused = []
    for name, module in model.named_modules():
        dense = getattr(module, "dense", None)
        if _fusable(dense) and dense.activation == "none" and _is_exact_gelu(getattr(module, FFN_ACT_ATTR, None)):
            dense.activation = "gelu"
            fused.append(f"{name}.dense" if name else "dense")
    fused_layout(model)
    return fused


def unfuse_activations(model: nn.Module) -> list[str]:
    """The inverse of :func:`fuse_activations`: every FFN layer that applies the GELU gets
    ``activation = "none"`` and its module an ``nn.GELU()`` again. Returns the layers' names."""
    unfused = []
    for name, module in model.named_modules():
        dense = getattr(module, "dense", None)
        if _fusable(dense) and dense.activation == "gelu" and isinstance(getattr(module, FFN_ACT_ATTR, None),
                                                                          nn.Identity):
            dense.activation = "none"
            setattr(module, FFN_ACT_ATTR, nn.GELU())
            unfused.append(f"{name}.dense" if name else "dense")
    return unfused


def is_compressed(model: nn.Module) -> bool:
    return getattr(model, STATE_ATTR, None) is not None


def compile_model(model: nn.Module) -> nn.Module:
    """``model.compile(dynamic=True)``: in place, so the model stays the object the caller holds
    (``save``, ``report`` and ``decompress`` see it as before). Dynamic shapes: batches of other
    sizes and token counts reuse the compiled code instead of compiling again for each."""
    model.compile(dynamic=True)
    return model


def decompress(model: nn.Module) -> nn.Module:
    """A dense copy of a compressed model: every converted layer back to ``nn.Linear`` with the
    weight it multiplies by (dequantized for INT8), the padded encoder and transformers' SDPA
    attention. The baseline of ``sparsebert bench`` (same weights, stock kernels)."""
    dense = copy.deepcopy(model)
    from .hf import set_attention_precision, unfuse_ffn, unfuse_layer_norms, unfuse_qkv, unmark_compressed, use_unpadded

    if is_compressed(dense):
        delattr(dense, STATE_ATTR)
    dense._compiled_call_impl = None  # the stock baseline runs eager
    unfuse_ffn(dense)
    unfuse_activations(dense)
    unfuse_layer_norms(dense)
    unfuse_qkv(dense)
    unmark_compressed(dense)
    use_unpadded(dense, enabled=False)  # compress accepted the model, so it is BERT-family
    dense.set_attn_implementation("sdpa")
    set_attention_precision(dense, "fp32")
    for name, module in list(dense.named_modules()):
        if isinstance(module, CONVERTED):
            w = module.to_dense()
            dtype = module.bias.dtype if module.bias is not None else (
                w.dtype if isinstance(module, SparseLinear) else torch.float32)
            lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(w.float())
                if module.bias is not None:
                    lin.bias.copy_(module.bias.float())
            parent, _, attr = name.rpartition(".")
            setattr(dense.get_submodule(parent) if parent else dense, attr, lin.to(dtype))
    return dense.eval()

