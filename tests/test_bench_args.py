"""bench_linear and bench_attention refuse bad arguments with an argparse error naming the value
(exit 2) before they time anything, never a traceback."""

import pytest

from conftest import import_benchmark


@pytest.mark.parametrize("argv, named", [
    (["--dtypes", "float32"], "'float32' is not one of fp32, bf16"),
    (["--cache", "warm"], "'warm' is not hot or cold"),
    (["--blocks", "32x0"], "'32x0' is not a block size"),
    (["--blocks", "big"], "'big' is not a block size"),
    (["--pack", "1by4"], "'1by4' is not a block size"),
    (["--shapes", "bert-huge"], "'bert-huge' is not model[:layer]"),
    (["--shapes", "bert-base:ffn_middle"], "'bert-base:ffn_middle' is not model[:layer]"),
    (["--m", "0"], "'0' is not a positive number of tokens"),
    (["--sparsity", "1.0"], "'1.0' is not a sparsity in [0, 1)"),
    (["--threads", "two"], "'two' is not a positive number of threads"),
    (["--m", ","], "--m: no value given"),
])
def test_bench_linear_names_the_bad_value(capsys, argv, named):
    bench = import_benchmark("bench_linear")
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["--dtypes", "fp16"], "--dtypes: 'fp16' is not one of fp32, bf16"),
    (["--encoder-dtypes", "fp32,int8"], "--encoder-dtypes: 'int8' is not one of fp32, bf16"),
    (["--batches", "1,x"], "--batches: 'x' is not a positive int"),
    (["--seqs", "0"], "--seqs: '0' is not a positive int"),
    (["--threads", "0"], "--threads: 0 is not a positive number of threads"),
])
def test_bench_attention_names_the_bad_value(capsys, argv, named):
    bench = import_benchmark("bench_attention")
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    assert named in capsys.readouterr().err
