"""bench_phases: samples split into a fast and a slow phase, and the per-phase medians."""

import pytest

from conftest import import_benchmark


@pytest.fixture(scope="module")
def bench_phases():
    return import_benchmark("bench_phases")


def sample(ms, dram):
    return {"forward_ms": ms, "vnni_gops": 940.0, "dram_gbs": dram, "l3_gbs": 155.0, "small_gbs": 60.0}


def test_two_phases_split_at_the_midpoint(bench_phases):
    samples = [sample(10.2, 37.0), sample(10.4, 38.0), sample(17.1, 60.0), sample(17.5, 61.0), sample(10.3, 37.5)]
    fast, slow = bench_phases.split_phases(samples)
    assert [s["forward_ms"] for s in fast] == [10.2, 10.4, 10.3]
    assert [s["forward_ms"] for s in slow] == [17.1, 17.5]
    rows = bench_phases.summary_rows(samples)
    assert rows[0][:4] == ["fast phase", "3", "10.3", "940.0"] and rows[0][4] == "37.5"
    assert rows[1][:3] == ["slow phase", "2", "17.3"] and rows[1][4] == "60.5"
    assert rows[2][0] == "slow / fast" and rows[2][2] == f"{17.3 / 10.3:.2f}x" and rows[2][4] == f"{60.5 / 37.5:.2f}x"


def test_one_phase_is_not_split(bench_phases):
    samples = [sample(10.0, 37.0), sample(12.9, 37.0)]  # 1.29x apart: noise, not two phases
    assert bench_phases.split_phases(samples) is None
    rows = bench_phases.summary_rows(samples)
    assert len(rows) == 1 and rows[0][:3] == ["all samples", "2", "11.4"]
    assert bench_phases.split_phases([]) is None


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--threads", "0"], ["--forwards", "-1"]])
def test_bad_arguments(bench_phases, argv):
    with pytest.raises(SystemExit) as e:
        bench_phases.main(argv)
    assert e.value.code == 2
