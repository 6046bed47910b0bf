"""Invalid calls across ops, modules, compress, save / load and the CLI, as a new user makes them.

Each case asserts the exception type and that the message names the bad value (or the file and
key it came from); none may crash the process, return a wrong answer or modify the model.
"""

import json
import re

import pytest
import torch
from torch import nn

import sparsebert
from sparsebert import CompressConfig, Int8Linear, SparseInt8Linear, SparseLinear, cli, compress, load, save
from sparsebert import ops
from sparsebert.ops import bsr_format, int8_format
from sparsebert.prune import block_magnitude_mask
from model_helpers import tiny_bert, tiny_inputs


def _linear(n=64, k=64, sparsity=0.5, block=(16, 16), seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.mul_(block_magnitude_mask(lin.weight, sparsity, block))
    return lin


def _bsr(n=64, k=64, block=(16, 16)):
    lin = _linear(n, k, block=block)
    values, crow, col = bsr_format.pack_bsr(lin.weight.detach(), block)
    return values, crow, col, lin.bias.detach()


def _int8(n=64, k=64):
    lin = _linear(n, k)
    q, scale = int8_format.quantize_symmetric(lin.weight.detach())
    return int8_format.pack_int8_dense(q), scale, int8_format.weight_sum(q), lin.bias.detach()


# --- ops -------------------------------------------------------------------------------------------

def op_cases():
    x = torch.randn(4, 64)
    v, crow, col, b = _bsr()
    w8, s8, ws8, b8 = _int8()
    q = torch.randn(1, 2, 8, 16)
    bad_crow = crow.clone()
    bad_crow[1], bad_crow[2] = bad_crow[2], bad_crow[1] - 1
    bad_col = col.clone()
    bad_col[0] = 99
    return [
        ("bsr x wrong in_features", lambda: ops.bsr_linear(torch.randn(4, 63), v, crow, col, b, (64, 64), (16, 16)),
         (ValueError, RuntimeError), r"63"),
        ("bsr x float64", lambda: ops.bsr_linear(x.double(), v, crow, col, b, (64, 64), (16, 16)),
         (ValueError, RuntimeError), r"(?i)double|float64"),
        ("bsr block size zero", lambda: ops.bsr_linear(x, v, crow, col, b, (64, 64), (0, 16)),
         ValueError, r"\(0, 16\)|0"),
        ("bsr block size not a pair", lambda: ops.bsr_linear(x, v, crow, col, b, (64, 64), 16),
         (ValueError, TypeError), r"16"),
        ("bsr col index out of range", lambda: ops.bsr_linear(x, v, crow, bad_col, b, (64, 64), (16, 16)),
         (ValueError, RuntimeError), r"99"),
        ("bsr crow not monotonic", lambda: ops.bsr_linear(x, v, bad_crow, col, b, (64, 64), (16, 16)),
         (ValueError, RuntimeError), r"(?i)crow"),
        ("bsr values count", lambda: ops.bsr_linear(x, v[:-1], crow, col, b, (64, 64), (16, 16)),
         (ValueError, RuntimeError), r"(?i)values"),
        ("bsr bias shape", lambda: ops.bsr_linear(x, v, crow, col, b[:10], (64, 64), (16, 16)),
         (ValueError, RuntimeError), r"10"),
        ("int8 scale shape", lambda: ops.int8_linear(x, w8, s8[:5], ws8, b8, (64, 64)),
         (ValueError, RuntimeError), r"5"),
        ("int8 unknown act_quant", lambda: ops.int8_linear(x, w8, s8, ws8, b8, (64, 64), "per_row"),
         (ValueError, RuntimeError), r"per_row"),
        ("int8 weight not int8", lambda: ops.int8_linear(x, w8.float(), s8, ws8, b8, (64, 64)),
         (ValueError, RuntimeError), r"(?i)int8|Char"),
        ("int8 x wrong in_features", lambda: ops.int8_linear(torch.randn(4, 32), w8, s8, ws8, b8, (64, 64)),
         (ValueError, RuntimeError), r"32"),
        ("attention head_dim mismatch", lambda: ops.attention(q, torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)),
         (ValueError, RuntimeError), r"8"),
        ("attention 3-D input", lambda: ops.attention(q[0], q[0], q[0]),
         (ValueError, RuntimeError), r"(?i)4-D|dim|\[2, 8, 16\]|3"),
        ("attention mask shape", lambda: ops.attention(q, q, q, torch.ones(1, 7, dtype=torch.bool)),
         (ValueError, RuntimeError), r"7"),
        ("varlen cu_seqlens not int32",
         lambda: ops.attention_varlen(q[0].transpose(0, 1), q[0].transpose(0, 1), q[0].transpose(0, 1),
                                           torch.tensor([0, 8]), 8),
         (ValueError, RuntimeError), r"(?i)int32|Long|int64"),
        ("varlen cu_seqlens past the tokens",
         lambda: ops.attention_varlen(q[0].transpose(0, 1), q[0].transpose(0, 1), q[0].transpose(0, 1),
                                           torch.tensor([0, 9], dtype=torch.int32), 9),
         (ValueError, RuntimeError), r"9"),
        ("varlen max_seqlen too small",
         lambda: ops.attention_varlen(q[0].transpose(0, 1), q[0].transpose(0, 1), q[0].transpose(0, 1),
                                           torch.tensor([0, 8], dtype=torch.int32), 4),
         (ValueError, RuntimeError), r"4"),
        ("quantize_activations unknown mode", lambda: int8_format.quantize_activations(x, "per_channel"),
         ValueError, r"per_channel"),
        ("pack_bsr 1-D weight", lambda: bsr_format.pack_bsr(torch.randn(64), (16, 16)),
         ValueError, r"\(64,\)"),
    ]


# --- modules ---------------------------------------------------------------------------------------

def module_cases():
    lin = _linear()
    v, crow, col, b = _bsr()
    return [
        ("from_dense of a Conv1d", lambda: SparseLinear.from_dense(nn.Conv1d(4, 4, 1)), TypeError, r"Conv1d"),
        ("Int8 from_dense of an Embedding", lambda: Int8Linear.from_dense(nn.Embedding(4, 4)), TypeError,
         r"Embedding"),
        ("SparseLinear bad backend", lambda: SparseLinear.from_dense(lin, (16, 16), backend="cuda"), ValueError,
         r"cuda"),
        ("SparseLinear negative in_features", lambda: SparseLinear(-1, 64, v, crow, col, b, (16, 16)), ValueError,
         r"-1"),
        ("SparseLinear bias shape", lambda: SparseLinear(64, 64, v, crow, col, b[:3], (16, 16)), ValueError,
         r"\(3,\)"),
        ("SparseLinear block 0", lambda: SparseLinear.from_dense(lin, (0, 4)), ValueError, r"0"),
        ("SparseLinear .half()", lambda: SparseLinear.from_dense(lin, (16, 16)).half(), (TypeError, ValueError),
         r"float16"),
        ("SparseLinear .double()", lambda: SparseLinear.from_dense(lin, (16, 16)).double(),
         (TypeError, ValueError), r"float64"),
        ("Int8Linear .half()", lambda: Int8Linear.from_dense(lin).half(), (TypeError, ValueError), r"float16"),
        ("SparseLinear forward wrong features", lambda: SparseLinear.from_dense(lin, (16, 16))(torch.randn(2, 65)),
         (ValueError, RuntimeError), r"65"),
        ("Int8Linear unknown act_quant", lambda: Int8Linear.from_dense(lin, act_quant="per_block"), ValueError,
         r"per_block"),
        ("SparseInt8 act_absmax shape", lambda: SparseInt8Linear.from_dense(lin, (16, 16), act_absmax=torch.ones(7)),
         ValueError, r"7"),
        ("from_spec unknown type",
         lambda: SparseLinear.from_spec({"type": "Int8Linear", "in_features": 4, "out_features": 4}), ValueError,
         r"Int8Linear"),
        ("load_state_dict wrong values shape",
         lambda: SparseLinear.from_dense(lin, (16, 16)).load_state_dict(
             {**SparseLinear.from_dense(lin, (16, 16)).state_dict(), "col_indices": torch.zeros(3, dtype=torch.int32)}),
         (ValueError, RuntimeError), r"col_indices"),
    ]


# --- compress ----------------------------------------------------------------------------------------

def compress_cases():
    return [
        ("sparsity 1.0", lambda: CompressConfig(sparsity=1.0), ValueError, r"1\.0"),
        ("sparsity a string", lambda: CompressConfig(sparsity="90%"), ValueError, r"90%"),
        ("sparsity dict value", lambda: CompressConfig(sparsity={"*.dense": -0.1}), ValueError, r"-0\.1"),
        ("int8 unknown", lambda: CompressConfig(int8="int4"), ValueError, r"int4"),
        ("dtype float16", lambda: CompressConfig(dtype="float16"), ValueError, r"float16"),
        ("attention unknown", lambda: CompressConfig(attention="flash"), ValueError, r"flash"),
        ("kernel unknown", lambda: CompressConfig(kernel="fast"), ValueError, r"fast"),
        ("block size 3-tuple", lambda: CompressConfig(block_size=(32, 32, 1)), (ValueError, TypeError),
         r"\(32, 32, 1\)"),
        ("min_cosine 2", lambda: CompressConfig(min_cosine=2), ValueError, r"2"),
        ("tokens 0", lambda: CompressConfig(tokens=0), ValueError, r"0"),
        ("compress a config dict", lambda: compress(tiny_bert(), {"sparsity": 0.5}), TypeError, r"dict"),
        ("compress a non-model", lambda: compress(nn.Linear(4, 4), CompressConfig()), TypeError, r"Linear"),
        ("compress twice", lambda: compress(compress(tiny_bert(), CompressConfig(kernel="dense")), CompressConfig()),
         ValueError, r"(?i)already compressed"),
        ("from_dict unknown field", lambda: CompressConfig.from_dict({"sparsity": 0.5, "speed": 3}), ValueError,
         r"speed"),
    ]


def test_a_rejected_call_leaves_the_model_untouched():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match="filter_fn"):
        compress(model, CompressConfig(sparsity=0.5), filter_fn="*.dense")
    assert not sparsebert.is_compressed(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(m) is not SparseLinear for m in model.modules())


# --- save / load ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    model = compress(tiny_bert("BertForSequenceClassification", vocab_size=30522, max_position_embeddings=128),
                     CompressConfig(sparsity=0.5, block_size=(16, 16), kernel="sparse"))
    save(model, root / "m")
    return root


def _copy(saved, tmp_path, name):
    import shutil

    shutil.copytree(saved / "m", tmp_path / name)
    return tmp_path / name


def serialize_cases(saved, tmp_path):
    def manifest_edit(edit):
        d = _copy(saved, tmp_path, "edited")
        m = json.loads((d / "sparsebert.json").read_text())
        edit(m)
        (d / "sparsebert.json").write_text(json.dumps(m))
        return lambda: load(d)

    def truncated():
        d = _copy(saved, tmp_path, "truncated")
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])
        return lambda: load(d)

    def future(m):
        m["format_version"] = 99

    return [
        ("load a missing directory", lambda: load(tmp_path / "nowhere"), (ValueError, FileNotFoundError),
         r"nowhere"),
        ("load a truncated file", truncated(), ValueError, r"model\.safetensors"),
        ("load a future format", manifest_edit(future), ValueError, r"99"),
        ("save into a non-empty dir", lambda: save(compress(tiny_bert(), CompressConfig(kernel="dense")), saved), (ValueError, FileExistsError),
         re.escape(str(saved))),
        ("save a non-model", lambda: save(nn.Linear(4, 4), tmp_path / "lin"), (TypeError, ValueError), r"Linear"),
    ]


# --- CLI -------------------------------------------------------------------------------------------------

def cli_cases(saved, tmp_path):
    tiny_bert(vocab_size=30522, max_position_embeddings=128).save_pretrained(tmp_path / "hf")
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("a fine film\t1\nno label here\n")
    return [
        ("cli compress missing model", ["compress", str(tmp_path / "nomodel"), "--out", str(tmp_path / "o")],
         r"nomodel"),
        ("cli compress sparsity 1.5", ["compress", str(tmp_path / "hf"), "--out", str(tmp_path / "o"), "--sparsity",
                                       "1.5"], r"1\.5"),
        ("cli report on a plain dir", ["report", str(tmp_path / "hf")], re.escape(str(tmp_path / "hf"))),
        ("cli compress block 32", ["compress", str(tmp_path / "hf"), "--out", str(tmp_path / "o"), "--block",
                                   "0x32"], r"0x32"),
        ("cli eval bad tsv line", ["eval", str(saved / "m"), "--data", str(bad_tsv)], r"bad\.tsv.*2|line 2"),
    ]


# --- the tests -----------------------------------------------------------------------------------------

def _check(fn, exc, pattern):
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    assert re.search(pattern, message), f"message does not name the bad value ({pattern!r}): {message!r}"
    assert "\n" not in message.strip() or len(message) < 2000


@pytest.mark.parametrize("case", op_cases(), ids=lambda c: c[0])
def test_ops(case):
    _check(*case[1:])


@pytest.mark.parametrize("case", module_cases(), ids=lambda c: c[0])
def test_modules(case):
    _check(*case[1:])


@pytest.mark.parametrize("case", compress_cases(), ids=lambda c: c[0])
def test_compress(case):
    _check(*case[1:])


def test_save_load(saved, tmp_path):
    for name, fn, exc, pattern in serialize_cases(saved, tmp_path):
        _check(fn, exc, pattern)


def test_cli(saved, tmp_path, capsys):
    cases = cli_cases(saved, tmp_path)
    capsys.readouterr()
    for name, argv, pattern in cases:
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: a usage error
            code = e.code
        assert code in (1, 2), name
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert re.search(pattern, err) and "Traceback" not in err, (name, err)


def test_case_count():
    """The suite holds at least 40 invalid calls."""
    n = len(op_cases()) + len(module_cases()) + len(compress_cases()) + 5 + 5
    assert n >= 40, n
