"""Packaging: one version source, the torch range check at import."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparsebert
from sparsebert import _version

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_source():
    assert sparsebert.__version__ == _version.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "sparsebert._version.__version__"' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M)  # no second, literal version
    lo, hi = _version.TORCH_RANGE
    assert f'"torch>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}"' in pyproject


@pytest.mark.parametrize("version", ["2.5.1", "2.14.0", "3.0.0+cpu"])
def test_torch_outside_the_range_is_refused_naming_both(monkeypatch, version):
    monkeypatch.setattr(torch, "__version__", version)
    with pytest.raises(ImportError, match=rf"sparsebert {re.escape(sparsebert.__version__)} supports "
                                          rf"torch >=2\.6,<2\.14, but torch {re.escape(version)} is installed"):
        sparsebert._check_torch()


def test_torch_inside_the_range_is_accepted(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    sparsebert._check_torch()


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "sparsebert.cli", "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == f"sparsebert {sparsebert.__version__}"
