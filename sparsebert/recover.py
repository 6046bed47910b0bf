"""``sparsebert.recover``: prune while fine-tuning, distilling from the dense teacher, so that a
sparse model keeps the accuracy one-shot pruning loses.

The recipe (:class:`Recipe`, a dataclass you can print and save next to the model) follows
SparseML / nn_pruning: the share of pruned blocks in the encoder's ``nn.Linear`` layers rises
from the model's current one to the target on Zhu & Gupta's cubic schedule (2017),

    s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_1 - t_0))^3   for t_0 <= t <= t_1,

with masks recomputed every ``prune_every`` steps (block magnitude, or movement scores
``-weight * grad`` accumulated during training) and held between updates by
:class:`sparsebert.nn.masked_linear.MaskedLinear`; then training goes on at the target. The loss
is ``task_weight * cross-entropy + distill_weight * T^2 * KL(teacher || student at temperature
T) + hidden_weight * MSE(hidden states)``; AdamW with linear warm-up and linear decay.

Cost: a step is the student's forward and backward on one batch; batches are grouped by length
(little padding), the teacher runs once per example (its logits are kept for later epochs
unless hidden states are distilled), AdamW is the fused one, and ``Recipe.bf16`` autocasts the
student to bfloat16 (``benchmarks/bench_recover.py`` times each).

On return the model holds plain ``nn.Linear`` layers with zeros in place, which
``sparsebert.compress`` turns into block-sparse kernels.

Data: a list of examples, each a dict with ``input_ids`` (a list of ints or a 1-D tensor) and an
int ``labels``; :func:`encode` builds it from texts and labels with a tokenizer. When the recipe
distills, examples may come without ``labels``: a transfer set (unlabelled or augmented text,
:func:`mask_tokens`) whose only targets are the teacher's outputs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .nn.masked_linear import MaskedLinear, mask_linears, unmask_linears
from .ops.bsr_format import check_block_size
from .prune import (_check_bert, _effective_weight, allocate_sparsity, block_sparsity, encoder_linears,
                    forward_batches, input_norms, layer_sensitivity, model_block_sparsity, model_masks,
                    rounding_slack, square_sum_hook)

__all__ = ["Recipe", "recover", "cubic_sparsity", "encode", "collate", "mask_tokens", "accuracy",
           "activation_absmax", "epoch_order", "TimeLimitReached", "CHECKPOINT_VERSION", "IGNORE_LABEL"]

CHECKPOINT_VERSION = 2
IGNORE_LABEL = -100  # collate's label for an example without one (cross_entropy's ignore_index)
RECOVER_METHODS = ("magnitude", "movement", "activation")
SCOPES = ("global", "layer")
ALLOCATIONS = ("uniform", "sensitivity")
SENSITIVITY_BATCHES = 4  # batches allocation="sensitivity" probes (6 forwards per layer and batch)


def _number(name: str, value, lo: float | None = None, hi: float | None = None, integer: bool = False,
            lo_open: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{name} must be {'an int' if integer else 'a number'} in {rng}, got {value!r}")


@dataclass
class Recipe:
    """What :func:`recover` does; every field is validated on construction.

    - ``sparsity``: final share of pruned ``block_size`` blocks over the encoder's ``nn.Linear``
      weights (None: keep the current zeros, no further pruning: plain fine-tuning/distillation).
    - ``block_size``: (rows, cols) of the pruned blocks; (1, 1) is unstructured pruning.
    - ``method``: ``"magnitude"`` (block L2 norm), ``"movement"`` (accumulated ``-w * grad``) or
      ``"activation"`` (block L2 norm of the weight times each input feature's L2 norm over the
      training tokens seen so far, Wanda's score; before the first mask, over the first 8
      batches of the data: see :func:`sparsebert.prune.model_masks`).
    - ``scope``: ``"layer"`` (the same share in every layer) or ``"global"`` (blocks compete across
      layers; see :func:`sparsebert.prune.model_masks` for why that is not the default).
    - ``allocation``: with ``scope="layer"``, ``"uniform"`` (every layer at ``sparsity``) or
      ``"sensitivity"``: before the first step each layer is pruned alone to a few levels over
      the first 4 batches (:func:`sparsebert.prune.layer_sensitivity`), and the layers get
      shares that reach ``sparsity`` over the model where that moves the output least
      (:func:`sparsebert.prune.allocate_sparsity`); every layer ramps to its own share. The
      probe is 6 model forwards per layer and batch: minutes on long sentences.
    - ``steps``: optimizer steps in all; ``batch_size``: examples per step.
    - ``group_by_length``: each epoch's shuffled examples are cut into windows of 64 batches,
      sorted by length inside a window, and the batches shuffled: batches of similar lengths pad
      little, as transformers' ``group_by_length``. False: batches of a plain shuffle.
    - ``bf16``: the student's forward and backward under bfloat16 autocast (weights, gradients
      and optimizer state stay fp32); about 1.5x faster steps where the CPU has AVX512-BF16 or
      AMX, slower where it has neither (bf16 then runs emulated).
    - ``ramp_start`` / ``ramp_end``: where the cubic ramp starts and reaches the target, as
      shares of ``steps`` (``0, 0``: one-shot pruning before the first step).
    - ``prune_every``: steps between mask updates on the ramp.
    - ``lr``, ``weight_decay``, ``warmup`` (share of steps), ``max_grad_norm``.
    - ``task_weight``, ``distill_weight`` (soft logits at ``temperature``), ``hidden_weight``
      (MSE between hidden states; student layer i is matched to teacher layer
      round(i * L_teacher / L_student)).
    - ``qat``: quantization-aware training once the ramp has reached the target: every pruned
      layer fake-quantizes its weight (per channel) and input (per token) to int8 as the INT8
      kernels do (straight-through gradients), for models compressed with ``int8="dynamic"``.
    - ``seed``: the same seed, data and thread count give the same weights.
    """

    sparsity: float | None = 0.8
    block_size: tuple[int, int] = (32, 32)
    method: str = "magnitude"
    scope: str = "layer"
    allocation: str = "uniform"
    steps: int = 300
    batch_size: int = 32
    ramp_start: float = 0.0
    ramp_end: float = 0.7
    prune_every: int = 10
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_grad_norm: float = 1.0
    task_weight: float = 1.0
    distill_weight: float = 1.0
    temperature: float = 2.0
    hidden_weight: float = 0.0
    qat: bool = False
    group_by_length: bool = True
    bf16: bool = False
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.block_size, list):
            self.block_size = tuple(self.block_size)
        self.validate()

    def validate(self) -> None:
        if self.sparsity is not None:
            _number("sparsity", self.sparsity, 0.0, 1.0)
            if self.sparsity >= 1.0:
                raise ValueError(f"sparsity must be below 1 (some weights must stay), got {self.sparsity!r}")
        self.block_size = check_block_size(self.block_size)
        if self.method not in RECOVER_METHODS:
            raise ValueError(f"method must be one of {RECOVER_METHODS}, got {self.method!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.allocation == "sensitivity" and self.scope != "layer":
            raise ValueError("allocation='sensitivity' sets a share per layer: it needs scope='layer', "
                             f"got {self.scope!r}")
        _number("steps", self.steps, 1, integer=True)
        _number("batch_size", self.batch_size, 1, integer=True)
        _number("ramp_start", self.ramp_start, 0.0, 1.0)
        _number("ramp_end", self.ramp_end, 0.0, 1.0)
        if self.ramp_end < self.ramp_start:
            raise ValueError(f"ramp_end ({self.ramp_end}) must not come before ramp_start ({self.ramp_start})")
        _number("prune_every", self.prune_every, 1, integer=True)
        if self.method == "movement" and self.sparsity is not None and round(self.ramp_end * self.steps) == 0:
            raise ValueError("method='movement' ranks blocks by scores gathered while training: it needs a ramp "
                             "(ramp_end > 0), not one-shot pruning")
        _number("lr", self.lr, 0.0, lo_open=True)
        _number("weight_decay", self.weight_decay, 0.0)
        _number("warmup", self.warmup, 0.0, 1.0)
        _number("max_grad_norm", self.max_grad_norm, 0.0, lo_open=True)
        for name in ("task_weight", "distill_weight", "hidden_weight"):
            _number(name, getattr(self, name), 0.0)
        if self.task_weight == self.distill_weight == self.hidden_weight == 0:
            raise ValueError("task_weight, distill_weight and hidden_weight are all 0: nothing to train on")
        _number("temperature", self.temperature, 0.0, lo_open=True)
        for name in ("qat", "group_by_length", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _number("seed", self.seed, 0, integer=True)

    @property
    def distills(self) -> bool:
        return self.distill_weight > 0 or self.hidden_weight > 0

    def ramp_steps(self) -> tuple[int, int]:
        """(first, last) step of the ramp; the last is at most ``steps - 1`` so training at the
        target happens."""
        last = self.steps - 1
        return min(round(self.ramp_start * self.steps), last), min(round(self.ramp_end * self.steps), last)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_size"] = list(self.block_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Recipe":
        if not isinstance(d, Mapping):
            raise ValueError(f"a Recipe dict is needed, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Recipe fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if k == "block_size" else v for k, v in d.items()})


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's cubic schedule: ``initial`` up to ``start``, ``final`` from ``end`` on, and
    ``final + (initial - final) * (1 - (step - start) / (end - start))^3`` between."""
    if step < start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


# --- data ----------------------------------------------------------------------------------------


def encode(tokenizer, texts: Sequence[str], labels: Sequence[int] | None = None, max_length: int = 128) -> list[dict]:
    """Examples for :func:`recover` and :func:`accuracy`: ``{"input_ids": [...], "labels": int}``."""
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": list(i), **({"labels": int(labels[k])} if labels is not None else {})}
            for k, i in enumerate(ids)]


def collate(examples: Sequence[Mapping], pad_id: int = 0) -> dict:
    """A padded batch ``{"input_ids", "attention_mask"[, "labels"]}`` of examples; ``labels``
    when any example has one, :data:`IGNORE_LABEL` for those without."""
    rows = [torch.as_tensor(e["input_ids"], dtype=torch.long).flatten() for e in examples]
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if any("labels" in e for e in examples):
        batch["labels"] = torch.tensor([int(e["labels"]) if "labels" in e else IGNORE_LABEL for e in examples],
                                       dtype=torch.long)
    return batch


def mask_tokens(examples: Sequence[Mapping], mask_id: int, share: float = 0.15, copies: int = 1, seed: int = 0,
                keep_ends: bool = True) -> list[dict]:
    """Unlabelled variants of ``examples`` for a distillation transfer set: ``copies`` per example,
    each token replaced by ``mask_id`` (the tokenizer's ``mask_token_id``) with probability
    ``share`` (the first and last token, [CLS] and [SEP], kept when ``keep_ends``), seeded. The
    teacher's outputs on them are the student's targets (their labels may no longer hold)."""
    _number("share", share, 0.0, 1.0)
    _number("copies", copies, 1, integer=True)
    _number("seed", seed, 0, integer=True)
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
        raise ValueError(f"mask_id must be a token id (an int >= 0), got {mask_id!r}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        for e in examples:
            ids = torch.as_tensor(e["input_ids"], dtype=torch.long).flatten().clone()
            hit = torch.rand(len(ids), generator=g) < share
            if keep_ends:
                hit[0] = hit[-1] = False
            ids[hit] = mask_id
            out.append({"input_ids": ids.tolist()})
    return out


def _check_data(data, num_labels: int, need_labels: bool, need_some: bool = False,
                unlabelled_hint: str = "") -> list[Mapping]:
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be a list of examples (dicts with input_ids and labels), got {type(data).__name__}")
    data = list(data)
    if not data:
        raise ValueError("data is empty: recover needs at least one example")
    for i, e in enumerate(data):
        if not isinstance(e, Mapping) or "input_ids" not in e:
            raise ValueError(f"example {i} must be a dict with 'input_ids', got {type(e).__name__}")
        if len(e["input_ids"]) == 0:
            raise ValueError(f"example {i} has no input_ids")
        if need_labels and "labels" not in e:
            raise ValueError(f"example {i} has no 'labels'{unlabelled_hint}")
        if "labels" in e:
            lab = e["labels"]
            if isinstance(lab, Tensor) and lab.numel() == 1:
                lab = lab.item()
            if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab < num_labels:
                raise ValueError(f"example {i}: label {lab!r} is not one of the head's {num_labels} classes "
                                 f"(ints in [0, {num_labels}))")
    if need_some and not any("labels" in e for e in data):
        raise ValueError("no example has labels, but task_weight > 0: label some or set task_weight=0")
    return data


def accuracy(model: nn.Module, data: Sequence[Mapping], batch_size: int = 64) -> float:
    """Percent of ``data`` (examples with ``labels``) whose argmax logit is the label. Batches
    are formed from length-sorted examples (little padding)."""
    data = _check_data(data, model.config.num_labels, need_labels=True)
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    correct = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(order), batch_size):
                batch = collate([data[j] for j in order[i:i + batch_size]], _pad_id(model))
                labels = batch.pop("labels")
                correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    finally:
        model.train(was_training)
    return 100.0 * correct / len(data)


def _pad_id(model) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


# --- INT8 calibration -----------------------------------------------------------------------------


def activation_absmax(model: nn.Module, batches: Iterable[Mapping],
                      filter_fn: Callable | None = None) -> dict[str, Tensor]:
    """``{name: [in_features] float32}``: the largest |input| of every ``nn.Linear`` per input
    feature over ``batches`` (dicts of model inputs): the ``act_absmax`` that
    ``Int8Linear.from_dense`` / ``SparseInt8Linear.from_dense`` take for SmoothQuant.
    ``filter_fn(module, name) -> bool`` narrows the layers (default: all)."""
    from .compress import _Calibrator

    modules = {n: m for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(m, n))}
    calib = _Calibrator(modules)
    try:
        forward_batches(model, batches, "activation_absmax")
    finally:
        calib.remove()
    return dict(calib.absmax)


# --- recover -------------------------------------------------------------------------------------


class TimeLimitReached(TimeoutError):
    """``recover`` stopped at ``time_limit`` after saving its checkpoint; calling it again with
    the same arguments resumes from there."""

    def __init__(self, step: int, steps: int, checkpoint):
        super().__init__(f"recover: time limit reached at step {step} of {steps}; checkpoint {str(checkpoint)!r} "
                         "saved, call again with it to resume")
        self.step = step


def _check_models(model, teacher, recipe: Recipe) -> None:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or not type(model).__name__.endswith("ForSequenceClassification"):
        raise TypeError(f"recover trains a Hugging Face sequence classification model (a *ForSequenceClassification), "
                        f"got {type(model).__name__}")
    _check_bert(model, "recover")  # TypeError unless BERT-family, naming recover and what it takes
    if teacher is None:
        if recipe.distills:
            raise ValueError("the recipe distills (distill_weight or hidden_weight > 0) but no teacher was given; "
                             "pass the dense model or set both weights to 0")
        return
    if not isinstance(teacher, nn.Module) or not hasattr(teacher, "config"):
        raise TypeError(f"teacher must be a Hugging Face model, got {type(teacher).__name__}")
    for attr in ("vocab_size", "hidden_size"):
        a, b = getattr(model.config, attr, None), getattr(teacher.config, attr, None)
        if a != b:
            raise ValueError(f"teacher {attr} {b} differs from the student's {a}: distill from the model the student "
                             "was made from")
    if recipe.distill_weight > 0 and teacher.config.num_labels != model.config.num_labels:
        raise ValueError(f"teacher has {teacher.config.num_labels} classes, the student {model.config.num_labels}")


def _hidden_mse(student_hidden, teacher_hidden, mask: Tensor) -> Tensor:
    ls, lt = len(student_hidden) - 1, len(teacher_hidden) - 1
    m = mask[..., None].float()
    denom = m.sum() * student_hidden[0].shape[-1]
    total = 0.0
    for i in range(1, ls + 1):
        t = teacher_hidden[round(i * lt / ls)]
        total = total + ((student_hidden[i].float() - t).square() * m).sum() / denom
    return total / ls


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (steps - step) / max(1, steps - warmup))


GROUP_WINDOW = 64  # batches per window that group_by_length sorts


def epoch_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                group_by_length: bool = True) -> Tensor:
    """One epoch's order of the examples: a seeded shuffle; with ``group_by_length``, windows of
    :data:`GROUP_WINDOW` batches of it sorted by length (longest first), cut into batches of
    ``batch_size`` and the batches shuffled, so that consecutive ``batch_size`` slices are batches
    of similar length."""
    order = torch.randperm(len(lengths), generator=generator)
    if not group_by_length:
        return order
    window = GROUP_WINDOW * batch_size
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window].tolist(), key=lambda i: -lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    # Full batches in a shuffled order; a last short batch (if any) stays last, as recover
    # starts a new epoch rather than take a batch of fewer than batch_size examples.
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    perm = torch.randperm(len(full), generator=generator).tolist()
    return torch.tensor([i for k in perm for i in full[k]] + [i for b in short for i in b], dtype=torch.long)


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def recover(model: nn.Module, teacher: nn.Module | None, data: Sequence[Mapping], schedule: Recipe | None = None, *,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50, time_limit: float | None = None,
            progress: bool = True, log: list | None = None) -> nn.Module:
    """Prunes ``model`` (a BERT-family ``*ForSequenceClassification``) to ``schedule.sparsity``
    while training it on ``data``, distilling from ``teacher`` (the dense model; None when the
    recipe does not distill). Trains in place and returns the model in eval mode with plain
    ``nn.Linear`` layers (zeros in place).

    ``checkpoint``: a file written every ``checkpoint_every`` steps and at the end; when it exists
    and was written by the same recipe, training resumes from it. ``time_limit``: seconds after
    which the checkpoint is saved and :class:`TimeLimitReached` raised. ``log``: a list that
    gets ``{"step", "loss", "sparsity", "lr"}`` per step.

    ``data`` may hold examples without ``labels`` when the recipe distills: on those the loss is
    the distillation terms only (a transfer set, e.g. :func:`mask_tokens` of the labelled ones;
    the task loss averages over the labelled examples of each batch).

    Raises before training: TypeError for a model or teacher of the wrong kind, ValueError for an
    empty data set, labels outside the head's classes, unlabelled examples when nothing distills
    (or no labelled one when ``task_weight > 0``), a target density above the current one,
    a teacher of another vocabulary or hidden size. During training a non-finite loss or gradient
    raises FloatingPointError naming the step; the model keeps the weights of the last good step
    (and the checkpoint file its last save).
    """
    recipe = schedule if schedule is not None else Recipe()
    if not isinstance(recipe, Recipe):
        raise TypeError(f"schedule must be a Recipe, got {type(recipe).__name__}")
    recipe.validate()
    _check_models(model, teacher, recipe)
    # Without labels an example is transfer data: only the teacher's outputs train on it.
    data = _check_data(data, model.config.num_labels, need_labels=not recipe.distills,
                       need_some=recipe.task_weight > 0,
                       unlabelled_hint=": examples without labels are transfer data, which needs a recipe that "
                                       "distills from a teacher")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if time_limit is not None:
        _number("time_limit", time_limit, 0.0)
        if checkpoint is None:
            raise ValueError("time_limit needs a checkpoint path to resume from")

    names = list(encoder_linears(model))
    initial = model_block_sparsity(model, recipe.block_size)
    target = initial if recipe.sparsity is None else recipe.sparsity
    if target < initial - rounding_slack(model, recipe.block_size) - 1e-12:
        raise ValueError(f"target density {1 - target:.4f} (sparsity {target}) is above the model's current "
                         f"{1 - initial:.4f} in {recipe.block_size[0]}x{recipe.block_size[1]} blocks: pruning cannot "
                         "add weights back")
    target = max(target, initial)  # a model pruned per layer to the target lands up to half a block above it
    ckpt = Path(checkpoint) if checkpoint is not None else None
    start_time = time.perf_counter()

    torch.manual_seed(recipe.seed)
    order_gen = torch.Generator().manual_seed(recipe.seed)
    masked = mask_linears(model, names)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, fused=True)
    warmup = round(recipe.warmup * recipe.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, recipe.steps, warmup))
    if recipe.method == "movement":
        scores = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in masked.items()}
    elif recipe.method == "activation":  # sums of squares of each input feature over the tokens seen
        scores = {n: torch.zeros(m.in_features, dtype=torch.float32) for n, m in masked.items()}
    else:
        scores = None
    first, last = recipe.ramp_steps()
    mask_sparsity = initial
    lengths = [len(e["input_ids"]) for e in data]

    def new_order() -> Tensor:
        return epoch_order(lengths, recipe.batch_size, order_gen, recipe.group_by_length)

    step, order, pos = 0, new_order(), 0
    # The teacher is in eval mode and fixed: its logits for an example are computed once (in the
    # example's first batch) and reused every epoch. Hidden-state distillation runs it each step.
    cache_teacher = teacher is not None and recipe.distill_weight > 0 and recipe.hidden_weight == 0
    # allocation="sensitivity": {layer: (its sparsity at the start, its target)}, set before the first step
    layer_targets = None
    teacher_logits = torch.zeros(len(data), model.config.num_labels) if cache_teacher else None
    have_logits = torch.zeros(len(data), dtype=torch.bool) if cache_teacher else None

    def state() -> dict:
        return {"version": CHECKPOINT_VERSION, "recipe": recipe.to_dict(), "step": step,
                "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(), "order_rng": order_gen.get_state(), "order": order, "pos": pos,
                "scores": scores, "mask_sparsity": mask_sparsity, "initial": initial,
                "teacher_logits": teacher_logits, "have_logits": have_logits, "layer_targets": layer_targets}

    handles = []  # forward hooks of method='activation'
    try:
        if ckpt is not None and ckpt.is_file():
            saved = torch.load(ckpt, weights_only=True)
            if saved.get("version") != CHECKPOINT_VERSION or saved.get("recipe") != recipe.to_dict():
                raise ValueError(f"checkpoint {str(ckpt)!r} was written by another recipe or version; remove it or "
                                 "pass another path")
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["rng"])
            order_gen.set_state(saved["order_rng"])
            step, order, pos = saved["step"], saved["order"], saved["pos"]
            scores, mask_sparsity, initial = saved["scores"], saved["mask_sparsity"], saved["initial"]
            teacher_logits, have_logits = saved["teacher_logits"], saved["have_logits"]
            layer_targets = saved["layer_targets"]

        from tqdm.auto import tqdm

        pad = _pad_id(model)
        device_type = next(model.parameters()).device.type  # of the autocast that Recipe.bf16 asks for
        in_masked = lambda m, n: n in masked  # noqa: E731
        if recipe.allocation == "sensitivity" and recipe.sparsity is not None and layer_targets is None:
            probe = [collate(data[i:i + recipe.batch_size], pad)
                     for i in range(0, min(len(data), SENSITIVITY_BATCHES * recipe.batch_size), recipe.batch_size)]
            shares = allocate_sparsity(model, layer_sensitivity(model, probe, block_size=recipe.block_size,
                                                                filter_fn=in_masked),
                                       target, recipe.block_size, filter_fn=in_masked)
            layer_targets = {n: (block_sparsity(_effective_weight(m), recipe.block_size), shares[n])
                             for n, m in masked.items()}
        if recipe.method == "activation":
            if step == 0:  # the first masks need statistics before any training step
                calib = [collate(data[i:i + recipe.batch_size], pad)
                         for i in range(0, min(len(data), 8 * recipe.batch_size), recipe.batch_size)]
                for n, v in input_norms(model, calib, filter_fn=in_masked).items():
                    scores[n] += v.square()
            handles = [m.register_forward_hook(square_sum_hook(scores, n)) for n, m in masked.items()]
        model.train()
        if teacher is not None:
            teacher.eval()
        bar = tqdm(total=recipe.steps, initial=step, desc="sparsebert recover", unit="step", disable=not progress)
        while step < recipe.steps:
            # Masks: on the ramp every prune_every steps, and once more where it ends.
            if recipe.sparsity is not None and step >= first and (
                    (step - first) % recipe.prune_every == 0 or step == last) and mask_sparsity < target - 1e-12:
                s = cubic_sparsity(step, initial, target, first, last)
                if s > mask_sparsity:
                    method = {"magnitude": "block_magnitude"}.get(recipe.method, recipe.method)
                    share = s
                    if layer_targets is not None:  # each layer the same way along its own ramp
                        f = (s - initial) / (target - initial) if target > initial else 1.0
                        share = {n: a + f * (b - a) for n, (a, b) in layer_targets.items()}
                    masks = model_masks(model, share, recipe.block_size, method, recipe.scope,
                                        {n: v.sqrt() for n, v in scores.items()} if method == "activation" else scores,
                                        filter_fn=in_masked)
                    for n, mk in masks.items():
                        masked[n].set_mask(mk)
                    mask_sparsity = s

            if recipe.qat and step >= last:
                for m in masked.values():
                    m.fake_quant = True

            if pos + recipe.batch_size > len(order):
                order, pos = new_order(), 0
            idx = order[pos:pos + recipe.batch_size].tolist()
            pos += len(idx)
            batch = collate([data[i] for i in idx], pad)
            labels = batch.pop("labels", None)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=recipe.bf16):
                out = model(**batch, output_hidden_states=recipe.hidden_weight > 0)
            logits = out.logits.float()
            loss = torch.zeros(())
            if recipe.task_weight > 0 and labels is not None and bool((labels != IGNORE_LABEL).any()):
                loss = loss + recipe.task_weight * F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL)
            if teacher is not None and recipe.distills:
                if cache_teacher:
                    ix = torch.tensor(idx, dtype=torch.long)
                    need = ix[~have_logits[ix]].tolist()
                    if need:
                        sub = collate([data[i] for i in need], pad)
                        sub.pop("labels", None)
                        with torch.no_grad():
                            teacher_logits[need] = teacher(**sub).logits.float()
                        have_logits[need] = True
                    t_logits = teacher_logits[ix]
                else:
                    with torch.no_grad():
                        t_out = teacher(**batch, output_hidden_states=recipe.hidden_weight > 0)
                    t_logits = t_out.logits.float()
                if recipe.distill_weight > 0:
                    T = recipe.temperature
                    kd = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(t_logits / T, -1),
                                  reduction="batchmean") * T * T
                    loss = loss + recipe.distill_weight * kd
                if recipe.hidden_weight > 0:
                    loss = loss + recipe.hidden_weight * _hidden_mse(out.hidden_states, t_out.hidden_states,
                                                                     batch["attention_mask"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"recover: the loss is {loss.item()} at step {step} of {recipe.steps}; the "
                                         f"model keeps the weights after step {step - 1}"
                                         + (f" (checkpoint {str(ckpt)!r} holds its last save)" if ckpt else ""))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            if not torch.isfinite(norm):
                raise FloatingPointError(f"recover: the gradient norm is {norm.item()} at step {step} of "
                                         f"{recipe.steps}; the model keeps the weights after step {step - 1}")
            if recipe.method == "movement":
                for n, m in masked.items():
                    scores[n] -= (m.weight.detach() * m.weight.grad).float()
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            for m in masked.values():
                m.apply_mask_()
            if log is not None:
                log.append({"step": step, "loss": loss.item(), "sparsity": mask_sparsity,
                            "lr": lr})
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", sparsity=f"{mask_sparsity:.3f}")
            if ckpt is not None and (step % checkpoint_every == 0 or step == recipe.steps):
                _save_checkpoint(ckpt, state())
            if time_limit is not None and step < recipe.steps and time.perf_counter() - start_time >= time_limit:
                _save_checkpoint(ckpt, state())
                raise TimeLimitReached(step, recipe.steps, ckpt)
        bar.close()
    finally:
        for h in handles:
            h.remove()
        unmask_linears(model)
        model.eval()
    return model
