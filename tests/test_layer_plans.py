"""Layer plans of the lean unpadded encoder: a BERT layer in the configuration ``compress`` gives
INT8 models runs as its five ops with their arguments bound once. The plan gives the module path's
numbers bit for bit, and any change to what it was built from (a hook, an attribute, a buffer, a
module, a fused forward undone, the input dtype) sends the layer back through its modules or
builds a new plan, never a stale answer."""

import gc
import weakref

import pytest
import torch
from torch import nn

import sparsebert
import sparsebert.hf as H
from model_helpers import first_output, tiny_bert, tiny_inputs
from sparsebert import CompressConfig
from sparsebert.hf import unfuse_ffn, unfuse_layer_norms, unfuse_qkv

INNER = 256
SPARSE = dict(sparsity=0.75, block_size=(32, 32), int8="dynamic", kernel="sparse", attention="unpadded")
DENSE = dict(int8="dynamic", kernel="dense", attention="unpadded")


def _compressed(cfg=SPARSE, **kw):
    return sparsebert.compress(tiny_bert(intermediate_size=INNER, **kw), CompressConfig(**cfg), cache=False)


def _modules_output(model, inputs):
    """The output through the modules, plans off."""
    H._LAYER_PLANS = False
    try:
        return first_output(model, inputs)
    finally:
        H._LAYER_PLANS = True


def _planned(model) -> list[bool]:
    return [H._PLANS.get(layer, (None, None))[1] is not None for layer in model.encoder.layer]


INPUTS = tiny_inputs(batch=12, seq=24)  # 288 tokens: the fused FFN's path, padding in two rows


@pytest.mark.parametrize("cfg", [SPARSE, DENSE], ids=["90% blocks, fused FFN", "dense INT8, fused GELU"])
def test_a_plan_gives_the_module_path_bit_for_bit(two_threads, monkeypatch, cfg):
    model = _compressed(cfg)
    runs = []
    run_plan = H._run_plan
    monkeypatch.setattr(H, "_run_plan", lambda *a: runs.append(1) or run_plan(*a))
    out = first_output(model, INPUTS)
    assert _planned(model) == [True, True] and len(runs) == 2
    assert torch.equal(out, _modules_output(model, INPUTS))
    # and again from the plans already built
    assert torch.equal(first_output(model, INPUTS), out)


def test_the_unfused_ffn_and_a_single_sequence_have_plans_too(two_threads):
    model = _compressed()
    unfuse_ffn(model)
    for inputs in (INPUTS, tiny_inputs(batch=1, seq=7)):
        assert torch.equal(first_output(model, inputs), _modules_output(model, inputs))
    assert _planned(model) == [True, True]


def test_changes_after_the_plan_are_seen(two_threads):
    model = _compressed()
    first_output(model, INPUTS)
    layer = model.encoder.layer[0]
    qkv = layer.attention.self.qkv

    calls = []
    handle = qkv.register_forward_hook(lambda *a: calls.append(1))
    out = first_output(model, INPUTS)
    assert calls == [1] and _planned(model) == [False, True]  # a hook on a projection: through the modules
    assert torch.equal(out, _modules_output(model, INPUTS))
    handle.remove()

    before = first_output(model, INPUTS)
    qkv.act_quant = "per_tensor"  # an attribute the op reads
    out = first_output(model, INPUTS)
    assert not torch.equal(out, before) and torch.equal(out, _modules_output(model, INPUTS))
    assert _planned(model) == [True, True]

    layer.output.LayerNorm.eps = 0.5  # a LayerNorm's eps
    out = first_output(model, INPUTS)
    assert not torch.equal(out, before) and torch.equal(out, _modules_output(model, INPUTS))

    with torch.no_grad():  # values written into the same tensors: the plan reads them
        layer.attention.output.LayerNorm.weight.mul_(2)
    out2 = first_output(model, INPUTS)
    assert not torch.equal(out2, out) and torch.equal(out2, _modules_output(model, INPUTS))

    other = _compressed(seed=3)  # buffers of another model loaded in place
    model.load_state_dict(other.state_dict())
    layer.output.LayerNorm.eps = other.encoder.layer[0].output.LayerNorm.eps
    qkv.act_quant = "per_token"
    assert torch.equal(first_output(model, INPUTS), first_output(other, INPUTS))


@pytest.mark.parametrize("undo", ["ffn", "activation", "layer norms", "qkv", "dense", "dropout"])
def test_what_a_plan_does_not_cover_runs_through_the_modules(two_threads, undo):
    model = _compressed()
    first_output(model, INPUTS)
    if undo == "ffn":  # the GELU back as a module: no plan
        unfuse_ffn(model)
        sparsebert.unfuse_activations(model)
    elif undo == "activation":  # the GELU back as a module, the FFN still fused: transformers' forward
        sparsebert.unfuse_activations(model)
    elif undo == "layer norms":
        unfuse_layer_norms(model)
    elif undo == "qkv":
        unfuse_qkv(model)
    elif undo == "dense":
        layer = model.encoder.layer[1]
        layer.attention.output.dense = nn.Linear(64, 64)
    else:
        model.encoder.layer[1].output.dropout.p = 0.5
        model.encoder.layer[1].output.dropout.train()  # eval-mode model, one Dropout in train mode
    out = first_output(model, INPUTS)
    assert _planned(model)[1] is False
    if undo != "dropout":
        assert torch.equal(out, _modules_output(model, INPUTS))


def test_bf16_inputs_get_a_plan_of_their_own(two_threads):
    model = _compressed()
    first_output(model, INPUTS)
    model.to(torch.bfloat16)
    out = first_output(model, INPUTS)
    assert out.dtype == torch.bfloat16 and _planned(model) == [True, True]
    assert torch.equal(out, _modules_output(model, INPUTS))


def test_a_plan_does_not_keep_its_model_alive(two_threads):
    model = _compressed()
    first_output(model, INPUTS)
    layer = weakref.ref(model.encoder.layer[0])
    del model
    gc.collect()
    assert layer() is None
