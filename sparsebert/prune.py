"""Pruning: weight masks at the block sizes the kernels speed up, and structured pruning that
physically shrinks a Hugging Face BERT-family model.

Masks (``weight * mask`` keeps the weights the mask is True for):

- :func:`block_magnitude_mask` / :func:`magnitude_mask`: one weight, the blocks (or entries) of
  largest magnitude; :func:`movement_mask`: the blocks of largest accumulated movement score
  (``-weight * grad`` summed over fine-tuning steps, Sanh et al. 2020).
- :func:`model_masks`: every ``nn.Linear`` of the encoder at once, one sparsity for all of them
  (``scope="global"``: blocks compete across layers) or for each (``scope="layer"``);
  :func:`apply_masks` zeroes the weights, :func:`prune_model` does both.

Block sizes: 32x32 and 16x16 are what the block-sparse kernels run fast; 16x1, 4x1, 1x4 and 1x1
(unstructured) are there for accuracy comparisons: a kernel skips only whole empty blocks.

Structure (the model gets smaller; ``sparsebert.compress`` then works on the smaller layers):

- :func:`prune_heads`: removes attention heads (rows of query/key/value, columns of the attention
  output projection), chosen with :func:`head_importance` (gradient of the loss with respect to
  a gate on each head's output, Michel et al. 2019) and :func:`heads_to_prune`;
- :func:`prune_neurons`: removes FFN neurons (rows of ``intermediate.dense``, columns of
  ``output.dense``), chosen with :func:`neuron_importance` and :func:`neurons_to_prune`;
- :func:`drop_layers`: removes whole encoder layers.

The per-layer head counts and intermediate sizes are recorded in the model config
(``heads_per_layer``, ``intermediate_size_per_layer``), so a saved model can be rebuilt:
:func:`restructure` shrinks a freshly built model to those shapes, :func:`from_pretrained`
loads a ``save_pretrained`` directory of a structurally pruned model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from .ops.bsr_format import check_block_size

__all__ = [
    "block_magnitude_mask", "magnitude_mask", "movement_mask", "block_scores", "block_sparsity", "encoder_linears",
    "model_masks", "apply_masks", "prune_model", "model_block_sparsity", "rounding_slack", "head_importance",
    "heads_to_prune", "prune_heads", "neuron_importance", "neurons_to_prune", "prune_neurons", "drop_layers", "restructure",
    "from_pretrained", "input_norms", "layer_sensitivity", "allocate_sparsity", "SENSITIVITY_LEVELS", "METHODS",
    "SCOPES",
]

METHODS = ("block_magnitude", "magnitude", "movement", "activation")
SCOPES = ("global", "layer")
HEADS_ATTR = "heads_per_layer"
INTERMEDIATE_ATTR = "intermediate_size_per_layer"


# --- checks --------------------------------------------------------------------------------------


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_2d(weight) -> None:
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")


def _check_bert(model, caller: str = "sparsebert.prune") -> nn.Module:
    """The encoder of a BERT-family model whose query, key and value are separate layers;
    TypeError naming ``caller`` and the type for anything else."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a Hugging Face BERT-family model (nn.Module), got {type(model).__name__}")
    from .hf import encoder_of

    encoder = encoder_of(model, caller)
    from .hf import fused_qkv

    fused = fused_qkv(encoder)
    if fused:
        raise ValueError(f"the query, key and value projections of encoder.{fused[0]} run as one layer "
                         "(sparsebert.hf.fuse_qkv): call sparsebert.hf.unfuse_qkv(model) first")
    return encoder


# --- scores and masks ----------------------------------------------------------------------------


def block_scores(t: Tensor, block_size=(32, 32), reduce: str = "l2") -> Tensor:
    """``[ceil(out / rows), ceil(in / cols)]`` per-block reduction of a 2-D tensor: ``"l2"`` (norm),
    ``"rms"`` (norm over the block's real entries, comparable between partial and full blocks and
    between layers) or ``"sum"``. Partial blocks at the edges cover only their real entries."""
    br, bc = check_block_size(block_size)
    _check_2d(t)
    if reduce not in ("l2", "rms", "sum"):
        raise ValueError(f"reduce must be 'l2', 'rms' or 'sum', got {reduce!r}")
    n, k = t.shape
    nb, ncb = math.ceil(n / br), math.ceil(k / bc)
    x = t.detach().float()
    if reduce != "sum":
        x = x.square()
    x = torch.nn.functional.pad(x, (0, ncb * bc - k, 0, nb * br - n))
    s = x.reshape(nb, br, ncb, bc).sum((1, 3))  # (NB, NCB)
    if reduce == "sum":
        return s
    if reduce == "rms":
        rows = torch.full((nb,), float(br)).index_fill_(0, torch.tensor([nb - 1]), float(n - (nb - 1) * br))
        cols = torch.full((ncb,), float(bc)).index_fill_(0, torch.tensor([ncb - 1]), float(k - (ncb - 1) * bc))
        s = s / (rows[:, None] * cols[None, :])
    return s.sqrt()


def _expand(keep: Tensor, shape, block_size) -> Tensor:
    """Block keep-flags ``(NB, NCB)`` -> bool mask of ``shape``."""
    br, bc = block_size
    nb, ncb = keep.shape
    mask = keep.reshape(nb, 1, ncb, 1).expand(nb, br, ncb, bc).reshape(nb * br, ncb * bc)
    return mask[: shape[0], : shape[1]].contiguous()


def _keep_top(scores: Tensor, sparsity: float) -> Tensor:
    """Bool flags of ``scores``'s shape: all but the ``round(sparsity * n)`` lowest. Ties are
    broken by position, so the count is exact."""
    flat = scores.flatten()
    n_keep = flat.numel() - round(sparsity * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if n_keep > 0:
        keep[torch.topk(flat, n_keep, sorted=False).indices] = True
    return keep.reshape(scores.shape)


def block_magnitude_mask(weight: Tensor, sparsity: float, block_size=(32, 32)) -> Tensor:
    """Boolean mask of ``weight``'s shape that keeps the blocks of largest L2 norm.

    ``round(sparsity * n_blocks)`` blocks are dropped (``n_blocks`` counts the partial blocks at
    the edges of a weight whose shape is not a multiple of the block; their norm covers only
    their real entries). Apply it with ``weight * mask``, or through
    ``torch.nn.utils.prune.custom_from_mask(linear, "weight", mask)``.
    """
    block_size = check_block_size(block_size)
    _check_2d(weight)
    sparsity = _check_fraction("sparsity", sparsity)
    return _expand(_keep_top(block_scores(weight, block_size, "l2"), sparsity), weight.shape, block_size)


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Unstructured magnitude pruning: keeps all but the ``round(sparsity * numel)`` entries of
    smallest absolute value."""
    return block_magnitude_mask(weight, sparsity, (1, 1))


def movement_mask(scores: Tensor, sparsity: float, block_size=(32, 32)) -> Tensor:
    """Keeps the blocks of largest summed movement score. ``scores`` has the weight's shape and
    accumulates ``-weight * grad`` over fine-tuning steps: a weight moving away from zero scores
    high, one moving towards zero scores low, whatever its magnitude now."""
    block_size = check_block_size(block_size)
    _check_2d(scores)
    sparsity = _check_fraction("sparsity", sparsity)
    return _expand(_keep_top(block_scores(scores, block_size, "sum"), sparsity), scores.shape, block_size)


def block_sparsity(weight: Tensor, block_size=(32, 32)) -> float:
    """Share of ``weight``'s blocks (partial edge blocks included) that are all zeros."""
    _check_2d(weight)
    nonzero = block_scores(weight.ne(0).float(), block_size, "sum")
    return int((nonzero == 0).sum()) / nonzero.numel()


# --- the model's encoder ------------------------------------------------------------------------


def encoder_linears(model: nn.Module, filter_fn: Callable | None = None) -> dict[str, nn.Linear]:
    """``{qualified name: module}`` of every ``nn.Linear`` (a subclass too: a masked one) inside
    the encoder of a BERT-family model, narrowed by ``filter_fn(module, name) -> bool``.
    Embeddings, pooler and task heads are outside the encoder and never pruned."""
    encoder = _check_bert(model)
    prefix = next(n for n, m in model.named_modules() if m is encoder)
    out = {}
    for name, module in encoder.named_modules():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(module, nn.Linear) and (filter_fn is None or filter_fn(module, full)):
            out[full] = module
    return out


def model_block_sparsity(model: nn.Module, block_size=(32, 32), filter_fn: Callable | None = None) -> float:
    """Share of all-zero blocks over the encoder's ``nn.Linear`` weights (blocks of every layer
    counted together). A masked linear counts its masked weight."""
    zero, total, _ = _block_counts(model, block_size, filter_fn)
    return zero / total if total else 0.0


def _block_counts(model, block_size, filter_fn=None) -> tuple[int, int, int]:
    """(all-zero blocks, blocks, layers) over the encoder's ``nn.Linear`` weights."""
    zero = total = layers = 0
    for module in encoder_linears(model, filter_fn).values():
        w = _effective_weight(module)
        nonzero = block_scores(w.ne(0).float(), block_size, "sum")
        zero += int((nonzero == 0).sum())
        total += nonzero.numel()
        layers += 1
    return zero, total, layers


def rounding_slack(model: nn.Module, block_size=(32, 32), filter_fn: Callable | None = None) -> float:
    """How far above a requested sparsity per-layer pruning may land: every layer rounds its
    share of blocks to a whole count (half a block each, at most)."""
    _, total, layers = _block_counts(model, block_size, filter_fn)
    return 0.5 * layers / total if total else 0.0


def _effective_weight(module: nn.Linear) -> Tensor:
    mask = getattr(module, "mask", None)
    w = module.weight.detach()
    return w * mask if isinstance(mask, Tensor) else w


def model_masks(model: nn.Module, sparsity: float | Mapping[str, float], block_size=(32, 32),
                method: str = "block_magnitude", scope: str = "layer", scores: Mapping[str, Tensor] | None = None,
                filter_fn: Callable | None = None) -> dict[str, Tensor]:
    """``{name: bool mask}`` for every encoder ``nn.Linear``.

    ``sparsity``: one share for the model, or ``{layer name: share}`` for every layer (as
    :func:`allocate_sparsity` gives them; ``scope="layer"`` only).

    ``method``: ``"block_magnitude"`` (blocks of ``block_size`` by L2 norm), ``"magnitude"``
    (unstructured, ignores ``block_size``), ``"movement"`` (blocks by summed ``scores[name]``) or
    ``"activation"`` (blocks by the L2 norm of the weight times the L2 norm of each input
    feature over calibration tokens, ``scores[name]`` of shape ``[in_features]``, as
    :func:`input_norms` collects them: Wanda's score of Sun et al. 2023, per block. BERT's hidden
    states have a few features far larger than the rest, and magnitude alone drops the blocks
    that read them: one-shot 50% of 32x32 blocks of a fine-tuned MiniLM-L6 scored 67.5% on 600
    Rotten Tomatoes test sentences by this score and 58.3% by magnitude, 50% unstructured 84.7%
    and 81.3%, dense 84.8%).
    ``scope``: ``"global"`` drops ``round(sparsity * all blocks)`` blocks wherever they score
    lowest (magnitudes compared as RMS per entry, so layers of different widths compete
    fairly); ``"layer"`` (the default) drops that share in each layer. Global magnitude ranks
    whole layers away: on fine-tuned MiniLM-L6 at 80% of 32x32 blocks it emptied every
    ``attention.output.dense`` and ``output.dense`` (their weights are the smallest), and the model
    fell to chance (benchmarks/bench_accuracy.py).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    block_size = (1, 1) if method == "magnitude" else check_block_size(block_size)
    linears = encoder_linears(model, filter_fn)
    if isinstance(sparsity, Mapping):
        if scope != "layer":
            raise ValueError("per-layer sparsities (a mapping) need scope='layer'")
        shares = {n: _check_fraction(f"sparsity[{n!r}]", v) for n, v in sparsity.items()}
        missing, extra = [n for n in linears if n not in shares], [n for n in shares if n not in linears]
        if missing or extra:
            raise ValueError(f"per-layer sparsities must name every encoder nn.Linear: missing {missing[:3]}, "
                             f"not encoder linears {extra[:3]}")
    else:
        sparsity = _check_fraction("sparsity", sparsity)
        shares = {n: sparsity for n in linears}
    if method in ("movement", "activation"):
        what = "accumulated -weight * grad" if method == "movement" else "input feature L2 norms (input_norms)"
        if scores is None:
            raise ValueError(f"method={method!r} needs scores: {{layer name: {what}}}")
        missing = [n for n in linears if n not in scores]
        if missing:
            raise ValueError(f"{method} scores are missing for {missing[:3]}")
        for name, lin in linears.items():
            want = tuple(lin.weight.shape) if method == "movement" else (lin.in_features,)
            if tuple(scores[name].shape) != want:
                raise ValueError(f"{method} scores of {name} have shape {tuple(scores[name].shape)}, "
                                 f"expected {want}")
    per_layer = {}
    for name, lin in linears.items():
        if method == "movement":
            per_layer[name] = block_scores(scores[name], block_size, "sum")
        else:
            w = _effective_weight(lin)
            if method == "activation":
                w = w.float() * scores[name].to(w.device).float()[None, :]
            per_layer[name] = block_scores(w, block_size, "rms" if scope == "global" else "l2")
    if scope == "layer":
        keep = {n: _keep_top(s, shares[n]) for n, s in per_layer.items()}
    else:
        flat = torch.cat([s.flatten() for s in per_layer.values()]) if per_layer else torch.zeros(0)
        flags = _keep_top(flat, sparsity)
        keep, i = {}, 0
        for name, s in per_layer.items():
            keep[name] = flags[i:i + s.numel()].reshape(s.shape)
            i += s.numel()
    return {n: _expand(keep[n], linears[n].weight.shape, block_size) for n in linears}


def square_sum_hook(sums: dict[str, Tensor], name: str) -> Callable:
    """A forward hook adding the squares of each input feature, summed over the tokens of the
    call, to ``sums[name]`` (a float32 ``[in_features]`` tensor)."""
    def hook(module, args, output):
        x = args[0].detach().float()
        sums[name].add_(x.reshape(-1, x.shape[-1]).square().sum(0).to(sums[name].device))
    return hook


def input_norms(model: nn.Module, batches: Iterable[Mapping], filter_fn: Callable | None = None) -> dict[str, Tensor]:
    """``{name: [in_features] float32}``: the L2 norm of each input feature of every encoder
    ``nn.Linear`` over all tokens of ``batches`` (dicts of model inputs; ``labels`` ignored), the
    ``scores`` of ``method="activation"``. Runs the model in eval mode without gradients."""
    linears = encoder_linears(model, filter_fn)
    sums = {n: torch.zeros(lin.in_features) for n, lin in linears.items()}
    handles = [lin.register_forward_hook(square_sum_hook(sums, n)) for n, lin in linears.items()]
    try:
        forward_batches(model, batches, "input_norms")
    finally:
        for h in handles:
            h.remove()
    return {n: v.sqrt() for n, v in sums.items()}


def forward_batches(model: nn.Module, batches: Iterable[Mapping], what: str) -> int:
    """Runs ``model`` in eval mode without gradients on each batch (dicts of model inputs;
    ``labels`` dropped), for the statistics its hooks gather; restores the mode. Returns the
    number of batches; ValueError naming ``what`` when there were none."""
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**{k: v for k, v in batch.items() if k != "labels"})
                seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError(f"{what} needs at least one batch, got none")
    return seen


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zeroes, in place, the weights that ``masks`` (``{module name: bool mask}``) drop. A masked
    linear (:class:`sparsebert.nn.masked_linear.MaskedLinear`) gets the mask itself."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"masks name {name!r}, which is not an nn.Linear of {type(model).__name__}")
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, the weight {tuple(module.weight.shape)}")
        if hasattr(module, "set_mask"):
            module.set_mask(mask)
        else:
            with torch.no_grad():
                module.weight.mul_(mask.to(module.weight.dtype))


def prune_model(model: nn.Module, sparsity: float, block_size=(32, 32), method: str = "block_magnitude",
                scope: str = "layer", scores: Mapping[str, Tensor] | None = None,
                filter_fn: Callable | None = None) -> dict[str, Tensor]:
    """One-shot pruning of the encoder's ``nn.Linear`` weights in place (see :func:`model_masks`);
    returns the masks. ValueError when ``sparsity`` is below the model's current block sparsity
    (pruning never brings weights back)."""
    sparsity = _check_fraction("sparsity", sparsity)
    measure_block = (1, 1) if method == "magnitude" else block_size
    if method in METHODS:
        current = model_block_sparsity(model, measure_block, filter_fn)
        if sparsity < current - rounding_slack(model, measure_block, filter_fn) - 1e-12:
            raise ValueError(f"sparsity {sparsity} asks for a density of {1 - sparsity:.4f}, above the model's current "
                             f"{1 - current:.4f} ({measure_block[0]}x{measure_block[1]} blocks): pruning cannot add "
                             "weights back")
    masks = model_masks(model, sparsity, block_size, method, scope, scores, filter_fn)
    apply_masks(model, masks)
    return masks


# --- per-layer sparsity from sensitivity --------------------------------------------------------

SENSITIVITY_LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def _output_gap(reference, out) -> Tensor:
    """How far a pruned model's output is from the unpruned one's: KL(reference || pruned) over
    the classes for a model with logits, else the squared error of the last hidden state
    relative to its square (``reference`` is the unpruned output, detached)."""
    if getattr(reference, "logits", None) is not None:
        return torch.nn.functional.kl_div(out.logits.float().log_softmax(-1), reference.logits.float().log_softmax(-1),
                                          log_target=True, reduction="batchmean")
    ref, got = reference.last_hidden_state.float(), out.last_hidden_state.float()
    return (got - ref).square().sum() / ref.square().sum().clamp(min=1e-12)


def layer_sensitivity(model: nn.Module, batches: Iterable[Mapping], levels: Iterable[float] = SENSITIVITY_LEVELS,
                      block_size=(32, 32), filter_fn: Callable | None = None) -> dict[str, dict[float, float]]:
    """``{layer name: {level: damage}}`` for every encoder ``nn.Linear``: how far the model's
    output moves over ``batches`` (dicts of model inputs; ``labels`` ignored) when that layer
    alone is pruned to ``level`` by block magnitude, the others untouched (KL divergence of the
    class distribution from the unpruned model's for a model with logits; else the relative
    squared error of the last hidden state). Eval mode, no gradients; the weights are restored.
    A layer already at or above a level scores 0 there. The input of :func:`allocate_sparsity`."""
    levels = sorted({_check_fraction("level", v) for v in levels})
    if not levels:
        raise ValueError("layer_sensitivity needs at least one level")
    block_size = check_block_size(block_size)
    linears = encoder_linears(model, filter_fn)
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    if not batches:
        raise ValueError("layer_sensitivity needs at least one batch, got none")
    was_training = model.training
    model.eval()
    out: dict[str, dict[float, float]] = {}
    try:
        with torch.no_grad():
            reference = [model(**b) for b in batches]
            for name, lin in linears.items():
                original = lin.weight.detach().clone()
                current = block_sparsity(_effective_weight(lin), block_size)
                out[name] = {}
                for level in levels:
                    if level <= current:
                        out[name][level] = 0.0
                        continue
                    keep = block_magnitude_mask(_effective_weight(lin), level, block_size)
                    lin.weight.mul_(keep.to(lin.weight.dtype))
                    out[name][level] = sum(float(_output_gap(r, model(**b))) for r, b in zip(reference, batches)) \
                        / len(batches)
                    lin.weight.copy_(original)
    finally:
        model.train(was_training)
    return out


def allocate_sparsity(model: nn.Module, sensitivity: Mapping[str, Mapping[float, float]], sparsity: float,
                      block_size=(32, 32), filter_fn: Callable | None = None) -> dict[str, float]:
    """``{layer name: share of blocks to prune}`` for every encoder ``nn.Linear`` such that the
    model's block sparsity is ``sparsity``, spending it where :func:`layer_sensitivity` says it
    hurts least: starting from each layer's current sparsity, the step to a layer's next probed
    level with the least added damage per pruned block is taken, one at a time, until the target
    is reached (the last step only as far as the target). Damage is taken as non-decreasing in
    the level. The result goes to :func:`model_masks` / ``Recipe(allocation="sensitivity")``.
    ValueError when the target is above what the probed levels reach."""
    sparsity = _check_fraction("sparsity", sparsity)
    block_size = check_block_size(block_size)
    linears = encoder_linears(model, filter_fn)
    missing = [n for n in linears if n not in sensitivity]
    if missing:
        raise ValueError(f"sensitivity has no entry for {missing[:3]}")
    blocks, current, curves = {}, {}, {}
    for name, lin in linears.items():
        w = _effective_weight(lin)
        blocks[name] = math.ceil(w.shape[0] / block_size[0]) * math.ceil(w.shape[1] / block_size[1])
        current[name] = block_sparsity(w, block_size)
        points, worst = [(current[name], 0.0)], 0.0
        for level, damage in sorted(sensitivity[name].items()):
            level = _check_fraction(f"sensitivity level of {name}", level)
            if not math.isfinite(damage):
                raise ValueError(f"sensitivity of {name} at {level} is {damage!r}")
            worst = max(worst, float(damage))
            if level > current[name]:
                points.append((level, worst))
        curves[name] = points
    total = sum(blocks.values())
    need = sparsity * total - sum(current[n] * blocks[n] for n in linears)  # blocks still to prune
    reach = sum((curves[n][-1][0] - current[n]) * blocks[n] for n in linears)
    if need > reach + 1e-9:
        raise ValueError(f"sparsity {sparsity} is above what the probed levels reach "
                         f"({(reach + sparsity * total - need) / total:.4f}); probe higher levels")
    at = {n: 0 for n in linears}  # index into curves[n]
    share = dict(current)
    while need > 1e-9:
        def cost(n):
            (l0, d0), (l1, d1) = curves[n][at[n]], curves[n][at[n] + 1]
            return (d1 - d0) / ((l1 - l0) * blocks[n])
        open_layers = [n for n in linears if at[n] + 1 < len(curves[n])]
        if not open_layers:  # only rounding left: the levels reach the target
            break
        best = min(open_layers, key=cost)
        l0, l1 = curves[best][at[best]][0], curves[best][at[best] + 1][0]
        step = (l1 - l0) * blocks[best]
        if step >= need:
            share[best] = l0 + need / blocks[best]
            need = 0.0
        else:
            share[best], need = l1, need - step
            at[best] += 1
    return share


# --- importance of heads and neurons -------------------------------------------------------------


def _layers(model) -> nn.ModuleList:
    return _check_bert(model).layer


def _default_loss(model, batch):
    out = model(**batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: give batches with 'labels' or a loss_fn(model, batch)")
    return loss


def _gated_importance(model, batches: Iterable[Mapping], loss_fn, where: Callable, sizes: list[int],
                      width: Callable) -> list[Tensor]:
    """|d loss / d gate| summed over ``batches``, for a gate of ones multiplying each unit (a head
    or a neuron) at the input of ``where(layer)``; ``width(layer)`` is a unit's width there."""
    layers = _layers(model)
    gates = [torch.ones(n, requires_grad=True) for n in sizes]
    scores = [torch.zeros(n) for n in sizes]
    handles = []
    for layer, gate in zip(layers, gates):
        w = width(layer)

        def hook(module, args, gate=gate, w=w):
            x = args[0]
            return (x * gate.repeat_interleave(w).to(x.dtype),) + tuple(args[1:])

        handles.append(where(layer).register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    loss_fn = loss_fn or _default_loss
    n_batches = 0
    try:
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, gates)
            for s, g in zip(scores, grads):
                s += g.detach().abs()
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("importance needs at least one batch, got none")
    return scores


def _head_counts(model) -> list[int]:
    return [layer.attention.self.query.out_features // layer.attention.self.attention_head_size
            for layer in _layers(model)]


def head_importance(model: nn.Module, batches: Iterable[Mapping], loss_fn: Callable | None = None,
                    normalize: bool = True) -> list[Tensor]:
    """Per layer, a ``[heads]`` tensor: the summed |gradient| of the loss with respect to a gate
    on each head's output (Michel et al. 2019), over ``batches`` (dicts of model inputs, with
    ``labels`` unless ``loss_fn(model, batch) -> loss`` says otherwise). ``normalize``: each
    layer's scores divided by their L2 norm, so layers compare (the paper's choice)."""
    _check_bert(model)
    scores = _gated_importance(model, batches, loss_fn, lambda layer: layer.attention.output.dense,
                               _head_counts(model), lambda layer: layer.attention.self.attention_head_size)
    return [s / s.norm().clamp(min=1e-12) for s in scores] if normalize else scores


def neuron_importance(model: nn.Module, batches: Iterable[Mapping], loss_fn: Callable | None = None) -> list[Tensor]:
    """Per layer, a ``[intermediate_size]`` tensor: summed |gradient| of the loss with respect to
    a gate on each FFN neuron's activation (first-order Taylor importance)."""
    _check_bert(model)
    sizes = [layer.intermediate.dense.out_features for layer in _layers(model)]
    return _gated_importance(model, batches, loss_fn, lambda layer: layer.output.dense, sizes, lambda layer: 1)


def _check_importance(importance, sizes: list[int], what: str) -> list[Tensor]:
    if not isinstance(importance, (list, tuple)) or len(importance) != len(sizes):
        length = len(importance) if hasattr(importance, "__len__") else "?"
        raise ValueError(f"importance must be a list of {len(sizes)} tensors (one per layer), got "
                         f"{type(importance).__name__} of length {length}")
    for i, (s, n) in enumerate(zip(importance, sizes)):
        if not isinstance(s, Tensor) or tuple(s.shape) != (n,):
            raise ValueError(f"importance[{i}] must have shape ({n},) ({what} of layer {i}), got "
                             f"{tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__}")
    return [s.detach().float() for s in importance]


def heads_to_prune(importance: list[Tensor], fraction: float, scope: str = "global") -> dict[int, list[int]]:
    """``{layer: [head indices]}`` of the ``round(fraction * all heads)`` least important heads
    (``scope="global"``) or that share in every layer (``"layer"``); every layer keeps at least
    one head."""
    fraction = _check_fraction("fraction", fraction)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    imp = _check_importance(importance, [len(s) if isinstance(s, Tensor) else -1 for s in importance], "heads")
    out: dict[int, list[int]] = {}
    if scope == "layer":
        for i, s in enumerate(imp):
            k = min(round(fraction * len(s)), len(s) - 1)
            if k > 0:
                out[i] = sorted(torch.argsort(s)[:k].tolist())
        return out
    total = sum(len(s) for s in imp)
    k = round(fraction * total)
    order = sorted((float(v), i, h) for i, s in enumerate(imp) for h, v in enumerate(s))  # ties: by layer, head
    left = [len(s) for s in imp]
    for _, i, h in order:
        if k == 0:
            break
        if left[i] > 1:
            out.setdefault(i, []).append(h)
            left[i] -= 1
            k -= 1
    return {i: sorted(v) for i, v in sorted(out.items())}


def neurons_to_prune(importance: list[Tensor], fraction: float, multiple_of: int = 32) -> dict[int, list[int]]:
    """``{layer: [neuron indices]}``: in every layer the least important neurons, so that the
    layer keeps ``(1 - fraction) * size`` rounded to a multiple of ``multiple_of`` (at least
    ``multiple_of``; the block size of the kernels keeps the shrunk layers free of partial blocks)."""
    fraction = _check_fraction("fraction", fraction)
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of must be a positive int, got {multiple_of!r}")
    imp = _check_importance(importance, [len(s) if isinstance(s, Tensor) else -1 for s in importance], "neurons")
    out = {}
    for i, s in enumerate(imp):
        keep = min(len(s), max(multiple_of, multiple_of * round((1 - fraction) * len(s) / multiple_of)))
        if keep < len(s):
            out[i] = sorted(torch.argsort(s)[: len(s) - keep].tolist())
    return out


# --- structural pruning --------------------------------------------------------------------------


def _shrink(linear: nn.Linear, keep: Tensor, dim: int) -> nn.Linear:
    """A new nn.Linear with only the ``keep`` rows (dim 0) or columns (dim 1) of ``linear``."""
    w = linear.weight.detach().index_select(dim, keep).clone()
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach() if dim == 1 else linear.bias.detach().index_select(0, keep))
    new.train(linear.training)
    return new


def _check_units(spec, n_layers: int, sizes: list[int], what: str) -> dict[int, list[int]]:
    if not isinstance(spec, Mapping):
        raise TypeError(f"{what} must be a dict {{layer index: [indices]}}, got {type(spec).__name__}")
    out = {}
    for layer, units in spec.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ValueError(f"{what}: layer {layer!r} is not a layer index in [0, {n_layers})")
        units = [int(u) for u in units]
        bad = [u for u in units if not 0 <= u < sizes[layer]]
        if bad:
            raise ValueError(f"{what}: layer {layer} has {sizes[layer]}, no index {bad[0]}")
        if len(set(units)) != len(units):
            raise ValueError(f"{what}: layer {layer} lists an index twice: {sorted(units)}")
        out[layer] = sorted(units)
    return out


def _record(model) -> None:
    layers = _layers(model)
    cfg = model.config
    setattr(cfg, HEADS_ATTR, _head_counts(model))
    setattr(cfg, INTERMEDIATE_ATTR, [layer.intermediate.dense.out_features for layer in layers])
    cfg.num_hidden_layers = len(layers)


def _set_heads(layer, keep_heads: Tensor) -> None:
    attn = layer.attention.self
    d = attn.attention_head_size
    rows = (keep_heads[:, None] * d + torch.arange(d)[None, :]).flatten()
    for proj in ("query", "key", "value"):
        setattr(attn, proj, _shrink(getattr(attn, proj), rows, 0))
    layer.attention.output.dense = _shrink(layer.attention.output.dense, rows, 1)
    attn.num_attention_heads = len(keep_heads)
    attn.all_head_size = len(keep_heads) * d


def prune_heads(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> nn.Module:
    """Removes attention heads in place: ``heads`` is ``{layer index: [head indices]}`` (indices
    into the layer as it is now). Every layer keeps at least one head. The model computes what it
    computed with those heads' outputs zeroed, with smaller matrices; its config records the
    per-layer head counts (``heads_per_layer``)."""
    layers = _layers(model)
    counts = _head_counts(model)
    spec = _check_units(heads, len(layers), counts, "heads")
    for i, units in spec.items():
        if len(units) >= counts[i]:
            raise ValueError(f"heads: layer {i} would lose all its {counts[i]} heads; keep at least one "
                             "(drop_layers removes a whole layer)")
    for i, units in spec.items():
        keep = torch.tensor([h for h in range(counts[i]) if h not in set(units)], dtype=torch.long)
        _set_heads(layers[i], keep)
    _record(model)
    return model


def prune_neurons(model: nn.Module, neurons: Mapping[int, Iterable[int]]) -> nn.Module:
    """Removes FFN neurons in place: ``neurons`` is ``{layer index: [neuron indices]}``. The model
    computes what it computed with those neurons' activations zeroed; its config records the
    per-layer intermediate sizes (``intermediate_size_per_layer``)."""
    layers = _layers(model)
    sizes = [layer.intermediate.dense.out_features for layer in layers]
    spec = _check_units(neurons, len(layers), sizes, "neurons")
    for i, units in spec.items():
        drop = set(units)
        keep = torch.tensor([j for j in range(sizes[i]) if j not in drop], dtype=torch.long)
        layers[i].intermediate.dense = _shrink(layers[i].intermediate.dense, keep, 0)
        layers[i].output.dense = _shrink(layers[i].output.dense, keep, 1)
    _record(model)
    return model


def drop_layers(model: nn.Module, layers: Iterable[int]) -> nn.Module:
    """Removes whole encoder layers in place (``layers``: indices); at least one layer stays.
    ``config.num_hidden_layers`` and the per-layer records follow."""
    encoder = _check_bert(model)
    n = len(encoder.layer)
    drop = [int(i) if not isinstance(i, bool) else i for i in layers]
    bad = [i for i in drop if isinstance(i, bool) or not 0 <= i < n]
    if bad:
        raise ValueError(f"layers: {bad[0]!r} is not a layer index in [0, {n})")
    if len(set(drop)) != len(drop):
        raise ValueError(f"layers: an index is listed twice: {sorted(drop)}")
    if len(drop) >= n:
        raise ValueError(f"layers: dropping {len(drop)} of {n} layers would leave none")
    encoder.layer = nn.ModuleList([layer for i, layer in enumerate(encoder.layer) if i not in set(drop)])
    for i, layer in enumerate(encoder.layer):
        attn = layer.attention.self
        if hasattr(attn, "layer_idx"):
            attn.layer_idx = i
    _record(model)
    return model


def restructure(model: nn.Module) -> nn.Module:
    """Shrinks a freshly built model to the per-layer head counts and intermediate sizes its
    config records (what :func:`prune_heads` / :func:`prune_neurons` wrote), so that the state
    dict of the pruned model loads into it. A config without them leaves the model as it is."""
    layers = _layers(model)
    heads = getattr(model.config, HEADS_ATTR, None)
    sizes = getattr(model.config, INTERMEDIATE_ATTR, None)
    for what, values in ((HEADS_ATTR, heads), (INTERMEDIATE_ATTR, sizes)):
        if values is not None and (not isinstance(values, (list, tuple)) or len(values) != len(layers)
                                   or not all(isinstance(v, int) and v >= 0 for v in values)):
            raise ValueError(f"config.{what} must list a non-negative int per layer ({len(layers)}), got {values!r}")
    for i, layer in enumerate(layers):
        if heads is not None and heads[i] != _head_counts(model)[i]:
            if not 1 <= heads[i] <= _head_counts(model)[i]:
                raise ValueError(f"config.{HEADS_ATTR}[{i}] = {heads[i]} is not in [1, {_head_counts(model)[i]}]")
            _set_heads(layer, torch.arange(heads[i]))
        if sizes is not None and sizes[i] != layer.intermediate.dense.out_features:
            if sizes[i] > layer.intermediate.dense.out_features:
                raise ValueError(f"config.{INTERMEDIATE_ATTR}[{i}] = {sizes[i]} is above the config's "
                                 f"intermediate_size {layer.intermediate.dense.out_features}")
            keep = torch.arange(sizes[i])
            layer.intermediate.dense = _shrink(layer.intermediate.dense, keep, 0)
            layer.output.dense = _shrink(layer.output.dense, keep, 1)
    return model


def from_pretrained(directory: str | os.PathLike, model_class=None) -> nn.Module:
    """Loads a ``save_pretrained`` directory of a structurally pruned model (transformers'
    ``from_pretrained`` builds every layer at the config's full size and refuses the smaller
    weights). ``model_class``: a transformers class (default: the config's architecture)."""
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(str(directory))
    if model_class is None:
        arch = (getattr(config, "architectures", None) or ["BertModel"])[0]
        model_class = getattr(transformers, arch, None)
        if model_class is None:
            raise ValueError(f"config architecture {arch!r} is not a transformers class; pass model_class")
    with no_init_weights():
        model = model_class(config)
    restructure(model)
    path = os.path.join(str(directory), "model.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist (a save_pretrained directory holds model.safetensors)")
    state = load_file(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)} - set(dict(model.named_parameters()))
    missing = [k for k in missing if k not in tied and not _is_tied(model, k)]
    if missing or unexpected:
        raise ValueError(f"{path!r} does not match {model_class.__name__} with its recorded structure: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def _is_tied(model: nn.Module, key: str) -> bool:
    """Whether ``key`` is a parameter that shares storage with another parameter."""
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params.get(key)
    return p is not None and any(q is p for k, q in params.items() if k != key)
