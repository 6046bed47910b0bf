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
    # compress runs each FFN (up projection, GELU, down projection, residual add and LayerNorm)
    # as one op: no aten::gelu, and the other two projections stay bsr_int8_linear
    assert names.count("sparsebert::bsr_int8_ffn") == layers
    # the attention output projection and its residual add + LayerNorm are one op (the lean
    # encoder's layer plans); the QKV projection stays bsr_int8_linear
    assert names.count("sparsebert::bsr_int8_linear_add_layer_norm") == layers
    assert names.count("sparsebert::bsr_int8_linear") == linears - 3 * layers
    assert names.count("sparsebert::attention_varlen") == layers
    assert names.count("aten::gelu") == 0
    ffn = [args for (_, args, *_), n in zip(calls, names) if n == "sparsebert::bsr_int8_ffn"]
    assert all("gelu" in args for args in ffn)
    # the FFN's add + LayerNorm is inside bsr_int8_ffn; the embeddings' LayerNorm stays
    assert names.count("sparsebert::add_layer_norm") == 0
    assert names.count("aten::layer_norm") + names.count("aten::native_layer_norm") >= 1
    # The profile splits the fused FFN with its two projections as separate ops, which compute
    # its hidden activation and output again
    up, down = bench_e2e.ffn_probes(calls[names.index("sparsebert::bsr_int8_ffn")])
    func, args, kwargs, _ = calls[names.index("sparsebert::bsr_int8_ffn")]
    with torch.inference_mode():
        hidden = up[0](*up[1], **up[2])
        assert hidden.shape[-1] == model.config.intermediate_size
        assert torch.equal(down[0](*down[1]), torch.ops.sparsebert.bsr_int8_ffn.default(*args[:19]))
    # ... and the attention output projection with its add + LayerNorm as the projection alone
    call = calls[names.index("sparsebert::bsr_int8_linear_add_layer_norm")]
    (lin, lin_args, _, _), = bench_e2e.linear_norm_probes(call)
    func, args, kwargs, _ = call
    with torch.inference_mode():
        y = lin(*lin_args)
        assert torch.equal(torch.ops.sparsebert.add_layer_norm.default(y, *args[10:]), func(*args, **kwargs))
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


def test_profile_table_adds_up(tmp_path, bench_e2e):
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
        assert parts[bench_e2e.FFN_GEMM] > 0
        assert row["ops"] > 50
    assert "non-GEMM share" in r.stdout and "| LayerNorm |" in r.stdout and "| GELU |" not in r.stdout
    assert "| add + LayerNorm (fused) |" in r.stdout
