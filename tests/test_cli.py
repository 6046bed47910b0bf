import subprocess
import sys

import pytest

import sparsebert
from sparsebert import cli


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"sparsebert   {sparsebert.__version__}" in out
    assert f"detected={sparsebert.detected_isa()}" in out
    assert "sparsebert::bsr_linear" in out and "CPU" in out
    assert "threads" in out


def test_info_reports_forced_isa(monkeypatch, capsys):
    monkeypatch.setenv("SPARSEBERT_ISA", "scalar")
    cli.main(["info"])
    assert "active=scalar" in capsys.readouterr().out


def test_bad_isa_env(monkeypatch):
    monkeypatch.setenv("SPARSEBERT_ISA", "avx9000")
    with pytest.raises(ValueError, match="SPARSEBERT_ISA='avx9000' is not an ISA level"):
        sparsebert.active_isa()


def test_console_script():
    out = subprocess.run([sys.executable, "-m", "sparsebert.cli", "info"], capture_output=True, text=True, check=True)
    assert "cpu isa" in out.stdout
