"""``sparsebert.report``: what :func:`sparsebert.compress` did to each layer, and why."""

from __future__ import annotations

import sys

from torch import nn

from .compress import STATE_ATTR, is_compressed
from .nn import Int8Linear, SparseInt8Linear, SparseLinear

__all__ = ["Report", "report", "print_report", "format_report"]


class Report(list):
    """The rows of :func:`report` (one dict per converted layer), with ``totals`` and
    ``calibration`` as attributes; ``to_dict()`` for JSON."""

    def __init__(self, rows, totals: dict, calibration: dict | None):
        super().__init__(rows)
        self.totals = totals
        self.calibration = calibration

    def to_dict(self) -> dict:
        return {"layers": list(self), "totals": self.totals, "calibration": self.calibration}


def _bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.buffers()) + list(module.parameters()))


def _density(module: nn.Module) -> float:
    if isinstance(module, (SparseLinear, SparseInt8Linear)):
        return 1.0 - module.sparsity
    w = module.weight if isinstance(module, nn.Linear) else module.to_dense()
    return float((w != 0).sum()) / max(1, w.numel())


def report(model: nn.Module) -> Report:
    """Per converted layer a dict with ``name``, ``shape`` (out, in), ``format``, ``act_quant``,
    ``smooth``, ``activation`` (fused into the kernel: ``"none"`` or ``"gelu"``), ``density``
    (share of the weight stored, 0..1), ``bytes``, ``dense_bytes`` (fp32 weight and bias),
    ``speedup`` (measured at the compress token count over the dense layer), ``reason`` and
    ``fused_into`` (the layer it runs in, ``...attention.self.qkv`` for a query, key or value
    projection fused by :func:`sparsebert.hf.fuse_qkv`, else None).
    Returns the list of rows (a :class:`Report`), whose ``totals`` attribute holds the sizes
    before and after, the expected speedup of these layers' GEMMs and the layers slower than
    dense, and ``calibration`` the calibrated INT8 choice's result (or None)."""
    if not is_compressed(model):
        raise ValueError(f"{type(model).__name__} is not compressed: run sparsebert.compress first")
    state = getattr(model, STATE_ATTR)
    rows = []
    t_dense = t_new = 0.0
    parts = _fused_parts(model)
    for name, info in state["layers"].items():
        module = parts[name][1] if name in parts else model.get_submodule(name)
        n, k = module.out_features, module.in_features
        dense_bytes = 4 * (n * k + (n if getattr(module, "bias", None) is not None else 0))
        timings = info.get("timings") or {}
        fmt = info["format"]
        if fmt in timings and "dense" in timings:
            t_dense += timings["dense"]
            t_new += timings[fmt]
        rows.append({
            "name": name,
            "shape": [n, k],
            "format": fmt,
            "act_quant": info.get("act_quant"),
            "smooth": bool(info.get("smooth")),
            "activation": getattr(module, "activation", "none"),
            "density": _density(module),
            "bytes": _bytes(module),
            "dense_bytes": dense_bytes,
            "speedup": info.get("speedup"),
            "reason": info.get("reason", ""),
            "fused_into": parts[name][0] if name in parts else None,
        })
    before = sum(r["dense_bytes"] for r in rows)
    after = sum(r["bytes"] for r in rows)
    converted = {r["name"] for r in rows} | {r["fused_into"] for r in rows if r["fused_into"]}
    rest_fp32 = rest_now = 0
    for key, t in _unique_tensors(model).items():
        if key.rpartition(".")[0] in converted:
            continue
        rest_now += t.numel() * t.element_size()
        rest_fp32 += t.numel() * (4 if t.is_floating_point() else t.element_size())
    totals = {
        "layers": len(rows),
        "converted_bytes_before": before,
        "converted_bytes_after": after,
        "model_bytes_after": after + rest_now,
        "model_bytes_before_fp32": before + rest_fp32,
        "expected_gemm_speedup": (t_dense / t_new) if t_new else None,
        "slower_than_dense": [r["name"] for r in rows if r["speedup"] is not None and r["speedup"] < 1.0],
    }
    return Report(rows, totals, state.get("calibration"))


def _fused_parts(model: nn.Module) -> dict:
    """{projection name: (name of the fused layer, the projection split from it)} for the
    self-attention modules whose query, key and value run as one layer."""
    try:
        from .hf import QKV_ATTR, fused_qkv, qkv_parts
    except ImportError:  # pragma: no cover - transformers is a dependency of the model level
        return {}
    out = {}
    for name in fused_qkv(model):
        prefix = f"{name}." if name else ""
        for attr, part in qkv_parts(model.get_submodule(name)).items():
            out[prefix + attr] = (prefix + QKV_ATTR, part)
    return out


def _unique_tensors(model: nn.Module) -> dict:
    """Every parameter and buffer of the model once (tied weights counted once), by name."""
    out, seen = {}, set()
    for key, t in list(model.named_parameters()) + list(model.named_buffers()):
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else key
        if ident not in seen:
            seen.add(ident)
            out[key] = t
    return out


def _mb(b: int) -> str:
    return f"{b / 2**20:.1f} MB"


def format_report(rep: Report) -> str:
    """The report as a markdown table plus a totals line."""
    lines = ["| layer | shape | format | density | size | speedup | why |", "|---|---|---|---|---|---|---|"]
    for r in rep:
        fmt = (r["format"] + (f" {r['act_quant']}" if r["act_quant"] else "") + (" +smooth" if r["smooth"] else "")
               + (f" +{r['activation']}" if r.get("activation", "none") != "none" else "")
               + (" (fused qkv)" if r.get("fused_into") else ""))
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['name']} | {r['shape'][0]}x{r['shape'][1]} | {fmt} | {r['density']:.2f} | "
                     f"{_mb(r['bytes'])} | {sp} | {r['reason']} |")
    t = rep.totals
    gemm = "n/a" if t["expected_gemm_speedup"] is None else f"{t['expected_gemm_speedup']:.2f}x"
    lines.append("")
    lines.append(f"{t['layers']} layers: {_mb(t['converted_bytes_before'])} -> {_mb(t['converted_bytes_after'])} "
                 f"(fp32 before); whole model {_mb(t['model_bytes_before_fp32'])} -> {_mb(t['model_bytes_after'])}; "
                 f"expected speedup of these layers' GEMMs {gemm}; "
                 + ("no layer slower than dense" if not t["slower_than_dense"]
                    else f"SLOWER than dense: {', '.join(t['slower_than_dense'])}"))
    cal = rep.calibration
    if cal:
        lines.append(f"calibration: min cosine {cal['min_cosine']:.5f} on {cal['examples']} examples "
                     f"(budget {cal['budget']}, {'met' if cal['met'] else 'NOT met'}; all layers at their fastest "
                     f"INT8 mode: {cal['min_cosine_all_fastest']:.5f})")
    return "\n".join(lines)


def print_report(model_or_report, file=None) -> None:
    rep = model_or_report if isinstance(model_or_report, Report) else report(model_or_report)
    print(format_report(rep), file=file or sys.stdout)
