"""The command line: info, --version, exit codes, and compress -> report -> eval -> bench on a
saved directory."""

import json
import os
import subprocess
import sys

import pytest

import sparsebert
from sparsebert import cli
from model_helpers import tiny_bert


def run(*args, env=None, shell=False):
    full_env = {**os.environ, **(env or {})}
    cmd = args[0] if shell else [sys.executable, "-m", "sparsebert.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, shell=shell)


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"sparsebert   {sparsebert.__version__}" in out
    assert f"detected={sparsebert.detected_isa()}" in out
    assert "sparsebert::bsr_linear" in out and "CPU" in out
    assert "threads" in out


def test_info_reports_forced_isa(monkeypatch, capsys):
    monkeypatch.setenv("SPARSEBERT_ISA", "scalar")
    cli.main(["info"])
    assert "active=scalar" in capsys.readouterr().out


def test_bad_isa_env(monkeypatch):
    monkeypatch.setenv("SPARSEBERT_ISA", "avx9000")
    with pytest.raises(ValueError, match="SPARSEBERT_ISA='avx9000' is not an ISA level"):
        sparsebert.active_isa()


def test_info_with_a_bad_isa_is_one_line_and_fails():
    r = run("info", env={"SPARSEBERT_ISA": "avx9000"})
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "SPARSEBERT_ISA='avx9000' is not an ISA level" in r.stderr and "Exception raised" not in r.stderr


def test_info_reports_int8_dot(monkeypatch, capsys):
    monkeypatch.setenv("SPARSEBERT_ISA", "scalar")
    cli.main(["info"])
    assert "int8 dot     none (no VNNI: vpmaddwd, or plain C++ at the scalar level)\n" in capsys.readouterr().out
    monkeypatch.delenv("SPARSEBERT_ISA")
    cli.main(["info"])
    out = capsys.readouterr().out
    assert f"int8 dot     {sparsebert.int8_dot()} (" in out
    # the AMX tile kernels are named where they run, and only there
    assert ("AMX tiles (TDPBUSD)" in out) == (sparsebert.active_isa() == "amx")
    if sparsebert.int8_dot() != "none" and sparsebert.active_isa() in ("avx2", "avx512"):
        assert "SPARSEBERT_VNNI=0 turns it off" in out


def test_info_with_a_bad_vnni_value_is_one_line_and_fails():
    r = run("info", env={"SPARSEBERT_VNNI": "maybe"})
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "SPARSEBERT_VNNI='maybe' must be 0" in r.stderr and "Exception raised" not in r.stderr


def test_info_into_a_closed_pipe():
    r = run(f"{sys.executable} -m sparsebert.cli info | head -1", shell=True)
    assert r.returncode == 0 and r.stdout.startswith("sparsebert")
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_version_and_usage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"sparsebert {sparsebert.__version__}"
    for argv in ([], ["compress"], ["compress", "x", "--out", "y", "--block", "32"], ["bench", "x", "--batch", "0"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2, argv
    for sub in ("compress", "bench", "eval", "report", "info"):
        with pytest.raises(SystemExit) as e:
            cli.main([sub, "--help"])
        assert e.value.code == 0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random sequence classifier with the real MiniLM tokenizer (same vocabulary)."""
    from transformers import AutoTokenizer

    from sparsebert.data import minilm_path

    path = tmp_path_factory.mktemp("cli") / "model"
    tiny_bert("BertForSequenceClassification", vocab_size=30522, max_position_embeddings=128,
              num_labels=2).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def compressed_dir(model_dir):
    out = model_dir.parent / "compressed"
    assert cli.main(["compress", str(model_dir), "--out", str(out), "--sparsity", "0.5", "--block", "16x16",
                     "--int8", "dynamic", "--calibrate", "16", "--attention-precision", "bf16"]) == 0
    return out


def test_compress_writes_a_loadable_directory(compressed_dir, capsys):
    assert {"config.json", "model.safetensors", "sparsebert.json", "tokenizer.json"} <= set(os.listdir(compressed_dir))
    model = sparsebert.load(compressed_dir)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.sparsebert_state["calibration"]["examples"] == 16
    assert sparsebert.hf.attention_precision(model) == "bf16"


def test_report(compressed_dir, capsys):
    assert cli.main(["report", str(compressed_dir)]) == 0
    out = capsys.readouterr().out
    assert "| bert.encoder.layer.0.attention.self.query | 64x64 |" in out and "expected speedup" in out
    assert cli.main(["report", str(compressed_dir), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["layers"]) == 12 and rep["totals"]["layers"] == 12


def test_eval(model_dir, compressed_dir, tmp_path, capsys):
    assert cli.main(["eval", str(compressed_dir), "--sentences", "20", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # what eval reports is what the two models do on those sentences
    from transformers import AutoTokenizer

    from sparsebert.compress import embedding_cosines
    from sparsebert.data import split_sentences

    original, _ = cli._load_hf(str(model_dir))
    _, sentences = split_sentences(0, 20)
    expect = embedding_cosines(sparsebert.load(compressed_dir), original, AutoTokenizer.from_pretrained(model_dir),
                               sentences)
    assert res["cosine"]["sentences"] == 20
    assert res["cosine"]["min"] == pytest.approx(expect.min().item(), abs=1e-9)
    assert res["cosine"]["mean"] == pytest.approx(expect.mean().item(), abs=1e-9)
    data = tmp_path / "d.tsv"
    data.write_text("a fine film\t1\na dull film\t0\nmeh\t1\n")
    assert cli.main(["eval", str(compressed_dir), "--data", str(data), "--sentences", "4"]) == 0
    assert "accuracy on 3 labelled examples" in capsys.readouterr().out
    data.write_text("a fine film\t1\nbad\tpositive\n")
    assert cli.main(["eval", str(compressed_dir), "--data", str(data), "--sentences", "4"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "label 'positive' (example 2) is not one of the head's 2 classes" in err
    data.write_text("no tab here\n")
    assert cli.main(["eval", str(compressed_dir), "--data", str(data), "--sentences", "4"]) == 1
    assert f"{data}:1: expected 'text<TAB>label'" in capsys.readouterr().err
    data.write_text("\n\n")
    assert cli.main(["eval", str(compressed_dir), "--data", str(data), "--sentences", "4"]) == 1
    assert "holds no 'text<TAB>label' lines" in capsys.readouterr().err


def test_bench_table_json_and_plot(compressed_dir, tmp_path, capsys):
    png = tmp_path / "b.png"
    assert cli.main(["bench", str(compressed_dir), "--batch", "1,2", "--seq", "16", "--rounds", "1",
                     "--baselines", "fp32,quantize_dynamic", "--json", "--plot", str(png)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {(r["method"], r["batch"]) for r in res["rows"]} == {
        (m, b) for m in ("sparsebert", "fp32", "quantize_dynamic") for b in (1, 2)}
    assert all(r["ms"] > 0 and r["tokens_per_s"] > 0 for r in res["rows"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_one_line(model_dir, compressed_dir, tmp_path, capsys):
    assert cli.main(["compress", str(model_dir), "--out", str(compressed_dir)]) == 1
    assert "exists and is not empty (pass --overwrite)" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    assert cli.main(["compress", str(model_dir), "--out", str(tmp_path / "o"), "--sparsity", "1.5"]) == 1
    assert "sparsity must be a number in [0, 1), got 1.5" in capsys.readouterr().err
    assert cli.main(["report", str(model_dir)]) == 1
    assert "was not written by sparsebert.save" in capsys.readouterr().err
    assert cli.main(["bench", str(compressed_dir), "--baselines", "onnx"]) == 1
    assert "baseline must be one of" in capsys.readouterr().err


def test_eval_data_needs_a_sequence_classifier(tmp_path, capsys):
    from sparsebert import CompressConfig, compress, save

    model = compress(tiny_bert("BertForTokenClassification", vocab_size=30522, max_position_embeddings=128),
                     CompressConfig(kernel="dense"))
    save(model, tmp_path / "tok")
    data = tmp_path / "d.tsv"
    data.write_text("a fine film\t1\n")
    assert cli.main(["eval", str(tmp_path / "tok"), "--data", str(data)]) == 1
    assert "needs a sequence classification head" in capsys.readouterr().err


def test_a_damaged_timing_cache_is_an_empty_one(tmp_path):
    from sparsebert.measure import TimingCache

    path = tmp_path / "t.json"
    for text in ('{"version": 1, "timings": {"a": null}}', "[1, 2]", "not json"):
        path.write_text(text)
        cache = TimingCache(path)
        assert cache.get("a") is None
        cache.put("b", 1.5)
        cache.save()
        assert TimingCache(path).get("b") == 1.5
