"""``sparsebert bench``: a compressed model against the stock ways to run the same weights, in
one run with :func:`sparsebert.measure.time_methods` (interleaved rounds, medians).

Baselines are built from the compressed model itself (:func:`sparsebert.decompress`: every
converted layer back to ``nn.Linear`` with the weight it multiplies by), so they run the same
weights: Hugging Face fp32 and bf16 (SDPA attention) and torch's dynamic INT8
(``torch.ao.quantization.quantize_dynamic`` on every Linear).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .compress import decompress
from .measure import Method, time_methods

__all__ = ["BASELINES", "bench", "make_inputs", "plot"]

BASELINES = ("fp32", "bf16", "quantize_dynamic")
LABELS = {"sparsebert": "sparsebert", "fp32": "HF fp32", "bf16": "HF bf16", "quantize_dynamic": "torch quantize_dynamic"}


def make_inputs(model: nn.Module, batch: int, seq: int, tokenizer=None, sentences=None, mixed: bool = False) -> dict:
    """A ``batch x seq`` input: real sentences packed to full length when a tokenizer and
    sentences are given, else random token ids. ``mixed``: lengths spread from seq/4 to seq,
    padded (the attention mask marks the padding)."""
    if tokenizer is not None and sentences:
        from .data import token_batch

        inputs = token_batch(tokenizer, sentences, batch, seq)
    else:
        vocab = model.config.vocab_size
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(min(1000, vocab - 1), vocab, (batch, seq), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if mixed and batch > 1:
        lengths = torch.linspace(max(2, seq // 4), seq, batch).round().long()
        keep = torch.arange(seq)[None, :] < lengths[:, None]
        inputs["attention_mask"] = keep.long()
        pad = getattr(model.config, "pad_token_id", 0) or 0
        inputs["input_ids"] = torch.where(keep, inputs["input_ids"], torch.full_like(inputs["input_ids"], pad))
    return inputs


def _baseline(dense: nn.Module, name: str) -> nn.Module:
    """Baseline ``name`` from the fp32 dense copy (which the fp32 baseline is, as it is)."""
    if name == "fp32":
        return dense
    if name == "bf16":
        return copy.deepcopy(dense).to(torch.bfloat16)
    if name == "quantize_dynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            return torch.ao.quantization.quantize_dynamic(copy.deepcopy(dense), {nn.Linear}, dtype=torch.qint8)
    raise ValueError(f"baseline must be one of {BASELINES}, got {name!r}")


def bench(model: nn.Module, shapes=((1, 128), (8, 128)), baselines=BASELINES, tokenizer=None, sentences=None,
          threads: int | None = None, mixed: bool = False, min_rounds: int = 5, progress: bool = False) -> list[dict]:
    """Times ``model`` and each baseline at every ``(batch, seq)`` of ``shapes``; one row per
    method and shape: ``method``, ``batch``, ``seq``, ``ms`` (median), ``tokens_per_s``,
    ``speedup_vs_fp32``."""
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {b!r}")
    for shape in shapes:
        if len(shape) != 2 or not all(isinstance(v, int) and v > 0 for v in shape):
            raise ValueError(f"shapes must be (batch, seq) pairs of positive ints, got {shape!r}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    models = {"sparsebert": model.eval()}
    dense = decompress(model).float()  # once: every baseline runs these weights
    models.update({b: _baseline(dense, b).eval() for b in baselines})
    from tqdm.auto import tqdm

    rows = []
    for batch, seq in tqdm(shapes, desc="sparsebert bench", disable=not progress):
        inputs = make_inputs(model, batch, seq, tokenizer, sentences, mixed)
        real = int(inputs["attention_mask"].sum())
        with torch.inference_mode():
            timing = time_methods([Method(n, lambda i, m=m: m(**inputs)) for n, m in models.items()],
                                  min_rounds=min_rounds, max_rounds=max(min_rounds, 20), min_seconds=0.3)
        base = timing.median("fp32") if "fp32" in models else None
        for name in models:
            t = timing.median(name)
            rows.append({"method": name, "label": LABELS[name], "batch": batch, "seq": seq, "real_tokens": real,
                         "ms": t * 1e3, "tokens_per_s": real / t, "speedup_vs_fp32": None if base is None else base / t})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | batch x seq | ms | tokens/s | vs HF fp32 |", "|---|---|---|---|---|"]
    for r in rows:
        sp = "-" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}x"
        lines.append(f"| {r['label']} | {r['batch']}x{r['seq']} | {r['ms']:.1f} | {r['tokens_per_s']:.0f} | {sp} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str = "sparsebert bench") -> None:
    """A grouped bar chart of latency per method and shape, written to ``path`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib (pip install matplotlib)") from e
    shapes = list(dict.fromkeys(f"{r['batch']}x{r['seq']}" for r in rows))
    methods = list(dict.fromkeys(r["label"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(shapes), 3.6))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ys = [next((r["ms"] for r in rows if r["label"] == m and f"{r['batch']}x{r['seq']}" == s), 0) for s in shapes]
        ax.bar([j + i * width for j in range(len(shapes))], ys, width, label=m)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes)
    ax.set_ylabel("latency, ms (lower is better)")
    ax.set_xlabel("batch x tokens")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

