"""Which INT8 dot product the kernels use (sparsebert.int8_dot, SPARSEBERT_VNNI), and that every
INT8 path gives the same numbers: the int32 sums are exact on every path (vpdpbusd at 512 and
256 bits, int16 vpmaddwd, plain C++), and the epilogue is the same fp32 arithmetic, so the
outputs agree bit for bit, not just within a tolerance. With the GELU epilogue the vector paths
share one erf approximation and plain C++ has its own: there they agree within a few units in the
last place."""

import pytest
import torch

import sparsebert
from conftest import INT8_PATHS, set_int8_path, supported_isas
from sparsebert.nn import Int8Linear, SparseInt8Linear
from sparsebert.prune import block_magnitude_mask


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


FLAGS = cpu_flags()


def expected_dot(path: str) -> str:
    level, _, novnni = path.partition("-")
    if novnni or level == "scalar":
        return "none"
    if level in ("avx512", "avx512bf16", "amx") and "avx512_vnni" in FLAGS:
        return "avx512-vnni"
    if "avx_vnni" in FLAGS:
        return "avx-vnni"
    return "avx512-vnni-256" if "avx512_vnni" in FLAGS else "none"


SUPPORTED = [p for p in INT8_PATHS if p.split("-")[0] in supported_isas()]


@pytest.mark.skipif(not FLAGS, reason="no /proc/cpuinfo flags to compare with")
@pytest.mark.parametrize("path", SUPPORTED)
def test_int8_dot_by_path(monkeypatch, path):
    set_int8_path(monkeypatch, path)
    assert sparsebert.int8_dot() == expected_dot(path)


def test_default_is_the_widest_the_cpu_has(monkeypatch):
    monkeypatch.delenv("SPARSEBERT_ISA", raising=False)
    monkeypatch.delenv("SPARSEBERT_VNNI", raising=False)
    monkeypatch.setenv("SPARSEBERT_VNNI", "1")  # the default, spelled out
    assert sparsebert.int8_dot() == expected_dot(sparsebert.detected_isa())


@pytest.mark.parametrize("value", ["yes", "2", "off"])
def test_bad_vnni_value_is_named(monkeypatch, value):
    monkeypatch.setenv("SPARSEBERT_VNNI", value)
    with pytest.raises(ValueError, match=f"SPARSEBERT_VNNI='{value}' must be 0") as e:
        sparsebert.int8_dot()
    assert "Exception raised" not in str(e.value)  # the message, not a C++ backtrace
    layer = Int8Linear.from_dense(torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match=f"SPARSEBERT_VNNI='{value}'"):
        layer(torch.randn(2, 8))  # the kernels refuse too, rather than pick a path


@pytest.mark.skipif("avx512bf16" not in supported_isas(), reason="CPU lacks avx512bf16")
def test_vnni_off_is_refused_where_every_cpu_has_it(monkeypatch):
    monkeypatch.setenv("SPARSEBERT_ISA", "avx512bf16")
    monkeypatch.setenv("SPARSEBERT_VNNI", "0")
    with pytest.raises(ValueError, match="SPARSEBERT_VNNI=0 at the avx512bf16 level"):
        sparsebert.int8_dot()


def _layers(n, k, block, sparsity, activation):
    lin = torch.nn.Linear(k, n)
    if block is None:
        layer = Int8Linear.from_dense(lin)
    else:
        with torch.no_grad():
            lin.weight.mul_(block_magnitude_mask(lin.weight, sparsity, block))
        layer = SparseInt8Linear.from_dense(lin, block)
    layer.activation = activation
    return layer


@pytest.mark.parametrize("block,sparsity", [(None, 0.0), ((32, 32), 0.5), ((16, 16), 0.8), ((1, 4), 0.9)])
@pytest.mark.parametrize("act_quant", ["per_token", "per_tensor_asym"])
@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_int8_path_gives_the_same_numbers(monkeypatch, block, sparsity, act_quant, activation, dtype):
    layer = _layers(200, 300, block, sparsity, activation)
    layer.act_quant = act_quant
    outs = {}
    for m in (1, 5, 37, 130):
        x = torch.randn(m, 300).to(dtype)
        for path in SUPPORTED:
            set_int8_path(monkeypatch, path)
            with torch.inference_mode():
                outs.setdefault(m, {})[path] = layer(x)
    for m, by_path in outs.items():
        first, *rest = by_path.items()
        for path, out in rest:
            err = (out.float() - first[1].float()).abs().max().item()
            if activation == "none":
                assert torch.equal(out, first[1]), f"M={m}: {path} differs from {first[0]} by {err:.3g}"
            else:
                tol = 4 * torch.finfo(dtype).eps * max(1.0, first[1].float().abs().max().item())
                assert err <= tol, f"M={m}: {path} differs from {first[0]} by {err:.3g} > {tol:.3g}"
