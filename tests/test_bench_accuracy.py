"""bench_accuracy's quick profile: every stage of the accuracy benchmark on the real MiniLM-L6 and
real sentences, a few steps each, then a rerun from the cache and the demo's pick from it."""

import pytest

from conftest import import_benchmark


@pytest.fixture(scope="module")
def bench_accuracy():
    return import_benchmark("bench_accuracy")


ARGS = ["--steps", "3", "--test-limit", "48", "--sparsities", "0.5", "--oneshot", "0.5", "--blocks", "32x32",
        "--no-structured", "--rounds", "1"]


def test_quick_profile_trains_caches_and_reruns(bench_accuracy, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ARGS + ["--cache-dir", str(cache), "--json", str(tmp_path / "rows.json"),
                   "--plot", str(tmp_path / "plot.png")]
    assert bench_accuracy.main(argv) == 0
    out, err = capsys.readouterr()
    names = ["dense fp32", "dense fp32, unpadded encoder", "dense + INT8", "50% 32x32 recovered",
             "50% 32x32 recovered + INT8", "50% 32x32 one-shot, no fine-tuning", "50% 32x32 one-shot + fine-tuning"]
    for name in names:
        assert f"| {name} |" in out, name
    assert err.count("training ") == 3  # dense, recovered, one-shot + fine-tuning
    assert (tmp_path / "plot.png").stat().st_size > 0

    import json

    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    by = {r["name"] + (" + INT8" if r["int8"] else ""): r for r in rows}
    assert set(by) == set(names)
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 100.0 and r["speedup"] > 0
    assert by["dense fp32"]["speedup"] == 1.0 and by["dense fp32"]["block_sparsity"] == 0.0
    # the minutes each trained model took, in its rows and the table's last column
    assert by["dense fp32"]["train_minutes"] > 0 and by["50% 32x32 recovered + INT8"]["train_minutes"] > 0
    assert by["50% 32x32 one-shot, no fine-tuning"]["train_minutes"] is None
    assert "| training minutes |" in out
    # Recovery reached the target on the 32x32 grid of the encoder's linears; INT8 shrinks the weights.
    assert by["50% 32x32 recovered"]["block_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert by["50% 32x32 recovered + INT8"]["bytes"] < by["50% 32x32 recovered"]["bytes"] < by["dense fp32"]["bytes"]

    # The rerun trains nothing and measures nothing: the table comes from the cache, the same.
    assert bench_accuracy.main(argv) == 0
    out2, err2 = capsys.readouterr()
    assert "training " not in err2
    table = [line for line in out.splitlines() if line.startswith("|")]  # not the header: it samples the machine
    assert len(table) == 2 + len(names) and [line for line in out2.splitlines() if line.startswith("|")] == table

    # --remeasure: the same models from the cache, every row evaluated and timed again and stored.
    results = bench_accuracy.results_path(bench_accuracy.parser().parse_args(argv))
    before = json.loads(results.read_text())
    for row in before.values():
        row["speedup"] = -1.0  # a figure no measurement gives
    results.write_text(json.dumps(before))
    assert bench_accuracy.main(argv + ["--remeasure"]) == 0
    out3, err3 = capsys.readouterr()
    assert "training " not in err3 and err3.count("%") >= len(names) - 1  # one line per evaluated row
    after = json.loads(results.read_text())
    assert set(after) == set(before) and all(r["speedup"] > 0 for r in after.values())
    assert all(after[k]["accuracy"] == before[k]["accuracy"] for k in after)  # same models, same test set
    rows = list(after.values())  # the figures the pick below reads

    # The demo's pick: the fastest recovered row within 2 points, or the most accurate one.
    args = bench_accuracy.parser().parse_args(argv)
    dense_row, pick = bench_accuracy.cached_pick(args)
    assert dense_row["name"] == "dense fp32" and pick["key"].startswith("recover-")
    ours = [r for r in rows if r["key"].startswith("recover-")]  # one step count here: all pair with dense
    close = [r for r in ours if r["accuracy"] >= dense_row["accuracy"] - 2.0]
    if close:
        assert pick["speedup"] == max(r["speedup"] for r in close)
    else:
        assert pick["accuracy"] == max(r["accuracy"] for r in ours)


def test_nothing_cached_means_no_pick(bench_accuracy, tmp_path):
    args = bench_accuracy.parser().parse_args(["--cache-dir", str(tmp_path)])
    assert bench_accuracy.cached_pick(args) is None
    assert bench_accuracy.demo(cache_dir=tmp_path) is None


def test_augment_and_activation_scores(bench_accuracy, tmp_path, capsys, monkeypatch):
    seen = []
    real = bench_accuracy.recover
    monkeypatch.setattr(bench_accuracy, "recover", lambda m, t, data, r, **k: seen.append((t, data)) or real(m, t, data, r, **k))
    argv = ["--steps", "2", "--test-limit", "32", "--sparsities", "0.5", "--oneshot", "0.5", "--no-structured",
            "--rounds", "1", "--augment", "2", "--method", "activation", "--cache-dir", str(tmp_path), "--json", str(tmp_path / "rows.json"),
            "--plot", str(tmp_path / "p.png")]
    assert bench_accuracy.main(argv) == 0
    out = capsys.readouterr().out
    assert "| 50% 32x32 recovered, activation scores, 2 masked copies per sentence + INT8 |" in out
    assert "| 50% 32x32 one-shot, activation scores, no fine-tuning |" in out
    assert "transfer set: 2 masked copies per sentence" in out and "activation scores" in out
    (dense_teacher, dense_data), (teacher, data), (no_teacher, oneshot_data) = seen
    assert no_teacher is None and oneshot_data == dense_data  # plain fine-tuning: no transfer set
    assert dense_teacher is None and teacher is not None
    labelled = [e for e in data if "labels" in e]
    assert labelled == dense_data and len(data) == 3 * len(labelled)  # the sentences, then two masked copies
    import json
    keys = [r["key"] for r in json.loads((tmp_path / "rows.json").read_text())["rows"]]
    assert any(k.startswith("recover-") and "-activation-" in k and k.endswith("-aug2") for k in keys)
    assert any(k.startswith("oneshot0-") and k.endswith("-activation") for k in keys)


def test_epochs_and_bf16_set_the_recipe(bench_accuracy, monkeypatch):
    import math

    class Stop(Exception):
        pass

    seen = {}

    def fake_run(args):
        seen["args"] = args
        raise Stop

    monkeypatch.setattr(bench_accuracy, "run", fake_run)
    with pytest.raises(Stop):
        bench_accuracy.main(["--epochs", "2.5", "--bf16", "--dataset", "amazon"])
    args = seen["args"]
    epoch = math.ceil(round(0.8 * len(bench_accuracy.DATASETS["amazon"]())) / 32)
    assert args.steps == round(2.5 * epoch)
    recipe = bench_accuracy.recipe_for(args, sparsity=0.5)
    assert recipe.bf16 and recipe.group_by_length and recipe.steps == args.steps
    for bad, match in ((["--epochs", "0"], "--epochs must be a positive number, got 0.0"),
                       (["--epochs", "nan"], "--epochs must be a positive number, got nan"),
                       (["--steps", "3", "--epochs", "1"], "give --steps or --epochs, not both")):
        with pytest.raises(SystemExit, match=match):
            bench_accuracy.main(bad)


def test_training_minutes_add_up_over_budget_slices(bench_accuracy, tmp_path, monkeypatch):
    # A training stopped by the budget and resumed by the next run is logged with the minutes of
    # both slices (make bench-accuracy runs in slices), and its rows carry them.
    from model_helpers import tiny_bert

    from sparsebert.recover import TimeLimitReached

    clock = iter(range(0, 10_000, 60))  # every reading of the clock is a minute later
    monkeypatch.setattr(bench_accuracy.time, "perf_counter", lambda: float(next(clock)))
    calls = []

    def fake_recover(model, teacher, data, recipe, checkpoint, **kw):
        calls.append(checkpoint)
        if len(calls) == 1:
            checkpoint.write_bytes(b"state")
            raise TimeLimitReached(5, recipe.steps, checkpoint)
        return model

    monkeypatch.setattr(bench_accuracy, "recover", fake_recover)
    args = bench_accuracy.parser().parse_args(["--cache-dir", str(tmp_path), "--test-limit", "8"])
    recipe = bench_accuracy.recipe_for(args.__class__(**{**vars(args), "steps": 10, "bf16": False}))
    build = lambda: tiny_bert("BertForSequenceClassification")  # noqa: E731
    with pytest.raises(bench_accuracy.OutOfBudget):
        bench_accuracy.make_runner(args).trained("k", build, None, recipe)
    runner = bench_accuracy.make_runner(args)
    runner.trained("k", build, None, recipe)
    assert len(calls) == 2 and runner.minutes("k") == 2.0  # one minute in each slice
    assert not list(tmp_path.glob("*.minutes")) and runner.minutes("other") is None


def test_sensitivity_allocation_rows(bench_accuracy, tmp_path, capsys, monkeypatch):
    # --allocation sensitivity: the recovered and the one-shot models get the per-layer shares of
    # allocate_sparsity (the probe is replaced by fixed figures here: the FFN layers cheap).
    import sys

    from sparsebert import prune

    def is_ffn(name):
        return "intermediate" in name or (name.endswith("output.dense") and ".attention." not in name)

    def fake_sensitivity(model, batches, levels=prune.SENSITIVITY_LEVELS, block_size=(32, 32), filter_fn=None):
        return {n: {lv: (0.01 if is_ffn(n) else 1.0) * lv for lv in levels}
                for n in prune.encoder_linears(model, filter_fn)}

    monkeypatch.setattr(prune, "layer_sensitivity", fake_sensitivity)
    monkeypatch.setattr(sys.modules["sparsebert.recover"], "layer_sensitivity", fake_sensitivity)
    argv = ["--steps", "2", "--test-limit", "16", "--sparsities", "0.5", "--oneshot", "0.5", "--no-structured",
            "--rounds", "1", "--allocation", "sensitivity", "--cache-dir", str(tmp_path), "--json",
            str(tmp_path / "rows.json"), "--plot", str(tmp_path / "p.png")]
    assert bench_accuracy.main(argv) == 0
    out = capsys.readouterr().out
    assert "| 50% 32x32 recovered, per-layer shares by sensitivity + INT8 |" in out
    assert "sensitivity allocation" in out
    args = bench_accuracy.parser().parse_args(argv)
    for key in ("recover-32x32-0.5-2-layer-lr0.0001-sens-bylen-kd1.0-h0.0",
                "oneshot-ft-32x32-0.5-2-layer-lr0.0001-sens-bylen"):
        model = prune.from_pretrained(bench_accuracy.model_dir(args, key))
        share = {n: prune.block_sparsity(lin.weight, (32, 32)) for n, lin in prune.encoder_linears(model).items()}
        assert max(v for n, v in share.items() if not is_ffn(n)) == 0.0  # the dear layers kept whole
        ffn = [v for n, v in share.items() if is_ffn(n)]
        assert sum(ffn) / len(ffn) == pytest.approx(0.75, abs=0.01)  # the FFN (2/3 of the blocks) took it all
        assert prune.model_block_sparsity(model, (32, 32)) == pytest.approx(0.5, abs=0.01)
