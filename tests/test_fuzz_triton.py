"""Generated cases for the Triton kernels, run by Triton's interpreter on CPU tensors at small
sizes (TRITON_INTERPRET=1, set in conftest.py), against the ops' references.

The interpreter runs a kernel program by program in Python, so each case costs tens of
milliseconds to seconds: ``make test`` runs a few per kernel, ``make fuzz`` ``TRITON_FUZZ_EXAMPLES``
(default 200) per kernel. Shapes, block sizes, sparsity patterns, dtypes, strides and
non-finite inputs as in tests/test_fuzz.py, within what the GPU path accepts (blocks of 16, 32 or
64; int8 blocks of at least 32 columns; per-token activation quantization; key-padding masks).
"""

import os

import pytest
import torch

pytest.importorskip("triton")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_attention import assert_attention_close  # noqa: E402
from test_fuzz import bsr_case, check_like_dense, layout, pattern_weight, seed_torch  # noqa: E402
from test_triton_kernels import assert_int8_close  # noqa: E402

from sparsebert import kernels  # noqa: E402
from sparsebert.ops import attention_varlen_reference, bsr_int8_linear_reference, int8_linear_reference  # noqa: E402
from sparsebert.ops.int8_format import pack_int8_bsr, pack_int8_dense, quantize_symmetric, weight_sum  # noqa: E402

FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
EXAMPLES = int(os.environ.get("TRITON_FUZZ_EXAMPLES", "200")) if FUZZING else 6
triton_cases = settings(max_examples=EXAMPLES, deadline=None, derandomize=not FUZZING,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SMALL = st.sampled_from([0, 1, 2, 5, 16, 17, 33, 64, 70])
GPU_BLOCKS = st.tuples(st.sampled_from([16, 32, 64]), st.sampled_from([16, 32, 64]))
GPU_FLOATS = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])


@triton_cases
@given(data=st.data(), m=SMALL, n=SMALL, k=SMALL, block_size=GPU_BLOCKS, dtype=GPU_FLOATS, bias=st.booleans(),
       nonfinite=st.sampled_from([None, None, "nan", "inf", "-inf"]))
def test_bsr_linear(data, m, n, k, block_size, dtype, bias, nonfinite):
    x, w, b, packed = bsr_case(data, m, n, k, block_size, dtype, bias, nonfinite)
    check_like_dense(kernels.bsr_linear(x, *packed, b, (n, k), block_size), x, w, b)


INT8_BLOCKS = st.tuples(st.sampled_from([16, 32, 64]), st.sampled_from([32, 64]))


@triton_cases
@given(data=st.data(), m=SMALL, n=SMALL, k=SMALL, dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       bias=st.booleans(), sparse=st.booleans(), block_size=INT8_BLOCKS)
def test_int8_linear(data, m, n, k, dtype, bias, sparse, block_size):
    seed_torch(data)
    w = pattern_weight(data, n, k, block_size) if sparse else torch.randn(n, k)
    w = w * data.draw(st.sampled_from([1e-3, 1.0, 1e3]), label="weight scale")
    q, scale = quantize_symmetric(w)
    x = layout(data, (torch.randn(m, k) * data.draw(st.sampled_from([1e-3, 1.0, 1e3]), label="x scale")).to(dtype))
    b = torch.randn(n).to(dtype) if bias else None
    if sparse:
        values, crow, col = pack_int8_bsr(q, block_size)
        args = (x, values, scale, weight_sum(q), crow, col, b, [n, k], list(block_size), "per_token")
        out, ref = kernels.bsr_int8_linear(*args), bsr_int8_linear_reference(*args)
    else:
        args = (x, pack_int8_dense(q), scale, weight_sum(q), b, [n, k])
        out, ref = kernels.int8_linear(*args), int8_linear_reference(*args)
    assert_int8_close(out, ref)


@triton_cases
@given(data=st.data(), b=st.sampled_from([1, 2, 3]), h=st.sampled_from([1, 2]), s=st.sampled_from([1, 2, 9, 17, 40]),
       d=st.sampled_from([16, 32, 40, 64]), dtype=GPU_FLOATS, masked=st.booleans())
def test_attention(data, b, h, s, d, dtype, masked):
    seed_torch(data)
    q, k, v = (torch.randn(b, h, s, d).to(dtype) for _ in range(3))
    mask = None
    if masked:
        lengths = data.draw(st.lists(st.integers(0, s), min_size=b, max_size=b), label="lengths")
        mask = torch.arange(s)[None, :] < torch.tensor(lengths)[:, None]
    assert_attention_close(kernels.attention(q, k, v, mask), q, k, v, mask)


@triton_cases
@given(data=st.data(), h=st.sampled_from([1, 2]), d=st.sampled_from([16, 32, 64]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       lengths=st.lists(st.integers(0, 40), min_size=1, max_size=4))
def test_attention_varlen(data, h, d, dtype, lengths):
    seed_torch(data)
    t = sum(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v = (torch.randn(t, h, d).to(dtype) for _ in range(3))
    max_len = max(lengths)
    out = kernels.attention_varlen(q, k, v, cu, max_len)
    ref = attention_varlen_reference(q, k, v, cu, max_len)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)
