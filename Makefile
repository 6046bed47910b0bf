# sparsebert: `make demo` and `make test` work on a fresh machine from nothing.
#   make install  create .venv, install the pinned dependencies, build the extension
#   make demo     install, then run the main job on a real model and print the speedup table
#   make test     install, then the whole test suite and gpu-check (what CI runs)
#   make gpu-check  lower every Triton kernel to PTX/cubin for sm_80 and sm_90 (no GPU needed)
#   make bench    install, then the kernel and whole-model benchmarks (run on a quiet machine)
#   make fuzz     install, then 10,000 generated cases per op on every ISA path (tests/test_fuzz.py) and
#                 TRITON_FUZZ_EXAMPLES (200) per Triton kernel in the interpreter (tests/test_fuzz_triton.py)
#   make soak     install, then the real MiniLM-L6 compressed, served on loopback to 4 client threads for
#                 10 minutes: every answer checked, memory and rate watched (benchmarks/soak.py)
#   make bench-accuracy  fine-tune MiniLM-L6 on Rotten Tomatoes, prune with recovery, INT8: accuracy vs speed
#                 (at most ~55 min of CPU; runs in slices of 9 minutes, cached in build/bench_accuracy; --quick: at most ~12 min)
#   make sanitize the extension built with ASan + UBSan in build/sanitize, the kernel tests run under it
#   make bench-engines  venvs of the CPU engines (OpenVINO + NNCF, ONNX Runtime, DeepSparse) in build/engines
#   make bench-e2e      whole-model side by side with those engines (quiet machine, ~10 min per model)

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

.PHONY: install demo test gpu-check bench bench-accuracy bench-accuracy-quick fuzz soak sanitize bench-engines bench-e2e clean

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
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_fuzz.py tests/test_fuzz_triton.py \
		--hypothesis-show-statistics

soak: install
	mkdir -p results && $(PY) benchmarks/soak.py --minutes 10 --json results/soak.json

# A copy of the tracked tree in build/sanitize, built there with the sanitizers (the normal build
# in the checkout is left alone); python is not instrumented, so the runtimes are preloaded.
SAN_DIR := build/sanitize
SAN_TESTS := tests/test_bsr_linear.py tests/test_int8_linear.py tests/test_attention.py tests/test_fuzz.py \
	tests/test_sparse_linear.py tests/test_int8_modules.py
sanitize: install
	rm -rf $(SAN_DIR) && mkdir -p $(SAN_DIR)
	git ls-files -z | xargs -0 cp --parents -t $(SAN_DIR)
	cd $(SAN_DIR) && SPARSEBERT_SANITIZE=1 $(CURDIR)/$(PY) setup.py -q build_ext --inplace
	cd $(SAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 SPARSEBERT_EXPECT_SANITIZED=1 \
		$(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider $(SAN_TESTS)

bench: install
	$(PY) benchmarks/bench_linear.py
	$(PY) benchmarks/bench_attention.py
	$(PY) benchmarks/bench_compress.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_steps.py --fidelity

# bench_accuracy.py exits 3 when its time slice ends with work left (the cache keeps what is done).
bench-accuracy: install
	status=3; while [ $$status -eq 3 ]; do $(PY) benchmarks/bench_accuracy.py --budget-minutes 9; status=$$?; done; \
		exit $$status

bench-accuracy-quick: install
	status=3; while [ $$status -eq 3 ]; do $(PY) benchmarks/bench_accuracy.py --quick --budget-minutes 9; \
		status=$$?; done; exit $$status

bench-engines: install
	bash benchmarks/engines/setup_engines.sh

bench-e2e: bench-engines
	$(PY) benchmarks/bench_e2e.py --model bert-base --json results/e2e-bert-base.json --plot results/e2e-bert-base.png
	$(PY) benchmarks/bench_e2e.py --model minilm --json results/e2e-minilm.json --plot results/e2e-minilm.png
	$(PY) benchmarks/bench_e2e.py --profile --model bert-base

clean:
	rm -rf build $(VENV) sparsebert/_C*.so *.egg-info
