"""recover: the cubic schedule, pruning during training to an exact block sparsity, distillation,
repeatable runs, resuming from a checkpoint, bad input; INT8 calibration statistics; the
``sparsebert recover`` command end to end on a tiny model."""

import copy
import json
import math

import pytest
import torch

import sparsebert
from sparsebert import cli, prune
from sparsebert.recover import (GROUP_WINDOW, IGNORE_LABEL, SENSITIVITY_BATCHES, Recipe, TimeLimitReached, accuracy,
                                activation_absmax, collate, cubic_sparsity, epoch_order, mask_tokens, recover)
from model_helpers import tiny_bert

BLOCK = (16, 16)


def _data(n=24, seed=0, labels=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids = torch.randint(5, 512, (length,), generator=g)
        out.append({"input_ids": ids.tolist(), "labels": int(ids[0]) % labels})  # learnable from the first token
    return out


def _recipe(**kw):
    args = dict(sparsity=0.75, block_size=BLOCK, steps=12, batch_size=8, prune_every=2, ramp_end=0.5, lr=1e-3,
                seed=3)
    args.update(kw)
    return Recipe(**args)


def _student_teacher():
    teacher = tiny_bert("BertForSequenceClassification")
    return copy.deepcopy(teacher), teacher


def test_cubic_schedule():
    assert cubic_sparsity(0, 0.1, 0.9, 10, 20) == 0.1
    assert cubic_sparsity(10, 0.1, 0.9, 10, 20) == pytest.approx(0.1)
    assert cubic_sparsity(15, 0.1, 0.9, 10, 20) == pytest.approx(0.9 - 0.8 * 0.125)
    assert cubic_sparsity(20, 0.1, 0.9, 10, 20) == 0.9
    assert cubic_sparsity(99, 0.1, 0.9, 10, 20) == 0.9
    assert cubic_sparsity(5, 0.0, 0.8, 5, 5) == 0.8  # one-shot
    values = [cubic_sparsity(t, 0.0, 0.8, 0, 10) for t in range(11)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # monotone, fast at first
    assert values[1] - values[0] > values[9] - values[8]


def test_recipe_round_trip_and_ramp():
    r = _recipe()
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.ramp_steps() == (0, 6)
    assert Recipe(steps=10, ramp_end=1.0).ramp_steps() == (0, 9)  # training at the target happens


@pytest.mark.parametrize("field,value,match", [
    ("steps", 0, "steps must be an int in \\[1, inf\\], got 0"),
    ("sparsity", 1.0, "sparsity must be below 1"),
    ("sparsity", -0.2, "sparsity must be a number in \\[0.0, 1.0\\], got -0.2"),
    ("method", "random", "method must be one of"),
    ("scope", "row", "scope must be one of"),
    ("block_size", (3, 0), "block"),
    ("ramp_start", 0.8, "ramp_end \\(0.5\\) must not come before ramp_start \\(0.8\\)"),
    ("temperature", 0, "temperature must be a number in \\(0.0, inf\\]"),
    ("lr", float("nan"), "lr must be a number"),
    ("batch_size", 2.5, "batch_size must be an int"),
    ("group_by_length", 1, "group_by_length must be True or False, got 1"),
    ("bf16", "yes", "bf16 must be True or False, got 'yes'"),
    ("allocation", "greedy", "allocation must be one of \\('uniform', 'sensitivity'\\), got 'greedy'"),
])
def test_bad_recipe(field, value, match):
    with pytest.raises(ValueError, match=match):
        _recipe(**{field: value})
    with pytest.raises(ValueError, match="nothing to train on"):
        Recipe(task_weight=0, distill_weight=0)
    with pytest.raises(ValueError, match="needs a ramp"):
        Recipe(method="movement", ramp_end=0)
    with pytest.raises(ValueError, match="allocation='sensitivity' sets a share per layer: it needs scope='layer'"):
        Recipe(allocation="sensitivity", scope="global")


@pytest.mark.parametrize("method,scope", [("magnitude", "global"), ("magnitude", "layer"), ("movement", "global"),
                                          ("activation", "layer")])
def test_reaches_the_target_and_compresses(method, scope):
    student, teacher = _student_teacher()
    log = []
    recover(student, teacher, _data(), _recipe(method=method, scope=scope, hidden_weight=0.5), progress=False, log=log)
    linears = prune.encoder_linears(student)
    assert all(type(m) is torch.nn.Linear for m in linears.values())
    zero, total = 0, 0
    for lin in linears.values():
        n, k = lin.weight.shape
        nb = math.ceil(n / 16) * math.ceil(k / 16)
        zero += round(prune.block_sparsity(lin.weight, BLOCK) * nb)
        total += nb
        if scope == "layer":
            assert round(prune.block_sparsity(lin.weight, BLOCK) * nb) == round(0.75 * nb)
    if scope == "global":
        assert zero == round(0.75 * total)
    # the logged sparsity follows the cubic schedule: rises on the ramp, the target from step 6 on
    s = [e["sparsity"] for e in log]
    assert s[6:] == [0.75] * 6 and all(b >= a for a, b in zip(s, s[1:]))
    assert s[2] == pytest.approx(cubic_sparsity(2, 0.0, 0.75, 0, 6))
    assert log[0]["lr"] < log[1]["lr"] and log[-1]["lr"] < log[3]["lr"]  # warm-up, then decay
    assert not student.training
    cfg = sparsebert.CompressConfig(block_size=BLOCK, kernel="sparse", attention=None)
    sparsebert.compress(student, cfg, cache=False)
    rows = sparsebert.report(student)  # per layer, query, key and value too (they run as one layer)
    assert sorted(r["name"] for r in rows) == sorted(linears) and {r["format"] for r in rows} == {"sparse"}


def test_training_learns_and_distillation_pulls_to_the_teacher():
    data = _data(48)
    student, teacher = _student_teacher()
    before = accuracy(student, data)
    recover(student, None, data, _recipe(sparsity=None, steps=40, distill_weight=0, lr=2e-3), progress=False)
    assert accuracy(student, data) > before + 20
    # distillation only: the student moves towards the teacher's logits
    s2, t2 = _student_teacher()
    with torch.no_grad():
        for p in s2.classifier.parameters():
            p.add_(torch.randn_like(p))
    batch = collate(data[:16])
    batch.pop("labels")
    gap = lambda: (s2(**batch).logits - t2(**batch).logits).abs().mean().item()  # noqa: E731
    with torch.no_grad():
        g0 = gap()
    recover(s2, t2, data, _recipe(sparsity=None, task_weight=0, steps=60, lr=2e-3), progress=False)
    with torch.no_grad():
        assert gap() < 0.5 * g0


def test_epoch_order_groups_by_length():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (GROUP_WINDOW * 8 * 2 + 5,), generator=g).tolist()  # two windows + 5
    plain = epoch_order(lengths, 8, torch.Generator().manual_seed(1), group_by_length=False)
    grouped = epoch_order(lengths, 8, torch.Generator().manual_seed(1))
    again = epoch_order(lengths, 8, torch.Generator().manual_seed(1))
    assert torch.equal(grouped, again)  # seeded
    assert sorted(grouped.tolist()) == list(range(len(lengths)))  # every example once

    def padded(order):  # tokens of the batches padded to their longest example
        return sum(8 * max(lengths[i] for i in order[b:b + 8].tolist()) for b in range(0, len(order) - 5, 8))
    assert padded(grouped) < 0.7 * padded(plain)
    # inside a batch the lengths come from one window's sorted run: no batch spans a wide range
    spans = [max(lengths[i] for i in grouped[b:b + 8].tolist()) - min(lengths[i] for i in grouped[b:b + 8].tolist())
             for b in range(0, len(grouped) - 5, 8)]
    assert max(spans) <= 8
    # the 5 left over (no full batch) come last; the full batches are shuffled, not longest first
    firsts = [max(lengths[i] for i in grouped[b:b + 8].tolist()) for b in range(0, len(grouped) - 5, 8)]
    assert firsts != sorted(firsts, reverse=True)


def test_teacher_runs_once_per_example():
    # distill_weight only: the teacher's logits are cached, so three epochs run it on each
    # example once; with hidden_weight the teacher runs every step.
    data = _data(16)
    for hidden, epochs_of_teacher in ((0.0, 1), (0.5, 3)):
        student, teacher = _student_teacher()
        seen = []
        teacher.register_forward_hook(lambda m, a, kw, out: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
        recover(student, teacher, data, _recipe(steps=6, batch_size=8, hidden_weight=hidden), progress=False)
        assert sum(seen) == epochs_of_teacher * len(data)


def test_bf16_autocast_trains_fp32_weights():
    data = _data(48)
    student, _ = _student_teacher()
    before = accuracy(student, data)
    recover(student, None, data, _recipe(sparsity=None, steps=40, distill_weight=0, lr=2e-3, bf16=True),
            progress=False)
    assert accuracy(student, data) > before + 20
    assert {p.dtype for p in student.parameters()} == {torch.float32}


def test_mask_tokens():
    data = _data(6)
    same = mask_tokens(data, mask_id=3, share=0.0)
    assert [e["input_ids"] for e in same] == [list(e["input_ids"]) for e in data]
    assert all("labels" not in e for e in same)
    full = mask_tokens(data, mask_id=3, share=1.0, copies=2)
    assert len(full) == 12
    for e, src in zip(full, data + data):
        ids = src["input_ids"]
        assert e["input_ids"] == [ids[0]] + [3] * (len(ids) - 2) + [ids[-1]]  # [CLS] and [SEP] stay
    a, b = mask_tokens(data, 3, 0.5, seed=1), mask_tokens(data, 3, 0.5, seed=1)
    assert a == b and a != mask_tokens(data, 3, 0.5, seed=2)
    masked = sum(t == 3 for e in a for t in e["input_ids"])
    inner = sum(len(e["input_ids"]) - 2 for e in data)
    assert 0.25 * inner < masked < 0.75 * inner
    for kw, match in ((dict(share=1.5), "share"), (dict(copies=0), "copies"), (dict(mask_id=-1), "mask_id"),
                      (dict(mask_id=True), "mask_id")):
        with pytest.raises(ValueError, match=match):
            mask_tokens(data, **{"mask_id": 3, **kw})


def test_transfer_examples_train_on_the_teacher_only():
    # The loss of a batch of labelled and unlabelled examples is the cross-entropy over the
    # labelled ones plus the distillation over all of them (no dropout: the loss is exact).
    teacher = tiny_bert("BertForSequenceClassification", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.classifier.parameters():
            p.add_(torch.randn_like(p))
    labelled, transfer = _data(8), mask_tokens(_data(8, seed=1), mask_id=4, share=0.3)
    data = labelled + transfer
    batch = collate(data)
    assert batch["labels"][:8].tolist() == [e["labels"] for e in labelled]
    assert batch["labels"][8:].eq(IGNORE_LABEL).all()
    labels = batch.pop("labels")
    with torch.no_grad():
        s, t = student(**batch).logits, teacher(**batch).logits
    T = 2.0
    kd = torch.nn.functional.kl_div(torch.log_softmax(s / T, -1), torch.softmax(t / T, -1), reduction="batchmean")
    want = torch.nn.functional.cross_entropy(s[:8], labels[:8]) + kd * T * T
    log = []
    recover(student, teacher, data, _recipe(sparsity=None, steps=1, batch_size=16, temperature=T), progress=False,
            log=log)
    assert log[0]["loss"] == pytest.approx(want.item(), rel=1e-5)
    # transfer data alone, distillation only
    recover(copy.deepcopy(teacher), teacher, transfer, _recipe(sparsity=None, steps=2, task_weight=0), progress=False)


def test_transfer_examples_need_a_teacher():
    student, teacher = _student_teacher()
    data = _data(8) + mask_tokens(_data(2), mask_id=4)
    with pytest.raises(ValueError, match="example 8 has no 'labels': examples without labels are transfer data"):
        recover(student, None, data, _recipe(sparsity=None, distill_weight=0), progress=False)
    with pytest.raises(ValueError, match="no example has labels, but task_weight > 0"):
        recover(student, teacher, mask_tokens(_data(4), mask_id=4), _recipe(sparsity=None), progress=False)
    with pytest.raises(ValueError, match="example 0 has no 'labels'$"):
        accuracy(student, mask_tokens(_data(4), mask_id=4))


def test_same_seed_same_weights_and_resume(tmp_path):
    runs = []
    for _ in range(2):
        student, teacher = _student_teacher()
        recover(student, teacher, _data(), _recipe(), progress=False)
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    student, teacher = _student_teacher()
    recover(student, teacher, _data(), _recipe(seed=4), progress=False)
    assert not all(torch.equal(runs[0][k], v) for k, v in student.state_dict().items())
    # stopped after every step and resumed from the checkpoint: the same weights as one run
    ckpt = tmp_path / "recover.pt"
    student, teacher = _student_teacher()
    stops = 0
    while True:
        try:
            recover(student, teacher, _data(), _recipe(), checkpoint=ckpt, time_limit=0, progress=False)
            break
        except TimeLimitReached as e:
            stops += 1
            assert e.step == stops
            student, _ = _student_teacher()  # a fresh process would start from the original model
    assert stops == 11
    assert all(torch.equal(runs[0][k], v) for k, v in student.state_dict().items())
    with pytest.raises(ValueError, match="written by another recipe"):
        recover(_student_teacher()[0], teacher, _data(), _recipe(steps=13), checkpoint=ckpt, progress=False)


def test_activation_method_resumes_with_its_statistics(tmp_path):
    # The input statistics travel in the checkpoint: stopping after every step and resuming gives
    # the weights (and masks) of one uninterrupted run.
    student, teacher = _student_teacher()
    recover(student, teacher, _data(), _recipe(method="activation"), progress=False)
    ref = student.state_dict()
    ckpt = tmp_path / "recover.pt"
    student, teacher = _student_teacher()
    while True:
        try:
            recover(student, teacher, _data(), _recipe(method="activation"), checkpoint=ckpt, time_limit=0,
                    progress=False)
            break
        except TimeLimitReached:
            student, _ = _student_teacher()
    assert all(torch.equal(ref[k], v) for k, v in student.state_dict().items())
    magnitude, _ = _student_teacher()
    recover(magnitude, teacher, _data(), _recipe(), progress=False)
    zeros = lambda m: [lin.weight.eq(0) for lin in prune.encoder_linears(m).values()]  # noqa: E731
    assert any(not torch.equal(a, b) for a, b in zip(zeros(student), zeros(magnitude)))  # another score, other masks


def test_sensitivity_allocation_gives_each_layer_its_share(tmp_path):
    # Each layer ends at the share allocate_sparsity gives it from the sensitivity over the first
    # batches (computed here by hand on a copy), the model at the target; resuming after every step
    # gives the same weights.
    data = _data(32)
    student, teacher = _student_teacher()
    with torch.no_grad():
        for m in (student, teacher):
            m.classifier.weight.mul_(300)  # classes that differ, for the output gap to measure
    probe = [collate(data[i:i + 8]) for i in range(0, 8 * SENSITIVITY_BATCHES, 8)]
    shares = prune.allocate_sparsity(student, prune.layer_sensitivity(student, probe, block_size=BLOCK), 0.75, BLOCK)
    assert len({round(v, 3) for v in shares.values()}) > 1  # not uniform
    fresh = copy.deepcopy(student)
    recipe = _recipe(allocation="sensitivity")
    recover(student, teacher, data, recipe, progress=False)
    for n, lin in prune.encoder_linears(student).items():
        nb = (lin.out_features // 16) * (lin.in_features // 16)
        assert round(prune.block_sparsity(lin.weight, BLOCK) * nb) == round(shares[n] * nb), n
    assert prune.model_block_sparsity(student, BLOCK) == pytest.approx(0.75, abs=prune.rounding_slack(student, BLOCK))
    ckpt = tmp_path / "recover.pt"
    resumed = copy.deepcopy(fresh)
    while True:
        try:
            recover(resumed, teacher, data, recipe, checkpoint=ckpt, time_limit=0, progress=False)
            break
        except TimeLimitReached:
            resumed = copy.deepcopy(fresh)
    ref = student.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in resumed.state_dict().items())


def test_one_shot_keeps_the_mask():
    student, _ = _student_teacher()
    recover(student, None, _data(), _recipe(ramp_end=0, distill_weight=0), progress=False)
    assert prune.model_block_sparsity(student, BLOCK) == pytest.approx(0.75, abs=0.01)
    # pruned per layer first: each layer rounds its block count, the whole lands above the target
    student, _ = _student_teacher()
    prune.prune_model(student, 0.55, BLOCK, scope="layer")
    zeros = {n: lin.weight.eq(0) for n, lin in prune.encoder_linears(student).items()}
    assert prune.model_block_sparsity(student, BLOCK) == 144 / 256
    recover(student, None, _data(), _recipe(sparsity=0.55, ramp_end=0, distill_weight=0), progress=False)
    assert all(torch.equal(lin.weight.eq(0) & zeros[n], zeros[n]) for n, lin in prune.encoder_linears(student).items())


def test_bad_input():
    student, teacher = _student_teacher()
    r = _recipe()
    with pytest.raises(ValueError, match="data is empty"):
        recover(student, teacher, [], r, progress=False)
    bad = _data()
    bad[5]["labels"] = 3
    with pytest.raises(ValueError, match="example 5: label 3 is not one of the head's 3 classes"):
        recover(student, teacher, bad, r, progress=False)
    other = tiny_bert("BertForSequenceClassification", hidden_size=32, num_attention_heads=2)
    with pytest.raises(ValueError, match="teacher hidden_size 32 differs from the student's 64"):
        recover(student, other, _data(), r, progress=False)
    other = tiny_bert("BertForSequenceClassification", vocab_size=600)
    with pytest.raises(ValueError, match="teacher vocab_size 600 differs"):
        recover(student, other, _data(), r, progress=False)
    with pytest.raises(ValueError, match="no teacher was given"):
        recover(student, None, _data(), r, progress=False)
    with pytest.raises(TypeError, match="sequence classification model"):
        recover(tiny_bert("BertModel"), teacher, _data(), r, progress=False)
    with pytest.raises(TypeError, match="schedule must be a Recipe"):
        recover(student, teacher, _data(), {"sparsity": 0.5}, progress=False)
    with pytest.raises(ValueError, match="time_limit needs a checkpoint"):
        recover(student, teacher, _data(), r, time_limit=5, progress=False)
    prune.prune_model(student, 0.8, BLOCK)
    with pytest.raises(ValueError, match="target density 0.2500 \\(sparsity 0.75\\) is above the model's current"):
        recover(student, teacher, _data(), r, progress=False)


def test_nan_loss_stops_with_the_step(tmp_path):
    student, teacher = _student_teacher()
    ckpt = tmp_path / "c.pt"
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th forward of the classifier: step 4
            return output * float("nan")
    student.classifier.register_forward_hook(poison)
    good = {}

    def remember(module, args, output):
        if calls["n"] == 5:  # the poisoned forward (hooks run in order): the weights after step 3
            good.update({k: v.clone() for k, v in student.state_dict().items()})
    student.classifier.register_forward_hook(remember)
    with pytest.raises(FloatingPointError, match="the loss is nan at step 4 of 12; the model keeps the weights "
                                                 "after step 3"):
        recover(student, teacher, _data(), _recipe(), checkpoint=ckpt, checkpoint_every=2, progress=False)
    assert all(type(m) is torch.nn.Linear for m in prune.encoder_linears(student).values())
    state = student.state_dict()
    # masked weights come back as plain weights with zeros: compare the trained parameters
    assert all(torch.equal(state[k], (good[k] * good[k[:-len("weight")] + "mask"]) if k[:-len("weight")] + "mask"
                           in good else good[k]) for k in state)
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_activation_absmax_feeds_smoothquant():
    model = tiny_bert("BertForSequenceClassification")
    data = _data(16)
    batches = [collate(data[i:i + 8]) for i in (0, 8)]
    absmax = activation_absmax(model, batches)
    lin = model.bert.encoder.layer[0].intermediate.dense
    name = "bert.encoder.layer.0.intermediate.dense"
    assert absmax[name].shape == (lin.in_features,)
    seen = []
    h = lin.register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(-1, a[0].shape[-1]).abs().amax(0)))
    with torch.no_grad():
        for b in batches:
            model(**{k: v for k, v in b.items() if k != "labels"})
    h.remove()
    assert torch.equal(absmax[name], torch.maximum(seen[0], seen[1]))
    q = sparsebert.Int8Linear.from_dense(lin, act_absmax=absmax[name], act_quant="per_token_asym")
    x = torch.randn(7, lin.in_features)
    ref = lin(x)
    assert ((q(x) - ref).norm() / ref.norm()).item() < 0.05
    with pytest.raises(ValueError, match="at least one batch"):
        activation_absmax(model, [])


# --- the command line -----------------------------------------------------------------------------


def _tiny_dir(tmp_path, head=True):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(507)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    model = tiny_bert("BertForSequenceClassification" if head else "BertModel", num_labels=2)
    d = tmp_path / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _tsv(path, n, seed):
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        words = torch.randint(0, 500, (6,), generator=g).tolist()
        label = "pos" if words[0] % 2 else "neg"
        lines.append(" ".join(f"w{w}" for w in words) + "\t" + label)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("head", [True, False])
def test_cli_recover_end_to_end(tmp_path, head, capsys):
    d = _tiny_dir(tmp_path, head)
    train, ev = _tsv(tmp_path / "train.tsv", 64, 0), _tsv(tmp_path / "eval.tsv", 32, 1)
    out = tmp_path / "out"
    args = ["recover", str(d), "--train", str(train), "--eval", str(ev), "--sparsity", "0.5", "--block", "16x16",
            "--epochs", "2", "--batch-size", "16", "--seed", "1", "--out", str(out), "--lr", "1e-3",
            "--teacher-lr", "1e-3"]
    assert cli.main(args + (["--int8", "dynamic"] if head else ["--bf16"])) == 0
    res = json.loads((out / "results.json").read_text())
    assert {"dense_accuracy", "accuracy", "sparsity", "recipe", "labels"} <= set(res)
    assert res["recipe"]["bf16"] is (not head) and res["recipe"]["group_by_length"] is True
    assert res["sparsity"] == pytest.approx(0.5, abs=0.02) and res["recipe"]["sparsity"] == 0.5
    assert (out / "teacher").is_dir() != head  # a head-less model gets a fine-tuned teacher first
    model = sparsebert.load(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["w1 w2 w3"], return_tensors="pt")
    with torch.inference_mode():
        assert model(**enc).logits.shape == (1, 2)
    assert "accuracy" in capsys.readouterr().out


def test_cli_recover_errors(tmp_path, capsys):
    d = _tiny_dir(tmp_path)
    train = _tsv(tmp_path / "train.tsv", 16, 0)
    bad = tmp_path / "bad.tsv"
    bad.write_text("w1 w2\tpos\nno label here\n")
    base = ["recover", str(d), "--eval", str(train), "--sparsity", "0.5", "--out", str(tmp_path / "o")]
    assert cli.main(base + ["--train", str(bad)]) == 1
    assert "bad.tsv:2: expected 'text<TAB>label'" in capsys.readouterr().err
    three = _tsv(tmp_path / "three.tsv", 8, 2)
    three.write_text(three.read_text() + "w1 w5\tneutral\n")
    assert cli.main(base + ["--train", str(three)]) == 1
    assert "3 labels" in capsys.readouterr().err
    ev = tmp_path / "ev.tsv"
    ev.write_text("w1 w2\tpos\n\nw3\tmaybe\n")
    assert cli.main(["recover", str(d), "--train", str(train), "--eval", str(ev), "--sparsity", "0.5", "--out",
                     str(tmp_path / "o")]) == 1
    assert f"{ev}:3: label 'maybe' is not one of ['neg', 'pos']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["recover", str(d), "--train", str(train), "--eval", str(train), "--out", "x", "--sparsity", "2"])
    assert e.value.code == 2
    for flag, value in (("--lr", "0"), ("--teacher-lr", "nan"), ("--lr", "fast")):
        with pytest.raises(SystemExit) as e:
            cli.main(base + ["--train", str(train), flag, value])
        assert e.value.code == 2 and f"expected a positive number, got '{value}'" in capsys.readouterr().err


# --- quantization-aware training ------------------------------------------------------------------


def test_fake_quant_matches_the_int8_kernel():
    from sparsebert.nn.masked_linear import MaskedLinear, fake_quantize_rows

    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    x = torch.randn(7, 96)
    m = MaskedLinear.from_linear(lin)
    m.fake_quant = True
    int8 = sparsebert.Int8Linear.from_dense(lin, act_quant="per_token")(x)
    quant_error = (int8 - lin(x)).abs().max().item()
    # the fake-quantized forward is the kernel's integer math in float: far below the quantization error
    assert (m(x) - int8).abs().max().item() <= 1e-3 * quant_error
    xg = x.clone().requires_grad_()
    fake_quantize_rows(xg).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))  # straight through


def test_qat_recipe_trains():
    student, teacher = _student_teacher()
    log = []
    recover(student, teacher, _data(), _recipe(qat=True), progress=False, log=log)
    assert all(math.isfinite(e["loss"]) for e in log)
    assert prune.model_block_sparsity(student, BLOCK) == pytest.approx(0.75, abs=0.01)
    with pytest.raises(ValueError, match="qat must be True or False"):
        _recipe(qat="yes")
