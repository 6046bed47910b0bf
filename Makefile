# sparsebert: `make demo` and `make test` work on a fresh machine from nothing.
#   make install  create .venv, install the pinned dependencies, build the extension
#   make demo     install, then run the main job on a real model and print the speedup table
#   make test     install, then the whole test suite and gpu-check (what CI runs)
#   make gpu-check  lower every Triton kernel to PTX/cubin for sm_80 and sm_90 (no GPU needed)
#   make bench    install, then the kernel and whole-model benchmarks (run on a quiet machine)
#   make fuzz     install, then 10,000 generated cases per op on every ISA path (tests/test_fuzz.py)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

# Caches inside the ignored build dir: nothing is written to the home directory.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/build/cache/torch_extensions
export TRITON_CACHE_DIR := $(CURDIR)/build/cache/triton
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/build/cache/inductor
export SPARSEBERT_CACHE_DIR := $(CURDIR)/build/cache/sparsebert
# Triton 3.9 warns unless the FP-fusion default is chosen explicitly; keep its current default.
export TRITON_DEFAULT_FP_FUSION := 1
# Nothing loads from a model hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h') setup.py pyproject.toml

.PHONY: install demo test gpu-check bench fuzz clean

install: $(VENV)/.built

$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $$(grep -E '^torch==' requirements.txt)
	$(PIP) install --no-deps -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

demo: install
	$(PY) benchmarks/bench_model.py

test: install
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory gpu-check

# Compiled kernels: never under the interpreter the tests use.
gpu-check: install
	env -u TRITON_INTERPRET $(PY) -m sparsebert.kernels.gpu_check

fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_fuzz.py --hypothesis-show-statistics

bench: install
	$(PY) benchmarks/bench_linear.py
	$(PY) benchmarks/bench_attention.py
	$(PY) benchmarks/bench_compress.py

clean:
	rm -rf build $(VENV) sparsebert/_C*.so *.egg-info
