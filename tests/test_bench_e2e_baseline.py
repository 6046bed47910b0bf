"""bench_e2e --baseline: every selected sparsebert method also runs from another build of the package."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import import_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_e2e():
    return import_benchmark("bench_e2e")


def test_baseline_rows_are_sparsebert_methods_only(bench_e2e):
    specs = bench_e2e.select_specs("hf_fp32,sb_p32_int8,sb_int8_ai", baseline="/somewhere")
    keys = [s.key for s in specs]
    assert keys == ["hf_fp32", "sb_p32_int8", "sb_int8_ai", "sb_p32_int8@base", "sb_int8_ai@base"]
    base = {s.key: s for s in specs if s.baseline}
    assert base["sb_p32_int8@base"].method == "sb_p32_int8"
    assert base["sb_p32_int8@base"].weights == "p32" and "[baseline build]" in base["sb_p32_int8@base"].label
    assert [s.key for s in bench_e2e.select_specs("hf_fp32,sb_p32_int8")] == ["hf_fp32", "sb_p32_int8"]
    with pytest.raises(SystemExit, match="--baseline needs a sparsebert method"):
        bench_e2e.select_specs("hf_fp32", baseline="/somewhere")


def test_baseline_directory_is_checked(bench_e2e, tmp_path):
    with pytest.raises(SystemExit, match="no sparsebert package there"):
        bench_e2e.check_baseline(str(tmp_path))
    (tmp_path / "sparsebert").mkdir()
    (tmp_path / "sparsebert" / "__init__.py").write_text("")
    with pytest.raises(SystemExit, match="has no built extension"):
        bench_e2e.check_baseline(str(tmp_path))


def test_baseline_run_imports_the_other_package(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "sparsebert").symlink_to(ROOT / "sparsebert", target_is_directory=True)
    out = tmp_path / "e2e.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_e2e.py"), "--model", "tiny", "--methods",
                        "sb_p32_int8", "--baseline", str(base), "--shapes", "2x16", "--rounds", "2", "--max-rounds",
                        "2", "--min-seconds", "0", "--work-dir", str(tmp_path / "work"), "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[baseline build]" in r.stdout and f"run the sparsebert package in {base}" in r.stdout
    rows = {row["method"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"sb_p32_int8", "sb_p32_int8@base"}
    assert rows["sb_p32_int8@base"]["info"]["package"] == str(base / "sparsebert")
    assert rows["sb_p32_int8"]["info"]["package"] == str(ROOT / "sparsebert")
    assert rows["sb_p32_int8@base"]["ms"] > 0 and rows["sb_p32_int8"]["ms"] > 0


def test_baseline_commit_only_for_a_checkout_top(bench_e2e, tmp_path):
    inside = ROOT / "benchmarks"  # inside this checkout, not its top
    assert bench_e2e.baseline_commit(str(inside)) == ""
    assert bench_e2e.baseline_commit(str(tmp_path)) == ""
    if (ROOT / ".git").exists():
        assert bench_e2e.baseline_commit(str(ROOT)).startswith(" (git commit ")
