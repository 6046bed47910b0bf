#!/usr/bin/env bash
# The optional runtimes of benchmarks/bench_e2e.py, each in a venv of its own under build/engines/
# (git-ignored), never in the project's .venv:
#
#   export      onnx (+ protobuf, ml_dtypes) into .venv for torch.onnx.export, with --no-deps, and
#               a check that .venv's torch is still the one it had
#   ov_ort      OpenVINO + NNCF + ONNX Runtime              -> build/engines/ov_ort
#   deepsparse  DeepSparse 1.8 (Python <= 3.11, numpy < 2)  -> build/engines/deepsparse
#
# Usage: bash benchmarks/engines/setup_engines.sh [export] [ov_ort] [deepsparse]   (default: all three)
# Environment: PYTHON (interpreter for the engine venvs, default python3.11), VENV (the project's
# venv, default .venv), ENGINES_DIR (default build/engines), FORCE=1 (rebuild an existing venv).
# Every package is pinned in requirements-<name>.txt beside this script; only PyPI is needed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3.11}"
project_venv="${VENV:-$root/.venv}"
engines_dir="${ENGINES_DIR:-$root/build/engines}"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(export ov_ort deepsparse)

say() { printf '[setup_engines] %s\n' "$*" >&2; }

check_python() {  # $1: max minor version (empty: any)
    if ! command -v "$python" >/dev/null 2>&1; then
        say "no interpreter '$python' (set PYTHON=...)"; return 1
    fi
    local minor
    minor="$("$python" -c 'import sys; print(sys.version_info[0] * 100 + sys.version_info[1])')"
    if [ -n "${1:-}" ] && [ "$minor" -gt "$1" ]; then
        say "$python is $("$python" -V 2>&1); this venv needs Python <= 3.$(( $1 % 100 )) (set PYTHON=python3.11)"
        return 1
    fi
}

setup_export() {
    local py="$project_venv/bin/python"
    [ -x "$py" ] || { say "no $py: create the project venv first"; return 1; }
    local before after
    before="$("$py" -c 'import torch; print(torch.__version__)')"
    "$py" -m pip install --no-deps -r "$here/requirements-export.txt"
    after="$("$py" -c 'import torch; print(torch.__version__)')"
    if [ "$before" != "$after" ]; then
        say "torch changed from $before to $after in $project_venv: reinstall torch==$before"; return 1
    fi
    "$py" -c 'import onnx, google.protobuf, ml_dtypes; print("export: onnx", onnx.__version__)'
}

# $1: name, $2: python code that imports the runtimes and prints their versions
setup_venv() {
    local name="$1" probe="$2" dir="$engines_dir/$1"
    if [ -x "$dir/bin/python" ] && [ "${FORCE:-0}" != 1 ] && "$dir/bin/python" -c "$probe" >/dev/null 2>&1; then
        say "$name: $dir is already set up (FORCE=1 rebuilds it)"
        "$dir/bin/python" -c "$probe"
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$engines_dir"
    say "$name: creating $dir with $("$python" -V 2>&1)"
    "$python" -m venv "$dir"
    if ! "$dir/bin/python" -m pip install -r "$here/requirements-$name.txt"; then
        rm -rf "$dir"; say "$name: pip install failed"; return 1
    fi
    if "$dir/bin/python" -c 'import torch' >/dev/null 2>&1; then
        rm -rf "$dir"; say "$name: torch got installed, which these venvs must not have"; return 1
    fi
    if ! "$dir/bin/python" -c "$probe"; then
        rm -rf "$dir"; say "$name: the runtime does not import"; return 1
    fi
}

status=0
for t in "${targets[@]}"; do
    case "$t" in
        export)
            setup_export || status=1 ;;
        ov_ort)
            { check_python "" && setup_venv ov_ort \
                'import openvino, nncf, onnxruntime, onnx, sympy; from onnxruntime.transformers import optimizer; print("ov_ort: openvino", openvino.__version__, "nncf", nncf.__version__, "onnxruntime", onnxruntime.__version__, "onnx", onnx.__version__)'; } || status=1 ;;
        deepsparse)
            { check_python 311 && NM_DISABLE_ANALYTICS=1 setup_venv deepsparse \
                'import deepsparse, numpy, onnx; assert numpy.__version__.startswith("1."); print("deepsparse:", deepsparse.__version__, "numpy", numpy.__version__, "onnx", onnx.__version__)'; } || status=1 ;;
        *)
            say "unknown target '$t' (export, ov_ort, deepsparse)"; status=2 ;;
    esac
done
exit $status
