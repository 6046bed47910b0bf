"""bench_recover's quick profile: every configuration times both phases of a recover run on the
real MiniLM-L6; bad arguments are usage errors naming the value."""

import json

import pytest

from conftest import import_benchmark


@pytest.fixture(scope="module")
def bench_recover():
    return import_benchmark("bench_recover")


def test_quick_profile(bench_recover, tmp_path, capsys):
    assert bench_recover.main(["--examples", "64", "--steps", "5", "--rounds", "1", "--json",
                               str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["config"] for r in rows] == list(bench_recover.CONFIGS)
    for r in rows:
        assert r["teacher_s"] > 0 and r["cached_s"] > 0
        assert f"| {r['config']} |" in out
    assert rows[0]["speedup_vs_first"] == 1.0
    # the header describes this benchmark's timing, not the per-call timer of the others
    assert "- timing: wall time between consecutive optimizer steps" in out and "untimed one" not in out


@pytest.mark.parametrize("argv,match", [
    (["--configs", "bylen-fp32,fast"], "unknown 'fast'"),
    (["--examples", "64", "--steps", "3"], "--steps 3 must exceed an epoch"),
    (["--rounds", "0"], "must be positive, got '0'"),
])
def test_bad_arguments(bench_recover, argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        bench_recover.main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err
