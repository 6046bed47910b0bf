"""sparsebert.save / load: bit-equal round trips for every head and format, the Hugging Face
directory layout, transformers' own entry points, and untrusted files."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

import sparsebert
from sparsebert import CompressConfig, compress, load, save
from sparsebert.hf import attention_precision
from sparsebert.serialize import FORMAT_VERSION, MANIFEST, WEIGHTS
from model_helpers import HEADS, first_output, tiny_bert, tiny_inputs

CONFIGS = {
    "sparse": CompressConfig(sparsity=0.5, block_size=(16, 16), kernel="sparse"),
    "sparse_int8": CompressConfig(sparsity=0.75, block_size=(16, 16), int8="dynamic", kernel="sparse",
                                  act_quant="per_token_asym"),
    "int8": CompressConfig(int8="dynamic", kernel="dense"),
    "weight_only": CompressConfig(int8="weight_only", kernel="dense"),
    "bf16_unpadded": CompressConfig(sparsity=0.5, block_size=(16, 16), dtype="bfloat16", attention="unpadded"),
    "bf16_attention": CompressConfig(sparsity=0.75, block_size=(16, 16), int8="dynamic", kernel="sparse",
                                     attention="unpadded", attention_precision="bf16"),
    "int8_attention": CompressConfig(int8="dynamic", kernel="dense", attention="sparsebert",
                                     attention_precision="int8"),
}


def compressed(head="BertModel", name="sparse_int8", **kw):
    model = tiny_bert(head)
    return compress(model, CONFIGS[name], **kw)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_is_bit_equal(tmp_path, head, name):
    model = compressed(head, name)
    save(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert type(loaded) is type(model)
    inputs = tiny_inputs()
    assert torch.equal(first_output(loaded, inputs), first_output(model, inputs))
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert loaded.config._attn_implementation == model.config._attn_implementation
    assert attention_precision(loaded) == attention_precision(model) == CONFIGS[name].attention_precision
    assert list(sparsebert.report(loaded)) == list(sparsebert.report(model))


@pytest.mark.parametrize("how", ["add_pooling_layer", "assigned"])
def test_a_model_without_its_pooler_round_trips(tmp_path, how):
    if how == "add_pooling_layer":
        torch.manual_seed(0)
        model = AutoModel.from_config(tiny_bert().config, add_pooling_layer=False).eval()
    else:
        model = tiny_bert()
        model.pooler = None
    model = compress(model, CONFIGS["sparse_int8"])
    save(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / MANIFEST).read_text())["absent_modules"] == ["pooler"]
    loaded = load(tmp_path / "m")
    assert loaded.pooler is None and "pooler.dense.weight" not in loaded.state_dict()
    inputs = tiny_inputs()
    with torch.inference_mode():
        assert loaded(**inputs).pooler_output is None
    assert torch.equal(first_output(loaded, inputs), first_output(model, inputs))


def test_calibrated_model_round_trip(tmp_path):
    model = compressed("BertForSequenceClassification", "int8", example_inputs=tiny_inputs(batch=6, seq=10))
    save(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    inputs = tiny_inputs()
    assert torch.equal(first_output(loaded, inputs), first_output(model, inputs))
    assert loaded.sparsebert_state["calibration"] == model.sparsebert_state["calibration"]


def test_directory_is_a_hugging_face_directory(tmp_path):
    from sparsebert.data import minilm_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = compressed("BertForSequenceClassification")
    save(model, tmp_path / "m", tokenizer=tokenizer)
    files = set(os.listdir(tmp_path / "m"))
    assert {"config.json", WEIGHTS, MANIFEST, "tokenizer_config.json"} <= files
    assert AutoConfig.from_pretrained(tmp_path / "m").num_labels == 3
    assert AutoTokenizer.from_pretrained(tmp_path / "m")("a movie")["input_ids"] == tokenizer("a movie")["input_ids"]
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["model_class"] == "BertForSequenceClassification"
    assert set(manifest["versions"]) == {"sparsebert", "torch", "transformers"}
    spec = manifest["layers"]["bert.encoder.layer.0.intermediate.dense"]["spec"]
    assert spec["type"] == "SparseInt8Linear" and spec["block_size"] == [16, 16]


def test_transformers_entry_points_point_to_sparsebert(tmp_path):
    model = compressed("BertForSequenceClassification")
    save(model, tmp_path / "m")
    with pytest.raises(ValueError, match=r"compressed by sparsebert .*sparsebert\.load\(directory\)"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"sparsebert\.save\(model, directory\)"):
        model.save_pretrained(tmp_path / "hf")


@pytest.mark.parametrize("name", ["sparse", "int8", "weight_only"])
def test_plain_transformers_never_loads_random_weights(tmp_path, monkeypatch, name):
    # transformers without sparsebert's quantizer registered (sparsebert not imported) skips the
    # unknown quantization_config; the packed tensors must then fail its load, not be replaced
    # by random weights.
    from transformers.quantizers import auto

    monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, "sparsebert")
    monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, "sparsebert")
    save(compressed(name=name), tmp_path / "m")
    with pytest.raises(RuntimeError, match="size mismatch|ignore_mismatched_sizes"):
        AutoModel.from_pretrained(tmp_path / "m")


def test_existing_directory(tmp_path):
    model = compressed()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="exists and is not empty: pass overwrite=True"):
        save(model, tmp_path / "m")
    assert os.listdir(tmp_path / "m") == ["notes.txt"]
    save(model, tmp_path / "m", overwrite=True)
    load(tmp_path / "m")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a directory"):
        save(model, tmp_path / "file")
    with pytest.raises(ValueError, match="is not compressed by sparsebert.compress"):
        save(tiny_bert(), tmp_path / "plain")


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m"
    save(compressed("BertForSequenceClassification"), path)
    return path


def edit_manifest(path, fn):
    m = json.loads((path / MANIFEST).read_text())
    fn(m)
    (path / MANIFEST).write_text(json.dumps(m))


def edit_tensors(path, fn):
    tensors = load_file(path / WEIGHTS)
    fn(tensors)
    save_file(tensors, path / WEIGHTS, metadata={"format": "pt", "sparsebert_format_version": "1"})


LAYER = "bert.encoder.layer.0.intermediate.dense"


def test_truncated_file(saved):
    data = (saved / WEIGHTS).read_bytes()
    (saved / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors' is not a readable safetensors file"):
        load(saved)


def test_garbage_header(saved):
    (saved / WEIGHTS).write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load(saved)


def test_newer_format_version(saved):
    edit_manifest(saved, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}, newer than the {FORMAT_VERSION}"):
        load(saved)


def test_manifest_shapes_disagree_with_the_tensors(saved):
    edit_manifest(saved, lambda m: m["layers"][LAYER]["spec"].update(nnz_blocks=1))
    with pytest.raises(ValueError, match=rf"{LAYER}.col_indices has shape \(8,\), the manifest's layer needs \(1,\)"):
        load(saved)


def test_manifest_spec_for_another_shape(saved):
    edit_manifest(saved, lambda m: m["layers"][LAYER]["spec"].update(in_features=99))
    with pytest.raises(ValueError, match=f"manifest layer '{LAYER}': spec 128x99 does not match"):
        load(saved)


def test_manifest_unknown_module_and_class(saved):
    edit_manifest(saved, lambda m: m["layers"][LAYER]["spec"].update(type="os.system"))
    with pytest.raises(ValueError, match=f"manifest layer '{LAYER}': unknown module spec"):
        load(saved)


@pytest.mark.parametrize("bad", [["encoder.nothing"], "pooler", [3]])
def test_manifest_absent_modules_must_name_submodules(saved, bad):
    edit_manifest(saved, lambda m: m.update(absent_modules=bad))
    with pytest.raises(ValueError, match="absent"):
        load(saved)


def test_manifest_model_class_must_be_a_transformers_model(saved):
    edit_manifest(saved, lambda m: m.update(model_class="AutoTokenizer"))
    with pytest.raises(ValueError, match="model_class 'AutoTokenizer' is not a transformers model class"):
        load(saved)


def test_missing_and_extra_tensors(saved):
    edit_tensors(saved, lambda t: t.pop(f"{LAYER}.weight_scale"))
    with pytest.raises(ValueError, match=rf"missing \['{LAYER}.weight_scale'\]"):
        load(saved)


def test_extra_tensor(saved):
    edit_tensors(saved, lambda t: t.update(evil=torch.zeros(3)))
    with pytest.raises(ValueError, match=r"unexpected \['evil'\]"):
        load(saved)


def test_tampered_values(saved):
    def bad_scale(t):
        t[f"{LAYER}.weight_scale"][0] = -1.0

    edit_tensors(saved, bad_scale)
    with pytest.raises(ValueError, match=f"SparseInt8Linear {LAYER}: weight_scale must be finite and non-negative"):
        load(saved)


def test_tampered_indices(saved):
    def bad_col(t):
        t[f"{LAYER}.col_indices"][0] = 1000

    edit_tensors(saved, bad_col)
    with pytest.raises(ValueError, match=rf"SparseInt8Linear {LAYER}: col_indices\[0\]=1000 is out of range"):
        load(saved)


def test_wrong_dtype(saved):
    edit_tensors(saved, lambda t: t.update({f"{LAYER}.values": t[f"{LAYER}.values"].to(torch.int16)}))
    with pytest.raises(ValueError, match=rf"{LAYER}.values is torch.int16, the manifest's layer needs torch.int8"):
        load(saved)


def test_not_a_sparsebert_directory(tmp_path):
    tiny_bert().save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="was not written by sparsebert.save"):
        load(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load(tmp_path / "nowhere")


def test_empty_modules_from_spec_on_meta():
    model = compressed("BertModel", "sparse_int8")
    for module in model.modules():
        if isinstance(module, (sparsebert.SparseLinear, sparsebert.Int8Linear, sparsebert.SparseInt8Linear)):
            empty = type(module).from_spec(json.loads(json.dumps(module.spec())), device="meta")
            assert all(t.device.type == "meta" for t in empty.buffers())
            cpu = type(module).from_spec(module.spec())
            cpu.load_state_dict(module.state_dict())
            x = torch.randn(5, module.in_features)
            assert torch.equal(cpu(x), module(x))


def test_manifest_aliases_are_not_trusted(saved):
    # ties come from the rebuilt model: an alias in the manifest cannot replace a stored tensor
    model = load(saved)
    edit_manifest(saved, lambda m: m.update(aliases={f"{LAYER}.bias": "bert.encoder.layer.0.output.dense.bias"},
                                            placeholders="junk"))
    again = load(saved)
    inputs = tiny_inputs()
    assert torch.equal(first_output(again, inputs), first_output(model, inputs))


def test_tied_weights_round_trip_and_a_duplicate_is_refused(tmp_path):
    model = compressed("BertForMaskedLM")
    save(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    inputs = tiny_inputs()
    assert torch.equal(first_output(loaded, inputs), first_output(model, inputs))
    edit_tensors(tmp_path / "m", lambda t: t.update({"cls.predictions.decoder.weight": torch.zeros(512, 64)}))
    with pytest.raises(ValueError, match=r"unexpected \['cls.predictions.decoder.weight'\]"):
        load(tmp_path / "m")


def test_tampered_weight_sum(saved):
    def bad_sum(t):
        t[f"{LAYER}.weight_sum"][3] += 1

    edit_tensors(saved, bad_sum)
    with pytest.raises(ValueError, match=f"SparseInt8Linear {LAYER}: weight_sum does not match the int8 weight"):
        load(saved)


def test_non_empty_placeholder(saved):
    edit_tensors(saved, lambda t: t.update({f"{LAYER}.weight": torch.zeros(4, dtype=torch.int8)}))
    with pytest.raises(ValueError, match=rf"{LAYER}.weight is a placeholder of a block-sparse layer and must be empty"):
        load(saved)
