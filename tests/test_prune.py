"""Pruning masks (block, unstructured, movement, global / per layer) and structural pruning of a
BERT (heads, FFN neurons, layers) against references: the model with those units zeroed."""

import copy

import pytest
import torch
from torch import nn

import sparsebert
from sparsebert import prune
from sparsebert.nn.masked_linear import MaskedLinear, mask_linears, unmask_linears
from sparsebert.prune import block_magnitude_mask, block_sparsity, magnitude_mask, movement_mask
from model_helpers import first_output, tiny_bert, tiny_inputs


def _close(out, ref, scale=1.0):
    # float32 accumulation differs between the shrunk and the zeroed matrices: 1e-5 of the output
    # scale is a few ulps of the hidden states' magnitude.
    assert (out - ref).abs().max().item() <= 1e-5 * scale * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.95, 1.0])
def test_keeps_the_largest_blocks(sparsity):
    w = torch.randn(64, 96)
    mask = block_magnitude_mask(w, sparsity, (16, 32))
    assert mask.shape == w.shape and mask.dtype == torch.bool
    blocks = mask.reshape(4, 16, 3, 32).permute(0, 2, 1, 3).flatten(2)  # (4, 3, 512)
    assert (blocks.all(-1) | ~blocks.any(-1)).all()  # whole blocks only
    kept = blocks.any(-1).flatten()
    assert kept.sum() == 12 - round(sparsity * 12)
    norms = w.reshape(4, 16, 3, 32).permute(0, 2, 1, 3).flatten(2).norm(dim=-1).flatten()
    if 0 < kept.sum() < 12:
        assert norms[kept].min() >= norms[~kept].max()


def test_partial_edge_blocks():
    w = torch.ones(20, 10)
    w[16:, :] = 100.0  # the partial block row (4 real rows) has the largest norm
    mask = block_magnitude_mask(w, 0.5, (16, 8))  # 2 x 2 blocks, keep 2
    assert mask[16:].all() and not mask[:16].any()


@pytest.mark.parametrize("block", [(32, 32), (16, 16), (16, 1), (4, 1), (1, 4), (1, 1)])
def test_exact_zero_block_count(block):
    w = torch.randn(96, 160)
    mask = block_magnitude_mask(w, 0.7, block)
    nb = -(-96 // block[0]) * -(-160 // block[1])
    assert block_sparsity(w * mask, block) == round(0.7 * nb) / nb


def test_unstructured_and_ties():
    w = torch.arange(1.0, 21.0).reshape(4, 5)
    assert magnitude_mask(w, 0.25).flatten().tolist() == [False] * 5 + [True] * 15
    z = torch.zeros(8, 8)  # all ties: the count is still exact
    assert (~block_magnitude_mask(z, 0.5, (2, 2))).sum() == 32


def test_movement_keeps_the_largest_summed_scores():
    scores = torch.zeros(4, 4)
    scores[:2, 2:] = 1.0   # block (0, 1): moving away from zero
    scores[2:, :2] = -5.0  # block (1, 0): shrinking
    scores[2:, 2:] = 0.5
    mask = movement_mask(scores, 0.5, (2, 2))
    assert mask[:2, 2:].all() and mask[2:, 2:].all() and not mask[2:, :2].any() and not mask[:2, :2].any()


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, "0.5", None, True, float("nan")])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity must be a number in \\[0, 1\\]"):
        block_magnitude_mask(torch.randn(4, 4), sparsity, (2, 2))


def test_bad_weight_and_block():
    with pytest.raises(ValueError, match="weight must be 2-D"):
        block_magnitude_mask(torch.randn(4), 0.5, (2, 2))
    with pytest.raises(ValueError, match="block"):
        block_magnitude_mask(torch.randn(4, 4), 0.5, (0, 2))
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        block_magnitude_mask([[1.0]], 0.5, (1, 1))


# --- whole model ----------------------------------------------------------------------------------


def _encoder_blocks(model, block):
    total = zero = 0
    for lin in prune.encoder_linears(model).values():
        n, k = lin.weight.shape
        nb = -(-n // block[0]) * -(-k // block[1])
        total += nb
        zero += round(block_sparsity(lin.weight, block) * nb)
    return zero, total


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("block", [(32, 32), (16, 16), (1, 4)])
def test_model_masks_count(scope, block):
    model = tiny_bert("BertForSequenceClassification")
    masks = prune.prune_model(model, 0.75, block, scope=scope)
    linears = prune.encoder_linears(model)
    assert set(masks) == set(linears) and len(linears) == 12  # 6 per layer, heads not included
    zero, total = _encoder_blocks(model, block)
    if scope == "global":
        assert zero == round(0.75 * total)
    else:
        for lin in linears.values():
            n, k = lin.weight.shape
            nb = -(-n // block[0]) * -(-k // block[1])
            assert round(block_sparsity(lin.weight, block) * nb) == round(0.75 * nb)
    assert prune.model_block_sparsity(model, block) == pytest.approx(zero / total)
    assert model.classifier.weight.ne(0).all()  # the task head is never pruned


def test_global_scope_prunes_the_small_layer_more():
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight.mul_(0.01)
    prune.prune_model(model, 0.3, (16, 16), scope="global")
    assert block_sparsity(model.encoder.layer[0].intermediate.dense.weight, (16, 16)) == 1.0


def test_prune_model_errors():
    model = tiny_bert()
    prune.prune_model(model, 0.5, (16, 16))
    with pytest.raises(ValueError, match="density of 0.7000, above the model's current 0.5000"):
        prune.prune_model(model, 0.3, (16, 16))
    with pytest.raises(ValueError, match="method must be one of"):
        prune.prune_model(model, 0.8, (16, 16), method="random")
    with pytest.raises(ValueError, match="scope must be one of"):
        prune.prune_model(model, 0.8, (16, 16), scope="row")
    with pytest.raises(ValueError, match="movement' needs scores"):
        prune.prune_model(model, 0.8, (16, 16), method="movement")
    with pytest.raises(TypeError, match="BERT-family"):
        prune.prune_model(nn.Sequential(nn.Linear(4, 4)), 0.5)
    with pytest.raises(TypeError, match="got str"):
        prune.prune_model("bert", 0.5)


def test_movement_on_a_model():
    model = tiny_bert()
    scores = {n: torch.randn(lin.weight.shape) for n, lin in prune.encoder_linears(model).items()}
    masks = prune.model_masks(model, 0.5, (16, 16), method="movement", scope="layer", scores=scores)
    for n, m in masks.items():
        assert torch.equal(m, movement_mask(scores[n], 0.5, (16, 16)))


def test_activation_scores_weigh_each_input_feature():
    model = tiny_bert()
    linears = prune.encoder_linears(model)
    ones = {n: torch.ones(lin.in_features) for n, lin in linears.items()}
    same = prune.model_masks(model, 0.5, (16, 16), method="activation", scores=ones)
    for n, m in same.items():  # equal feature norms: block magnitude
        assert torch.equal(m, block_magnitude_mask(linears[n].weight, 0.5, (16, 16)))
    # One loud input feature: every block row keeps the block that reads it, which magnitude drops.
    name = "encoder.layer.0.attention.output.dense"
    w = linears[name].weight.detach()
    quiet_col = int(prune.block_scores(w, (16, 16)).sum(0).argmin()) * 16
    loud = {n: v.clone() for n, v in ones.items()}
    loud[name][quiet_col] = 1e4
    mask = prune.model_masks(model, 0.5, (16, 16), method="activation", scores=loud)[name]
    assert mask[:, quiet_col].all() and not block_magnitude_mask(w, 0.5, (16, 16))[:, quiet_col].all()
    with pytest.raises(ValueError, match="activation' needs scores: {layer name: input feature L2 norms"):
        prune.model_masks(model, 0.5, (16, 16), method="activation")
    bad = dict(ones, **{name: torch.ones(3)})
    with pytest.raises(ValueError, match=f"activation scores of {name} have shape \\(3,\\), expected \\(64,\\)"):
        prune.model_masks(model, 0.5, (16, 16), method="activation", scores=bad)


def test_layer_sensitivity_prunes_one_layer_at_a_time():
    model = tiny_bert("BertForSequenceClassification")
    with torch.no_grad():  # a random head's logits are ~0.01: make its classes differ
        model.classifier.weight.mul_(300)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [tiny_inputs(seed=s) for s in (1, 2)]
    sens = prune.layer_sensitivity(model, batches, (0.5, 0.9), (16, 16))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights restored
    linears = prune.encoder_linears(model)
    assert set(sens) == set(linears) and all(set(d) == {0.5, 0.9} for d in sens.values())
    # The figure is the output gap with that one layer pruned: recompute one by hand.
    name = "bert.encoder.layer.1.intermediate.dense"
    pruned = copy.deepcopy(model)
    lin = prune.encoder_linears(pruned)[name]
    with torch.no_grad():
        lin.weight.mul_(block_magnitude_mask(lin.weight, 0.9, (16, 16)))
        gaps = [torch.nn.functional.kl_div(pruned(**b).logits.log_softmax(-1), model(**b).logits.log_softmax(-1),
                                           log_target=True, reduction="batchmean") for b in batches]
    assert sens[name][0.9] == pytest.approx(float(sum(gaps) / 2), rel=1e-5, abs=1e-9)
    assert sens[name][0.9] > 0
    # A layer already sparser than a level scores 0 there; a bare encoder is measured on its hidden states.
    with torch.no_grad():
        lin = linears[name]
        lin.weight.mul_(block_magnitude_mask(lin.weight, 0.7, (16, 16)))
    assert prune.layer_sensitivity(model, batches, (0.5, 0.9), (16, 16))[name][0.5] == 0.0
    bare = prune.layer_sensitivity(tiny_bert(), batches[:1], (0.9,), (16, 16))
    assert all(d[0.9] > 0 for d in bare.values())
    with pytest.raises(ValueError, match="at least one batch"):
        prune.layer_sensitivity(model, [], (0.5,))
    with pytest.raises(ValueError, match="level must be a number in \\[0, 1\\], got 1.5"):
        prune.layer_sensitivity(model, batches, (1.5,))


def test_allocate_sparsity_spends_the_target_where_it_hurts_least():
    model = tiny_bert("BertForSequenceClassification")
    linears = prune.encoder_linears(model)
    names = list(linears)
    cheap, dear = names[0], names[2]  # query and value of layer 0, 16 blocks of 16x16 each
    sens = {n: {0.5: 1.0, 0.9: 2.0} for n in names}
    sens[cheap] = {0.5: 0.0, 0.9: 0.0}
    sens[dear] = {0.5: 50.0, 0.9: 80.0}
    shares = prune.allocate_sparsity(model, sens, 0.6, (16, 16))
    assert set(shares) == set(names)
    assert shares[cheap] == 0.9 and shares[dear] == 0.0
    blocks = {n: (lin.out_features // 16) * (lin.in_features // 16) for n, lin in linears.items()}
    assert sum(shares[n] * blocks[n] for n in names) == pytest.approx(0.6 * sum(blocks.values()))
    masks = prune.model_masks(model, shares, (16, 16))
    prune.apply_masks(model, masks)
    assert prune.model_block_sparsity(model, (16, 16)) == pytest.approx(0.6, abs=prune.rounding_slack(model, (16, 16)))
    assert block_sparsity(linears[dear].weight, (16, 16)) == 0.0
    # damage that falls with the level is taken as flat; the target beyond the levels is an error
    sens[cheap] = {0.5: 3.0, 0.9: 1.0}
    assert prune.allocate_sparsity(tiny_bert("BertForSequenceClassification"), sens, 0.3, (16, 16))[cheap] < 0.9
    with pytest.raises(ValueError, match="sparsity 0.95 is above what the probed levels reach"):
        prune.allocate_sparsity(tiny_bert("BertForSequenceClassification"), sens, 0.95, (16, 16))
    with pytest.raises(ValueError, match="sensitivity has no entry for"):
        prune.allocate_sparsity(model, {cheap: sens[cheap]}, 0.5, (16, 16))
    with pytest.raises(ValueError, match="per-layer sparsities \\(a mapping\\) need scope='layer'"):
        prune.model_masks(model, shares, (16, 16), scope="global")
    with pytest.raises(ValueError, match="must name every encoder nn.Linear: missing"):
        prune.model_masks(model, {cheap: 0.5}, (16, 16))
    with pytest.raises(ValueError, match="sparsity\\['.*'\\] must be a number in \\[0, 1\\], got 2"):
        prune.model_masks(model, dict(shares, **{cheap: 2}), (16, 16))


def test_input_norms_are_each_feature_norm_over_all_tokens():
    model = tiny_bert()
    batches = [tiny_inputs(batch=2, seq=8, seed=s) for s in (1, 2)]
    seen = []
    lin = prune.encoder_linears(model)["encoder.layer.1.intermediate.dense"]
    h = lin.register_forward_hook(lambda m, a, o: seen.append(a[0].detach().reshape(-1, 64)))
    norms = prune.input_norms(model, batches + [dict(batches[0], labels=torch.zeros(2, dtype=torch.long))])
    h.remove()
    x = torch.cat(seen)
    assert len(seen) == 3
    assert set(norms) == set(prune.encoder_linears(model))
    torch.testing.assert_close(norms["encoder.layer.1.intermediate.dense"], x.norm(dim=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least one batch"):
        prune.input_norms(model, [])


# --- masked training ------------------------------------------------------------------------------


def test_masked_linear_trains_under_the_mask():
    torch.manual_seed(0)
    lin = nn.Linear(8, 6)
    mask = torch.rand(6, 8) > 0.5
    m = MaskedLinear.from_linear(lin, mask)
    x = torch.randn(5, 8)
    torch.testing.assert_close(m(x), nn.functional.linear(x, lin.weight * mask, lin.bias), rtol=0, atol=0)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        m(x).square().sum().backward()
        assert (m.weight.grad[~mask] == 0).all()
        opt.step()
        m.apply_mask_()
    assert (m.weight[~mask] == 0).all() and (m.weight[mask] != lin.weight[mask]).all()
    plain = m.to_linear()
    assert type(plain) is nn.Linear and torch.equal(plain(x), m(x))
    with pytest.raises(ValueError, match="mask must have the weight's shape"):
        m.set_mask(torch.ones(3, 3, dtype=torch.bool))


def test_masked_model_compresses_to_sparse():
    model = tiny_bert("BertForSequenceClassification")
    names = list(prune.encoder_linears(model))
    mask_linears(model, names)
    prune.prune_model(model, 0.75, (16, 16), scope="layer")
    x = tiny_inputs()
    ref = first_output(model, x)
    assert sorted(unmask_linears(model)) == sorted(names)
    cfg = sparsebert.CompressConfig(block_size=(16, 16), kernel="sparse", attention=None)
    sparsebert.compress(model, cfg, cache=False)
    rows = sparsebert.report(model)  # per layer, query, key and value too (they run as one layer)
    assert sorted(r["name"] for r in rows) == sorted(names) and {r["format"] for r in rows} == {"sparse"}
    out = first_output(model, x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# --- structural pruning ---------------------------------------------------------------------------


def _zero_heads(model, heads):
    """Reference: the same model with the heads' value rows zeroed (their output is then 0)."""
    ref = copy.deepcopy(model)
    for layer, hs in heads.items():
        attn = ref.bert.encoder.layer[layer].attention.self if hasattr(ref, "bert") else \
            ref.encoder.layer[layer].attention.self
        d = attn.attention_head_size
        with torch.no_grad():
            for h in hs:
                attn.value.weight[h * d:(h + 1) * d] = 0
                attn.value.bias[h * d:(h + 1) * d] = 0
    return ref


@pytest.mark.parametrize("head", ["BertModel", "BertForSequenceClassification"])
def test_prune_heads_equals_zeroed_heads(head):
    model = tiny_bert(head)
    heads = {0: [1, 3], 1: [0]}
    ref = first_output(_zero_heads(model, heads), tiny_inputs())
    prune.prune_heads(model, heads)
    layer = (model.bert if hasattr(model, "bert") else model).encoder.layer
    assert layer[0].attention.self.query.out_features == 32 and layer[1].attention.self.value.out_features == 48
    assert layer[0].attention.output.dense.in_features == 32
    assert model.config.heads_per_layer == [2, 3] and model.config.num_attention_heads == 4
    _close(first_output(model, tiny_inputs()), ref)
    prune.prune_heads(model, {0: [0]})  # indices into the layer as it is now
    assert model.config.heads_per_layer == [1, 3]


def test_prune_neurons_equals_zeroed_neurons():
    model = tiny_bert("BertForSequenceClassification")
    neurons = {0: list(range(0, 128, 2)), 1: [5, 6, 100]}
    ref_model = copy.deepcopy(model)
    for i, ns in neurons.items():
        with torch.no_grad():
            ref_model.bert.encoder.layer[i].intermediate.dense.weight[ns] = 0
            ref_model.bert.encoder.layer[i].intermediate.dense.bias[ns] = 0  # GELU(0) = 0
    ref = first_output(ref_model, tiny_inputs())
    prune.prune_neurons(model, neurons)
    assert model.config.intermediate_size_per_layer == [64, 125]
    _close(first_output(model, tiny_inputs()), ref)


def test_importance_selects_the_least_useful():
    model = tiny_bert("BertForSequenceClassification")
    batches = [dict(tiny_inputs(seed=s), labels=torch.tensor([0, 1, 2])) for s in range(3)]
    imp = prune.head_importance(model, batches)
    assert [tuple(s.shape) for s in imp] == [(4,), (4,)]
    assert all(abs(s.norm().item() - 1) < 1e-5 for s in imp)
    sel = prune.heads_to_prune(imp, 0.5)
    assert sum(len(v) for v in sel.values()) == 4
    flat = sorted((v.item(), i, h) for i, s in enumerate(imp) for h, v in enumerate(s))
    assert {(i, h) for _, i, h in flat[:4]} == {(i, h) for i, hs in sel.items() for h in hs}
    full = prune.heads_to_prune(imp, 1.0)  # every layer keeps its most important head
    assert {i: len(v) for i, v in full.items()} == {0: 3, 1: 3}
    assert all(int(torch.argmax(imp[i])) not in full[i] for i in full)
    nimp = prune.neuron_importance(model, batches)
    nsel = prune.neurons_to_prune(nimp, 0.5, multiple_of=16)
    assert all(len(v) == 64 for v in nsel.values())
    assert set(nsel[0]) == set(torch.argsort(nimp[0])[:64].tolist())
    # the least important neuron matters least: pruning it moves the loss less than the most important
    loss = lambda m: sum(m(**b).loss.item() for b in batches)  # noqa: E731
    base = loss(model)
    lo, hi = copy.deepcopy(model), copy.deepcopy(model)
    prune.prune_neurons(lo, {0: torch.argsort(nimp[0])[:16].tolist()})
    prune.prune_neurons(hi, {0: torch.argsort(nimp[0])[-16:].tolist()})
    assert abs(loss(lo) - base) < abs(loss(hi) - base)


def test_drop_layers_and_reload(tmp_path):
    model = tiny_bert("BertForSequenceClassification", num_hidden_layers=3)
    prune.prune_heads(model, {2: [0, 1]})
    prune.prune_neurons(model, {0: list(range(32))})
    prune.drop_layers(model, [1])
    assert model.config.num_hidden_layers == 2 and model.config.heads_per_layer == [4, 2]
    assert model.config.intermediate_size_per_layer == [96, 128]
    x = tiny_inputs()
    model.save_pretrained(tmp_path)
    loaded = prune.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "BertForSequenceClassification"
    assert torch.equal(first_output(loaded, x), first_output(model, x))


def test_compressed_head_pruned_model_save_load(tmp_path):
    model = tiny_bert("BertForSequenceClassification")
    prune.prune_heads(model, {0: [0, 1]})
    prune.prune_neurons(model, {1: list(range(64))})
    sparsebert.compress(model, sparsebert.CompressConfig(int8="dynamic", kernel="dense", attention=None), cache=False)
    sparsebert.save(model, tmp_path / "m")
    loaded = sparsebert.load(tmp_path / "m")
    assert torch.equal(first_output(loaded, tiny_inputs()), first_output(model, tiny_inputs()))


def test_structural_errors():
    model = tiny_bert()
    with pytest.raises(ValueError, match="layer 0 would lose all its 4 heads"):
        prune.prune_heads(model, {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="layer 5 is not a layer index in \\[0, 2\\)"):
        prune.prune_heads(model, {5: [0]})
    with pytest.raises(ValueError, match="layer 1 has 4, no index 4"):
        prune.prune_heads(model, {1: [4]})
    with pytest.raises(ValueError, match="lists an index twice"):
        prune.prune_neurons(model, {1: [3, 3]})
    with pytest.raises(ValueError, match="would leave none"):
        prune.drop_layers(model, [0, 1])
    with pytest.raises(ValueError, match="fraction must be a number in \\[0, 1\\]"):
        prune.heads_to_prune([torch.ones(4)], 2)
    with pytest.raises(ValueError, match="no loss"):
        prune.head_importance(model, [tiny_inputs()])
    with pytest.raises(TypeError, match="dict"):
        prune.prune_heads(model, [0, 1])
    assert model.config.num_hidden_layers == 2 and not hasattr(model.config, "heads_per_layer")
