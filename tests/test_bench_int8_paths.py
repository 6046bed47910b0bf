"""bench_int8_paths' quick profile: every INT8 path of this CPU timed on one small layer, the
environment left as it was; bad arguments are usage errors naming the value."""

import json
import os

import pytest

import sparsebert
from conftest import import_benchmark, supported_isas


@pytest.fixture(scope="module")
def bench():
    return import_benchmark("bench_int8_paths")


def test_quick_profile(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPARSEBERT_ISA", raising=False)
    monkeypatch.delenv("SPARSEBERT_VNNI", raising=False)
    assert bench.main(["--shapes", "bert-base:attn_out", "--m", "1,8", "--blocks", "dense,32x32", "--rounds", "1",
                       "--scalar", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    expected = []
    for level in supported_isas():
        if level in ("avx2", "avx512"):
            expected.append(f"{level}, SPARSEBERT_VNNI=0")
        expected.append(level)
    assert sorted({r["path"] for r in rows}) == sorted(expected)
    assert len(rows) == len(expected) * 2 * 2  # paths x weights x M
    for r in rows:
        assert r["ms"] > 0 and r["gops"] > 0
        if "VNNI=0" in r["path"] or r["path"] == "scalar":
            assert r["int8_dot"] == "none"
        elif r["path"] in ("avx512bf16", "amx"):
            assert r["int8_dot"] == "avx512-vnni"  # every CPU of these levels has it
    assert "| bert-base:attn_out | 768->768 | 32x32 90% | 8 |" in out
    assert out.count("| bert-base:attn_out |") == 2 * 2  # one line per weights and M, every path in it
    assert "SPARSEBERT_ISA" not in os.environ and "SPARSEBERT_VNNI" not in os.environ
    assert sparsebert.active_isa() == sparsebert.detected_isa()


@pytest.mark.parametrize("argv,match", [
    (["--m", "0"], "--m: '0' is not a positive row count"),
    (["--blocks", "dense,3y3"], "--blocks: '3y3' is not dense or a block size"),
    (["--shapes", "gpt:ffn"], "--shapes: 'gpt:ffn' is not a model"),
    (["--sparsity", "1.5"], "--sparsity must be in [0, 1), got 1.5"),
])
def test_bad_arguments(bench, argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err
