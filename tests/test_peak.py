"""sparsebert._C.peak_ops: the CPU peaks the benchmarks' roofline columns divide by."""

import pytest
import torch

import sparsebert
from sparsebert import _C

LEVELS = ["scalar", "avx2", "avx512", "avx512bf16", "amx"]


def level_at_least(name: str) -> bool:
    return LEVELS.index(sparsebert.detected_isa()) >= LEVELS.index(name)


@pytest.mark.parametrize("kind, needs, ops_per_iter_per_thread", [
    ("fp32_fma", "avx2", None), ("bf16_dot", "avx512bf16", 16 * 32 * 2), ("int8_vnni", "avx512bf16", 16 * 64 * 2)])
def test_peak_counts_its_operations(kind, needs, ops_per_iter_per_thread):
    if not level_at_least(needs):
        pytest.skip(f"CPU lacks {needs}")
    ops, secs, threads = _C.peak_ops(kind, 1000)
    assert threads == torch.get_num_threads() and secs > 0
    if ops_per_iter_per_thread is None:  # 16 zmm chains x 16 lanes, or 12 ymm chains x 8 lanes
        per = 16 * 16 * 2 if level_at_least("avx512") else 12 * 8 * 2
    else:
        per = ops_per_iter_per_thread
    assert ops == 1000 * per * threads


def test_peak_follows_the_active_level(monkeypatch):
    if not level_at_least("avx512"):
        pytest.skip("CPU lacks avx512")
    monkeypatch.setenv("SPARSEBERT_ISA", "avx2")
    ops, _, threads = _C.peak_ops("fp32_fma", 10)
    assert ops == 10 * 12 * 8 * 2 * threads  # the ymm loop
    with pytest.raises(ValueError, match="bf16_dot peak needs the avx512bf16 ISA level; the active level is avx2"):
        _C.peak_ops("bf16_dot", 10)
    for level in ("avx2", "avx512"):
        monkeypatch.setenv("SPARSEBERT_ISA", level)
        monkeypatch.setenv("SPARSEBERT_VNNI", "0")
        with pytest.raises(ValueError, match=f"int8_vnni peak needs the avx2 ISA level and VNNI in use; the active "
                                             f"level is {level}, INT8 dot product none"):
            _C.peak_ops("int8_vnni", 10)


@pytest.mark.skipif(sparsebert.int8_dot() == "none", reason="CPU without VNNI")
def test_int8_peak_follows_the_dot_product_in_use(monkeypatch):
    """The INT8 peak is that of the vpdpbusd the INT8 kernels use: 256 bits at the avx2 level (12
    ymm chains x 32 multiply-adds), 512 from the avx512 level up where the CPU has AVX512_VNNI."""
    monkeypatch.setenv("SPARSEBERT_ISA", "avx2")
    ops, _, threads = _C.peak_ops("int8_vnni", 10)
    assert sparsebert.int8_dot() in ("avx-vnni", "avx512-vnni-256")
    assert ops == 10 * 12 * 32 * 2 * threads
    if sparsebert.int8_dot() != "none" and level_at_least("avx512"):
        monkeypatch.setenv("SPARSEBERT_ISA", "avx512")
        if sparsebert.int8_dot() == "avx512-vnni":
            ops, _, threads = _C.peak_ops("int8_vnni", 10)
            assert ops == 10 * 16 * 64 * 2 * threads


@pytest.mark.parametrize("kind, per_tile_op", [("int8_amx", 16 * 16 * 64 * 2), ("bf16_amx", 16 * 16 * 32 * 2),
                                                ("int8_amx_loaded", 16 * 16 * 64 * 2)])
def test_amx_peaks(monkeypatch, kind, per_tile_op):
    """Four accumulator tiles, one tile multiply each per iteration (int8_amx_loaded: with the
    kernel's two A and two B tile loads between them); the amx level only."""
    if not level_at_least("amx"):
        with pytest.raises(ValueError, match=f"{kind} peak needs the amx ISA level; the active level is "):
            _C.peak_ops(kind, 10)
        return
    ops, secs, threads = _C.peak_ops(kind, 1000)
    assert ops == 1000 * 4 * per_tile_op * threads and secs > 0
    monkeypatch.setenv("SPARSEBERT_ISA", "avx512bf16")
    with pytest.raises(ValueError, match=f"{kind} peak needs the amx ISA level; the active level is avx512bf16"):
        _C.peak_ops(kind, 10)


@pytest.mark.parametrize("kind, iters, message", [
    ("fp64", 10, "kind='fp64' is not a peak"), ("fp32_fma", 0, "iters must be >= 1, got 0")])
def test_peak_rejects_bad_arguments(kind, iters, message):
    with pytest.raises(ValueError, match=message):
        _C.peak_ops(kind, iters)
