"""Several Python threads running one converted model get exactly the results of a sequential
run; changing torch's thread count between calls is respected and changes nothing."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from sparsebert import CompressConfig, compress
from model_helpers import first_output, tiny_bert, tiny_inputs

CONFIGS = {
    "sparse_int8_unpadded": CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic", kernel="sparse",
                                           attention="unpadded"),
    "int8_sparsebert_attention": CompressConfig(int8="dynamic", kernel="dense"),
    "sparse_fp32": CompressConfig(sparsity=0.75, block_size=(16, 16), kernel="sparse"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_concurrent_forwards_equal_sequential(name):
    model = compress(tiny_bert("BertForSequenceClassification"), CONFIGS[name])
    inputs = [tiny_inputs(batch=1 + i % 3, seq=8 + i, seed=i) for i in range(12)]
    sequential = [first_output(model, x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda x: first_output(model, x), inputs * 3))
    for i, out in enumerate(concurrent):
        assert torch.equal(out, sequential[i % len(inputs)]), i


def test_thread_count_changes_are_respected():
    model = compress(tiny_bert(), CONFIGS["sparse_int8_unpadded"])
    x = tiny_inputs(batch=4, seq=32)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            assert torch.get_num_threads() == n
            outs.append(first_output(model, x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
