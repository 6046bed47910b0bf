"""The quick profile of `make soak`: benchmarks/soak.py on a tiny compressed model for a few
seconds (the full run is the real MiniLM-L6 for 10 minutes)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import import_benchmark

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def test_soak_quick_profile(tmp_path):
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, str(SOAK), "--model", "tiny", "--seconds", "6", "--clients", "3",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert result["served"] >= 30 and result["failures"] == [], result
    assert "soak passed" in r.stdout and "p99" in r.stdout


def test_soak_counts_a_wrong_answer_as_a_failure(tmp_path, monkeypatch):
    """The check can fail: a server whose answers differ from the sequential ones is caught."""
    soak = import_benchmark("soak")
    real = soak.Server.embed_digest
    calls = {"n": 0}

    def flaky(self, text):
        calls["n"] += 1
        d = real(self, text)
        return d if calls["n"] <= 256 or calls["n"] % 7 else "0" * 64  # wrong after the expected pass

    monkeypatch.setattr(soak.Server, "embed_digest", flaky)
    result = soak.soak("tiny", seconds=2, clients=2, max_requests=200)
    assert result["served"] > 0 and result["failures"], result
    assert all("sentence" in f for f in result["failures"])
