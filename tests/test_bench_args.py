"""bench_linear and bench_attention refuse bad arguments with an argparse error naming the value
(exit 2) before they time anything, never a traceback."""

import pytest

from conftest import import_benchmark


@pytest.mark.parametrize("bench, argv, named", [
    ("bench_linear", ["--dtypes", "float32"], "'float32' is not one of fp32, bf16"),
    ("bench_linear", ["--cache", "warm"], "'warm' is not hot or cold"),
    ("bench_linear", ["--blocks", "32x0"], "'32x0' is not a block size"),
    ("bench_linear", ["--blocks", "big"], "'big' is not a block size"),
    ("bench_linear", ["--pack", "1by4"], "'1by4' is not a block size"),
    ("bench_linear", ["--shapes", "bert-huge"], "'bert-huge' is not model[:layer]"),
    ("bench_linear", ["--shapes", "bert-base:ffn_middle"], "'bert-base:ffn_middle' is not model[:layer]"),
    ("bench_linear", ["--m", "0"], "'0' is not a positive number of tokens"),
    ("bench_linear", ["--sparsity", "1.0"], "'1.0' is not a sparsity in [0, 1)"),
    ("bench_linear", ["--threads", "two"], "'two' is not a positive number of threads"),
    ("bench_linear", ["--m", ","], "--m: no value given"),
    ("bench_attention", ["--dtypes", "fp16"], "--dtypes: 'fp16' is not one of fp32, bf16"),
    ("bench_attention", ["--encoder-dtypes", "fp32,int8"], "--encoder-dtypes: 'int8' is not one of fp32, bf16"),
    ("bench_attention", ["--batches", "1,x"], "--batches: 'x' is not a positive int"),
    ("bench_attention", ["--seqs", "0"], "--seqs: '0' is not a positive int"),
    ("bench_attention", ["--threads", "0"], "--threads: 0 is not a positive number of threads"),
])
def test_a_bad_value_is_named(capsys, bench, argv, named):
    with pytest.raises(SystemExit) as e:
        import_benchmark(bench).main(argv)
    assert e.value.code == 2
    assert named in capsys.readouterr().err
