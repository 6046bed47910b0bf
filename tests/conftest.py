import os

# The Triton kernels run in Triton's interpreter on CPU tensors (read when they are defined).
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import sparsebert  # noqa: E402

if os.environ.get("SPARSEBERT_EXPECT_SANITIZED") == "1" and "build/sanitize" not in sparsebert.__file__:
    # `make sanitize` must test the instrumented copy, not the normal build of the checkout.
    raise RuntimeError(f"make sanitize imported the uninstrumented sparsebert at {sparsebert.__file__}")

ISA_LEVELS = ("scalar", "avx2", "avx512", "avx512bf16", "amx")


def supported_isas() -> list[str]:
    best = ISA_LEVELS.index(sparsebert.detected_isa())
    return list(ISA_LEVELS[: best + 1])


def isa_params():
    """Every ISA level, the ones this CPU lacks skipped with the reason."""
    ok = supported_isas()
    return [
        pytest.param(isa, marks=pytest.mark.skipif(isa not in ok, reason=f"CPU lacks {isa}"))
        for isa in ISA_LEVELS
    ]


@pytest.fixture(params=isa_params())
def isa(request, monkeypatch):
    """Runs the test with SPARSEBERT_ISA forcing one ISA path of the CPU kernels."""
    monkeypatch.setenv("SPARSEBERT_ISA", request.param)
    assert sparsebert.active_isa() == request.param
    return request.param


# The INT8 kernels also depend on the CPU's dot-product instructions, which the levels do not all
# imply (sparsebert.int8_dot): each level with what this CPU has there and, below avx512bf16,
# without them too (SPARSEBERT_VNNI=0: the kernels of CPUs without VNNI).
INT8_PATHS = ("scalar", "avx2", "avx2-novnni", "avx512", "avx512-novnni", "avx512bf16", "amx")


def int8_path_params():
    ok = supported_isas()
    return [
        pytest.param(p, marks=pytest.mark.skipif(p.split("-")[0] not in ok, reason=f"CPU lacks {p.split('-')[0]}"))
        for p in INT8_PATHS
    ]


def set_int8_path(monkeypatch, path: str) -> None:
    """Forces one INT8 path: SPARSEBERT_ISA, and SPARSEBERT_VNNI=0 for the -novnni ones."""
    level, _, novnni = path.partition("-")
    monkeypatch.setenv("SPARSEBERT_ISA", level)
    if novnni:
        monkeypatch.setenv("SPARSEBERT_VNNI", "0")
    else:
        monkeypatch.delenv("SPARSEBERT_VNNI", raising=False)
    assert sparsebert.active_isa() == level
    assert (sparsebert.int8_dot() == "none") or not novnni


@pytest.fixture(params=int8_path_params())
def int8_path(request, monkeypatch):
    """Runs the test on one INT8 path (see INT8_PATHS)."""
    set_int8_path(monkeypatch, request.param)
    return request.param


@pytest.fixture
def two_threads():
    """torch on 2 threads for the test: the fused INT8 paths (row-pipelined layers, bsr_int8_ffn,
    bsr_int8_linear_add_layer_norm) split rows between threads and run from 2 on."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_linear_close(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None):
    """flash-attention's rule: the kernel's error against a float64 reference is at most twice
    the error of torch's own F.linear in the same dtype, plus sqrt(K) rounding units of the
    output scale. The kernels accumulate each output over K in order (rounding error grows like
    sqrt(K) u), where oneDNN sums in blocks; the floor keeps a case where torch happens to be
    exact from demanding exactness. A wrong block or index gives errors of order 1."""
    assert out.dtype == x.dtype
    ref = F.linear(x.double(), w.double(), None if bias is None else bias.double())
    assert out.shape == ref.shape
    if ref.numel() == 0:
        return
    same_dtype = F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
    err = (out.double() - ref).abs().max().item()
    base = (same_dtype.double() - ref).abs().max().item()
    k = max(1, x.shape[-1])
    unit = torch.finfo(x.dtype).eps * k**0.5 * max(1.0, ref.abs().max().item())
    assert err <= 2 * base + unit, f"max error {err:.3g} > 2 * torch's {base:.3g} + {unit:.3g}"


def block_sparse_weight(n, k, block_size, sparsity, dtype=torch.float32):
    """A random [n, k] weight with `sparsity` of its blocks zeroed (largest-norm blocks kept)."""
    w = torch.randn(n, k)
    mask = sparsebert.prune.block_magnitude_mask(w, sparsity, block_size)
    return (w * mask).to(dtype)


@pytest.fixture(autouse=True, scope="session")
def _no_env_isa():
    # A forced ISA from the caller's shell would silently narrow what the suite covers.
    os.environ.pop("SPARSEBERT_ISA", None)
    os.environ.pop("SPARSEBERT_VNNI", None)


@pytest.fixture(autouse=True, scope="session")
def _timing_cache(tmp_path_factory):
    # compress's per-layer timings go to a cache of the test session, not the user's.
    os.environ["SPARSEBERT_CACHE_DIR"] = str(tmp_path_factory.mktemp("sparsebert-cache"))


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def import_benchmark(name: str):
    """A script of benchmarks/ imported as a module (its directory on sys.path only meanwhile)."""
    import importlib
    import sys

    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCHMARKS)
