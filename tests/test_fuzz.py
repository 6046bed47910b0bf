"""Generated cases (hypothesis) for every op on every CPU ISA path this machine has: random
shapes including 0, 1 and primes, block sizes and patterns (empty block rows, full rows,
all-zero and fully dense weights), dtypes, non-contiguous inputs (slices, transposes, expanded
views), non-finite values, magnitudes that saturate int8. Each case is compared with the op's
reference under the tolerance rules of the other tests.

``make test`` runs the ``ci`` profile (a few dozen cases per op); ``make fuzz`` runs the
``fuzz`` profile (10,000 cases per op) and prints hypothesis' statistics with the count.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparsebert
from conftest import assert_linear_close, supported_isas
from sparsebert.ops import (
    add_layer_norm,
    attention,
    attention_varlen,
    bsr_int8_linear,
    bsr_int8_linear_reference,
    bsr_linear,
    int8_linear,
    int8_linear_reference,
    int8_weight_only_linear,
    int8_weight_only_linear_reference,
    pack_bsr,
)
from sparsebert.ops.int8_format import (
    ACT_QUANT_MODES,
    pack_int8_bsr,
    pack_int8_dense,
    pack_int8_weight_only,
    quantize_symmetric,
    weight_sum,
)
from test_attention import assert_attention_close, assert_int8_close
from test_layer_norm import assert_ln_close
from sparsebert.ops.int8_linear import ACTIVATIONS
from test_int8_linear import assert_matches_reference

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DIMS = st.sampled_from([0, 1, 2, 3, 5, 7, 13, 16, 31, 32, 33, 64, 97])
BLOCKS = st.tuples(st.sampled_from([1, 2, 3, 4, 8, 16, 32]), st.sampled_from([1, 2, 3, 4, 8, 16, 32]))
PATTERNS = st.sampled_from(["random", "empty", "dense", "empty_rows", "one_block"])
FLOATS = st.sampled_from([torch.float32, torch.bfloat16])
PRECISIONS = st.sampled_from(["fp32", "bf16"])


class isa_forced:
    """SPARSEBERT_ISA set for the duration of one generated case."""

    def __init__(self, isa):
        self.isa = isa

    def __enter__(self):
        self.before = os.environ.get("SPARSEBERT_ISA")
        os.environ["SPARSEBERT_ISA"] = self.isa
        assert sparsebert.active_isa() == self.isa

    def __exit__(self, *exc):
        if self.before is None:
            os.environ.pop("SPARSEBERT_ISA", None)
        else:
            os.environ["SPARSEBERT_ISA"] = self.before


ISAS = st.sampled_from(supported_isas())


def seed_torch(data):
    """Every tensor of a case comes from a seed hypothesis drew, so a failure replays exactly."""
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="torch seed"))


def pattern_weight(data, n, k, block_size):
    """A float [n, k] weight whose zero blocks follow the drawn pattern."""
    br, bc = block_size
    nb, ncb = -(-n // br), -(-k // bc)
    kind = data.draw(PATTERNS, label="pattern")
    if kind == "random":
        keep = torch.rand(nb, ncb) < data.draw(st.floats(0.0, 1.0), label="density")
    elif kind == "empty":
        keep = torch.zeros(nb, ncb, dtype=torch.bool)
    elif kind == "dense":
        keep = torch.ones(nb, ncb, dtype=torch.bool)
    elif kind == "empty_rows":
        keep = torch.rand(nb, ncb) < 0.6
        keep[::2] = False
    else:
        keep = torch.zeros(nb, ncb, dtype=torch.bool)
        if nb and ncb:
            keep[nb // 2, ncb // 2] = True
    mask = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:n, :k]
    return torch.randn(n, k) * mask


def layout(data, x):
    """x as it is, an equal non-contiguous view of it (transposed copy, slice), or its first row
    expanded over all rows (stride 0); the caller computes its reference from what this returns."""
    kind = data.draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"]), label="layout")
    m, k = x.shape
    if kind == "transposed":
        return x.t().contiguous().t()
    if kind == "sliced":
        big = torch.randn(m, k + 5).to(x.dtype)
        big[:, 2:2 + k] = x
        return big[:, 2:2 + k]
    if kind == "expanded" and m > 0:
        return x[:1].expand(m, k)
    return x


@given(data=st.data(), isa=ISAS, m=DIMS, n=DIMS, k=DIMS, block_size=BLOCKS, dtype=FLOATS,
       bias=st.booleans(), nonfinite=st.sampled_from([None, "nan", "inf", "-inf"]))
def test_bsr_linear(data, isa, m, n, k, block_size, dtype, bias, nonfinite):
    x, w, b, packed = bsr_case(data, m, n, k, block_size, dtype, bias, nonfinite)
    with isa_forced(isa):
        out = bsr_linear(x, *packed, b, (n, k), block_size)
    check_like_dense(out, x, w, b)


def bsr_case(data, m, n, k, block_size, dtype, bias, nonfinite):
    """(x, dense weight, bias, (values, crow, col)) of one generated block-sparse case."""
    seed_torch(data)
    w = pattern_weight(data, n, k, block_size).to(dtype)
    x = torch.randn(m, k).to(dtype)
    if nonfinite and m and k:
        x[data.draw(st.integers(0, m - 1)), data.draw(st.integers(0, k - 1))] = float(nonfinite)
    x = layout(data, x)
    b = torch.randn(n).to(dtype) if bias else None
    return x, w, b, pack_bsr(w, block_size)


def check_like_dense(out, x, w, b):
    """The dense layer's result: same shape and dtype, same NaN/Inf pattern, and the finite rows
    within the linear tolerance rule."""
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert torch.equal(out.isnan(), ref.isnan()), "NaN pattern differs from the dense layer"
    assert torch.equal(out.isinf(), ref.isinf()), "Inf pattern differs from the dense layer"
    rows = torch.isfinite(ref).all(1) if ref.numel() else torch.ones(x.shape[0], dtype=torch.bool)
    assert_linear_close(out[rows], x[rows], w, b)


def int8_weight(data, n, k):
    w = torch.randn(n, k) * data.draw(st.sampled_from([1e-3, 1.0, 1e3]), label="weight scale")
    if n and data.draw(st.booleans(), label="zero row"):
        w[data.draw(st.integers(0, n - 1))] = 0
    return w


def activations(data, m, k, dtype):
    kind = data.draw(st.sampled_from(["normal", "huge", "constant", "zero", "one_sided", "outlier"]), label="x")
    x = torch.randn(m, k)
    if kind == "huge":
        x = x * 1e30
    elif kind == "constant":
        x = torch.full((m, k), 3.0)
    elif kind == "zero":
        x = torch.zeros(m, k)
    elif kind == "one_sided":
        x = F.gelu(x)
    elif kind == "outlier" and k:
        x[:, data.draw(st.integers(0, k - 1))] *= 100
    return layout(data, x.to(dtype))


@given(data=st.data(), isa=ISAS, m=DIMS, n=DIMS, k=DIMS, dtype=FLOATS, bias=st.booleans(),
       act_quant=st.sampled_from(ACT_QUANT_MODES), activation=st.sampled_from(ACTIVATIONS))
def test_int8_linear(data, isa, m, n, k, dtype, bias, act_quant, activation):
    seed_torch(data)
    q, s = quantize_symmetric(int8_weight(data, n, k))
    args = (pack_int8_dense(q), s, weight_sum(q), torch.randn(n).to(dtype) if bias else None, (n, k), act_quant,
            activation)
    x = activations(data, m, k, dtype)
    with isa_forced(isa):
        out = int8_linear(x, *args)
    assert_matches_reference(out, int8_linear_reference(x, *args))


@given(data=st.data(), isa=ISAS, m=DIMS, n=DIMS, k=DIMS, block_size=BLOCKS, dtype=FLOATS, bias=st.booleans(),
       act_quant=st.sampled_from(ACT_QUANT_MODES), activation=st.sampled_from(ACTIVATIONS))
def test_bsr_int8_linear(data, isa, m, n, k, block_size, dtype, bias, act_quant, activation):
    seed_torch(data)
    q, s = quantize_symmetric(int8_weight(data, n, k))
    q = q * (pattern_weight(data, n, k, block_size) != 0)
    values, crow, col = pack_int8_bsr(q, block_size)
    args = (values, s, weight_sum(q), crow, col, torch.randn(n).to(dtype) if bias else None, (n, k), block_size,
            act_quant, activation)
    x = activations(data, m, k, dtype)
    with isa_forced(isa):
        out = bsr_int8_linear(x, *args)
    assert_matches_reference(out, bsr_int8_linear_reference(x, *args))


@given(data=st.data(), isa=ISAS, m=DIMS, n=DIMS, k=DIMS, dtype=FLOATS, bias=st.booleans())
def test_int8_weight_only_linear(data, isa, m, n, k, dtype, bias):
    seed_torch(data)
    q, s = quantize_symmetric(int8_weight(data, n, k))
    args = (pack_int8_weight_only(q), s, torch.randn(n).to(dtype) if bias else None, (n, k))
    x = layout(data, torch.randn(m, k).to(dtype))
    with isa_forced(isa):
        out = int8_weight_only_linear(x, *args)
    ref = int8_weight_only_linear_reference(x, *args)
    w = q.float() * s[:, None]
    assert_linear_close(out, x, w.to(dtype) if dtype == torch.float32 else w, args[2])
    assert out.shape == ref.shape


def attention_inputs(data, b, h, s, d, dtype, masked):
    """q, k, v [b, h, s, d] from the drawn seed, and a key-padding mask of drawn lengths (masked)."""
    seed_torch(data)
    q, k, v = (torch.randn(b, h, s, d).to(dtype) for _ in range(3))
    mask = None
    if masked and b:
        lengths = torch.tensor([data.draw(st.integers(0, s)) for _ in range(b)])
        mask = torch.arange(s)[None, :] < lengths[:, None]
    return q, k, v, mask


@given(data=st.data(), isa=ISAS, b=st.sampled_from([0, 1, 2, 3]), h=st.sampled_from([1, 2, 3]),
       s=st.sampled_from([1, 2, 7, 16, 33, 70]), d=st.sampled_from([1, 8, 17, 32, 64]), dtype=FLOATS,
       masked=st.booleans(), precision=PRECISIONS)
def test_attention(data, isa, b, h, s, d, dtype, masked, precision):
    q, k, v, mask = attention_inputs(data, b, h, s, d, dtype, masked)
    with isa_forced(isa):
        out = attention(q, k, v, mask, precision=precision)
    assert_attention_close(out, q, k, v, mask, precision=precision)


@given(data=st.data(), isa=ISAS, h=st.sampled_from([1, 2, 4]), d=st.sampled_from([1, 8, 32, 64]), dtype=FLOATS,
       lengths=st.lists(st.sampled_from([0, 1, 2, 5, 16, 31, 64]), min_size=1, max_size=5), precision=PRECISIONS)
def test_attention_varlen(data, isa, h, d, dtype, lengths, precision):
    seed_torch(data)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, d).to(dtype) for _ in range(3))
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    max_len = max(lengths) + data.draw(st.integers(0, 3), label="max_seqlen slack")
    with isa_forced(isa):
        out = attention_varlen(q, k, v, cu, max_len, precision=precision)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):  # each sequence is attention on its own
        one = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]  # (1, H, len, D)
        assert_attention_close(out[start:end].transpose(0, 1)[None], *one, precision=precision)


@given(data=st.data(), isa=ISAS, b=st.sampled_from([0, 1, 2, 3]), h=st.sampled_from([1, 2, 3]),
       s=st.sampled_from([1, 2, 7, 16, 33, 70, 130]), d=st.sampled_from([1, 8, 17, 32, 64]), dtype=FLOATS,
       masked=st.booleans(), varlen=st.booleans())
def test_attention_int8(data, isa, b, h, s, d, dtype, masked, varlen):
    """precision="int8" against its definition (assert_int8_close), padded and packed."""
    q, k, v, mask = attention_inputs(data, b, h, s, d, dtype, masked)
    with isa_forced(isa):
        out = attention(q, k, v, mask, precision="int8")
        cu = torch.arange(0, b * s + 1, s, dtype=torch.int32)
        packed = [t.transpose(1, 2).reshape(b * s, h, d) for t in (q, k, v)]
        out_v = attention_varlen(*packed, cu, s, precision="int8") if varlen else None
    assert_int8_close(out, q, k, v, mask)
    if out_v is not None:
        assert_int8_close(out_v.reshape(b, s, h, d).transpose(1, 2), q, k, v)


@given(data=st.data(), isa=ISAS, rows=st.sampled_from([0, 1, 2, 3, 17, 64]), n=st.sampled_from([1, 2, 7, 16, 33, 100, 768]),
       dtype=FLOATS, offset=st.sampled_from([0.0, 1.0, 100.0]), eps=st.sampled_from([1e-12, 1e-5, 0.1]),
       strided=st.booleans())
def test_add_layer_norm(data, isa, rows, n, dtype, offset, eps, strided):
    seed_torch(data)
    x = torch.randn(rows, 2 * n if strided else n)[:, :n].to(dtype) + offset
    r = torch.randn(rows, n).to(dtype)
    w, b = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
    with isa_forced(isa):
        out = add_layer_norm(x, r, w, b, eps)
    if rows:
        assert_ln_close(out, x, r, w, b, eps)
    assert out.shape == x.shape and out.dtype == dtype


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
