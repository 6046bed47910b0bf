"""bench_steps: each configuration turns off exactly its step, and "all" puts everything back."""

import torch

import sparsebert
from conftest import import_benchmark
from model_helpers import first_output, tiny_bert, tiny_inputs
import sparsebert.hf
from sparsebert.hf import _lean_path_applies, attention_precision, fused_ffn, fused_layer_norms, fused_qkv


def test_switch_turns_off_one_step_at_a_time():
    bench = import_benchmark("bench_steps")
    model = sparsebert.compress(tiny_bert(), sparsebert.CompressConfig(
        sparsity=0.5, block_size=(16, 16), int8="dynamic", kernel="sparse", attention="unpadded"))
    inputs = tiny_inputs()
    ref = first_output(model, inputs)
    norms, gelus, qkv = len(fused_layer_norms(model)), len(model.sparsebert_state["fused"]), len(fused_qkv(model))
    ffn = len(fused_ffn(model))
    assert norms == 4 and gelus == 2 and qkv == 2 and ffn == 2
    switch = bench.Switch(model)

    def state():
        with torch.inference_mode():
            lean = _lean_path_applies(model.encoder, {})
        gelu = sum(getattr(m, "activation", "none") == "gelu" for m in model.modules())
        return (lean, sparsebert.hf._LAYER_PLANS, len(fused_layer_norms(model)), gelu, len(fused_qkv(model)), len(fused_ffn(model)),
                attention_precision(model))

    expected = {
        "all": (True, True, norms, gelus, qkv, ffn, "fp32"),
        "no lean layers": (False, True, norms, gelus, qkv, ffn, "fp32"),
        "no layer plans": (True, False, norms, gelus, qkv, ffn, "fp32"),
        "no fused add + LayerNorm": (True, True, 0, gelus, qkv, ffn, "fp32"),
        "no fused GELU": (True, True, norms, 0, qkv, ffn, "fp32"),
        "no fused QKV": (True, True, norms, gelus, 0, ffn, "fp32"),
        "no fused FFN": (True, True, norms, gelus, qkv, 0, "fp32"),
        "+ bf16 attention": (True, True, norms, gelus, qkv, ffn, "bf16"),
        "+ int8 attention": (True, True, norms, gelus, qkv, ffn, "int8"),
    }
    assert list(expected) == list(bench.CONFIGS)
    for config in list(bench.CONFIGS) + ["all"]:
        switch(config)
        assert state() == expected[config], config
    assert torch.equal(first_output(model, inputs), ref)
