"""bench_e2e --profile: the ops of one forward are recorded and replayed, and its table adds up."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import import_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_e2e():
    return import_benchmark("bench_e2e")


def test_recorded_calls_are_the_forward(bench_e2e):
    model, _ = bench_e2e.build_torch_method("tiny", "sb_p32_int8")
    inputs = bench_e2e.make_inputs(model, None, None, (2, 16, True))
    calls = bench_e2e.record_calls(model, inputs)
    names = [func._schema.name for func, *_ in calls]
    linears = sum(type(m).__name__ == "SparseInt8Linear" for m in model.modules())
    layers = model.config.num_hidden_layers
    assert linears == 4 * layers  # query, key and value as one layer
    assert names.count("sparsebert::bsr_int8_linear") == linears
    assert names.count("sparsebert::attention_varlen") == layers
    # compress fuses the FFN's GELU into the up projection: no aten::gelu is left
    assert names.count("aten::gelu") == 0
    gelu = [args for (_, args, *_), n in zip(calls, names)
            if n == "sparsebert::bsr_int8_linear" and any(isinstance(a, str) and a == "gelu" for a in args)]
    assert len(gelu) == layers
    # and each block's residual add + LayerNorm into one op; the embeddings' LayerNorm stays
    assert names.count("sparsebert::add_layer_norm") == 2 * layers
    assert names.count("aten::layer_norm") + names.count("aten::native_layer_norm") >= 1
    # Replaying a call computes what the forward computed: the first linear's output again.
    i = names.index("sparsebert::bsr_int8_linear")
    func, args, kwargs, mutable = calls[i]
    assert not mutable
    with torch.inference_mode():
        again = func(*args, **kwargs)
        again2 = func(*args, **kwargs)
    assert torch.equal(again, again2)
    times = bench_e2e.replay_times(calls, rounds=2)
    assert len(times) == len(calls) and min(times) >= 0.0
    assert sum(t for t, n in zip(times, names) if n == "sparsebert::bsr_int8_linear") > 0.0


def test_profile_table_adds_up(tmp_path):
    out = tmp_path / "profile.json"
    r = subprocess.run([sys.executable, str(BENCH / "bench_e2e.py"), "--profile", "--model", "tiny", "--shapes",
                        "1x16,2x16-mixed", "--profile-iters", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["shape"] for row in rows] == ["1x16", "2x16-mixed"]
    for row in rows:
        parts = row["parts_us"]
        # Every part plus the overhead is the wall time (the larger of the plain forward and the
        # replayed sum, so no part is negative).
        assert sum(parts.values()) == pytest.approx(row["wall_us"], rel=1e-9)
        assert parts["GEMM sparsebert::bsr_int8_linear"] > 0 and parts["attention"] > 0
        assert row["ops"] > 50
    assert "non-GEMM share" in r.stdout and "| LayerNorm |" in r.stdout and "| GELU |" not in r.stdout
    assert "| add + LayerNorm (fused) |" in r.stdout
