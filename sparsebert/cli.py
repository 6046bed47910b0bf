"""Command line: ``sparsebert info | compress | bench | eval | report | recover``.

A thin layer: parse, call the library, print. Exit codes: 0 done, 1 failed (one line on
stderr), 2 usage. Tables on stdout, progress bars on stderr, ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys

import torch

import sparsebert
from sparsebert import _extension
from sparsebert.recover import RECOVER_METHODS

# Ops in the ``sparsebert`` namespace, and the dispatch keys an implementation is looked up for.
_DISPATCH_KEYS = ("CPU", "CUDA")


class CliError(Exception):
    """A failure reported as one line on stderr with exit code 1."""


def _kernels() -> list[tuple[str, list[str]]]:
    rows = []
    for name in torch.ops.sparsebert:
        packet = getattr(torch.ops.sparsebert, name)
        keys = [k for k in _DISPATCH_KEYS if torch._C._dispatch_has_kernel_for_dispatch_key(packet.default.name(), k)]
        rows.append((name, keys))
    return sorted(rows)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# What each INT8 dot product of `sparsebert.int8_dot()` is, for `sparsebert info`.
_INT8_DOT_TEXT = {
    "avx512-vnni": "vpdpbusd on 512-bit vectors",
    "avx-vnni": "vpdpbusd on 256-bit vectors, AVX-VNNI",
    "avx512-vnni-256": "vpdpbusd on 256-bit vectors, EVEX encoding",
    "none": "no VNNI: vpmaddwd, or plain C++ at the scalar level",
}


def info(_args) -> int:
    try:
        active = _extension.active_isa()
        dot = _extension.int8_dot()
    except ValueError as e:  # a bad SPARSEBERT_ISA or SPARSEBERT_VNNI: the kernels would refuse to run
        raise CliError(_first_line(e)) from None
    triton = importlib.util.find_spec("triton") is not None
    print(f"sparsebert   {sparsebert.__version__}")
    print(f"torch        {torch.__version__}")
    print(f"cpu isa      detected={_extension.detected_isa()} active={active}")
    notes = [_INT8_DOT_TEXT.get(dot, "the INT8 kernels' dot product")]
    if dot != "none" and active not in ("avx512bf16", "amx"):
        notes.append("SPARSEBERT_VNNI=0 turns it off")
    if active == "amx":
        notes.append("AMX tiles (TDPBUSD) take 16 rows and more of layers whose block rows are multiples of 16")
    print(f"int8 dot     {dot} ({'; '.join(notes)})")
    print(f"threads      {torch.get_num_threads()} (torch.get_num_threads)")
    print("backends     cpu: C++ extension loaded; reference: pure torch; "
          f"cuda: {'available' if torch.cuda.is_available() else 'no CUDA device'}, "
          f"triton {'installed' if triton else 'not installed'}")
    print("kernels")
    for name, keys in _kernels():
        print(f"  sparsebert::{name:<24} {', '.join(keys) if keys else '(no device implementation)'}")
    return 0


# --- argument types ------------------------------------------------------------------------------


def _block(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"block must be ROWSxCOLS, e.g. 32x32, got {text!r}") from None
    if r < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"block sizes must be positive, got {text!r}")
    return r, c


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _none_or(text: str) -> str | None:
    return None if text.lower() == "none" else text


# --- subcommands ---------------------------------------------------------------------------------


def _load_hf(model_dir: str):
    """(model, tokenizer or None) of a Hugging Face model directory, of the class its config names."""
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if not os.path.isdir(model_dir):
        raise CliError(f"{model_dir!r} is not a directory")
    config = AutoConfig.from_pretrained(model_dir)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    model = (cls or AutoModel).from_pretrained(model_dir).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def _calibration_inputs(tokenizer, n: int, path: str | None):
    from sparsebert.data import split_sentences

    if tokenizer is None:
        raise CliError("calibration needs the model's tokenizer files in MODEL_DIR (or --calibrate 0)")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                sentences = [line.strip() for line in f if line.strip()][:n]
        except OSError as e:
            raise CliError(f"cannot read --calib-file {path!r}: {e}") from None
        if not sentences:
            raise CliError(f"--calib-file {path!r} holds no sentences")
    else:
        sentences, _ = split_sentences(n, 0)
    return tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")


def compress_cmd(args) -> int:
    from sparsebert.report import format_report

    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise CliError(f"--out {args.out!r} exists and is not empty (pass --overwrite)")
    model, tokenizer = _load_hf(args.model_dir)
    config = sparsebert.CompressConfig(
        sparsity=args.sparsity, block_size=args.block, int8=args.int8, act_quant=args.act_quant, dtype=args.dtype,
        attention=args.attention, attention_precision=args.attention_precision, kernel=args.kernel, min_cosine=args.min_cosine, tokens=args.tokens,
        compile=args.compile, fuse=not args.no_fuse, **({"skip": tuple(args.skip)} if args.skip else {}))
    example = None
    if args.int8 == "dynamic" and args.calibrate > 0:
        example = _calibration_inputs(tokenizer, args.calibrate, args.calib_file)
    sparsebert.compress(model, config, example_inputs=example, progress=True)
    sparsebert.save(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite)
    rep = sparsebert.report(model)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1))
    else:
        print(format_report(rep))
        print(f"\nsaved to {args.out}")
    return 0


def bench_cmd(args) -> int:
    from sparsebert.bench import bench, format_table, plot

    model = sparsebert.load(args.dir)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.dir)
        from sparsebert.data import movie_review_sentences

        sentences = movie_review_sentences()
    except (OSError, ValueError, FileNotFoundError):
        tokenizer, sentences = None, None
    shapes = [(b, s) for b in args.batch for s in args.seq]
    baselines = [b for b in args.baselines.split(",") if b]
    rows = bench(model, shapes, baselines, tokenizer, sentences, threads=args.threads, mixed=args.mixed,
                 min_rounds=args.rounds, progress=True)
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "isa": sparsebert.active_isa(), "rows": rows}, indent=1))
    else:
        print(f"threads {torch.get_num_threads()}, ISA {sparsebert.active_isa()}, "
              f"{'real sentences' if tokenizer else 'random token ids'}{', mixed lengths' if args.mixed else ''}")
        print(format_table(rows))
    if args.plot:
        plot(rows, args.plot, title=f"sparsebert bench: {os.path.basename(os.path.abspath(args.dir))}")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _label_ids(model, labels: list[str]) -> torch.Tensor:
    label2id = {str(k): int(v) for k, v in (getattr(model.config, "label2id", None) or {}).items()}
    n = model.config.num_labels
    out = []
    for i, lab in enumerate(labels):
        if lab in label2id:
            out.append(label2id[lab])
        elif lab.lstrip("-").isdigit() and 0 <= int(lab) < n:
            out.append(int(lab))
        else:
            raise CliError(f"label {lab!r} (example {i + 1}) is not one of the head's {n} classes "
                           f"{sorted(label2id) or list(range(n))}")
    return torch.tensor(out)


def eval_cmd(args) -> int:
    from sparsebert.compress import embedding_cosines
    from sparsebert.data import split_sentences
    from sparsebert.serialize import read_manifest

    model = sparsebert.load(args.dir)
    if args.data:  # checked before the slow part
        from sparsebert.data import read_tsv

        if not type(model).__name__.endswith("ForSequenceClassification"):
            raise CliError(f"--data needs a sequence classification head (one label per text); "
                           f"{type(model).__name__} has none")
        texts, labels = read_tsv(args.data)
        y = _label_ids(model, labels)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.dir)
    except (OSError, ValueError) as e:
        raise CliError(f"{args.dir!r} has no tokenizer files (save with sparsebert.save(..., tokenizer=...)): "
                       f"{_first_line(e)}") from None
    original_dir = args.original or read_manifest(args.dir).get("source")
    result = {}
    if original_dir and os.path.isdir(original_dir):
        original, _ = _load_hf(original_dir)
        _, sentences = split_sentences(0, args.sentences, seed=args.seed)
        c = embedding_cosines(model, original, tokenizer, sentences)
        result["cosine"] = {"sentences": len(sentences), "min": c.min().item(), "mean": c.mean().item(),
                            "original": original_dir}
    elif not args.data:
        raise CliError("no original model to compare with: pass --original MODEL_DIR (the manifest's source "
                       f"{original_dir!r} is not a directory here) or --data TSV")
    if args.data:
        correct = 0
        for i in range(0, len(texts), 32):
            enc = tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.inference_mode():
                correct += int((model(**enc).logits.argmax(-1) == y[i:i + 32]).sum())
        result["accuracy"] = {"examples": len(texts), "accuracy": 100.0 * correct / len(texts)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        if "cosine" in result:
            r = result["cosine"]
            print(f"embedding cosine vs {r['original']} on {r['sentences']} real sentences: "
                  f"min {r['min']:.5f}, mean {r['mean']:.5f}")
        if "accuracy" in result:
            r = result["accuracy"]
            print(f"accuracy on {r['examples']} labelled examples: {r['accuracy']:.2f}%")
    return 0


def report_cmd(args) -> int:
    from sparsebert.report import format_report

    rep = sparsebert.report(sparsebert.load(args.dir))
    print(json.dumps(rep.to_dict(), indent=1) if args.json else format_report(rep))
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _tsv_line(path: str, index: int) -> int:
    """The line number of the ``index``-th (0-based) non-blank line of ``path``."""
    with open(path, encoding="utf-8") as f:
        seen = -1
        for number, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == index:
                    return number
    return 0


def _recover_labels(model, train_path, train_labels, eval_path, eval_labels) -> tuple[list[str], dict[str, int]]:
    """(class names, label -> class id) for the TSV labels: the head's own label names when they
    match, integers as class ids, else the sorted label strings numbered from 0."""
    found = sorted(set(train_labels), key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit()
                                                     else 0, s))
    head = type(model).__name__.endswith("ForSequenceClassification")
    if head:
        n = model.config.num_labels
        label2id = {str(k): int(v) for k, v in (getattr(model.config, "label2id", None) or {}).items()}
        if set(found) <= set(label2id):
            mapping = label2id
        elif all(s.lstrip("-").isdigit() and 0 <= int(s) < n for s in found):
            mapping = {s: int(s) for s in found}
        elif len(found) == n:
            mapping = {s: i for i, s in enumerate(found)}
        else:
            raise CliError(f"{train_path} has {len(found)} labels {found[:10]} but the model's head has {n} classes")
        names = [next((s for s, i in mapping.items() if i == c), str(c)) for c in range(n)]
    else:
        if len(found) < 2:
            raise CliError(f"{train_path} has {len(found)} label {found}: a classifier needs at least 2")
        mapping = {s: i for i, s in enumerate(found)}
        names = found
    for path, labels in ((train_path, train_labels), (eval_path, eval_labels)):
        for i, lab in enumerate(labels):
            if lab not in mapping:
                raise CliError(f"{path}:{_tsv_line(path, i)}: label {lab!r} is not one of {sorted(mapping)[:10]}")
    return names, mapping


def recover_cmd(args) -> int:
    import copy
    import math

    from transformers import AutoConfig, AutoModelForSequenceClassification

    from sparsebert.data import read_tsv
    from sparsebert.prune import model_block_sparsity
    from sparsebert.recover import Recipe, accuracy, encode, recover

    out = args.out
    ours = {"teacher", "recover.pt"}
    if os.path.isdir(out) and set(os.listdir(out)) - ours and not args.overwrite:
        raise CliError(f"--out {out!r} exists and is not empty (pass --overwrite)")
    if not os.path.isdir(args.model_dir):
        raise CliError(f"{args.model_dir!r} is not a directory")
    train_texts, train_labels = read_tsv(args.train)
    eval_texts, eval_labels = read_tsv(args.eval)
    model, tokenizer = _load_hf(args.model_dir)
    if tokenizer is None:
        raise CliError(f"{args.model_dir!r} has no tokenizer files: recover tokenizes the TSV texts with them")
    names, mapping = _recover_labels(model, args.train, train_labels, args.eval, eval_labels)
    train = encode(tokenizer, train_texts, [mapping[s] for s in train_labels], args.max_length)
    evals = encode(tokenizer, eval_texts, [mapping[s] for s in eval_labels], args.max_length)
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    os.makedirs(out, exist_ok=True)

    if type(model).__name__.endswith("ForSequenceClassification"):
        teacher = model
    else:  # no head: a dense teacher fine-tuned on the TSV first, cached under OUT/teacher
        teacher_dir = os.path.join(out, "teacher")
        key = {"model_dir": os.path.abspath(args.model_dir), "train": os.path.abspath(args.train),
               "train_mtime": os.path.getmtime(args.train), "labels": names, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.teacher_lr, "seed": args.seed, "max_length": args.max_length,
               "bf16": args.bf16}
        key_file = os.path.join(teacher_dir, "sparsebert_teacher.json")
        cached = os.path.isfile(key_file) and json.load(open(key_file)) == key
        if cached:
            teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
        else:
            config = AutoConfig.from_pretrained(args.model_dir, num_labels=len(names),
                                                id2label=dict(enumerate(names)),
                                                label2id={s: i for i, s in enumerate(names)})
            teacher = AutoModelForSequenceClassification.from_pretrained(args.model_dir, config=config)
            try:
                recover(teacher, None, train, Recipe(sparsity=None, steps=steps, batch_size=args.batch_size,
                                                     lr=args.teacher_lr, distill_weight=0.0, seed=args.seed,
                                                     bf16=args.bf16))
            except FloatingPointError as e:
                raise CliError(f"fine-tuning the dense teacher: {_first_line(e)}") from None
            teacher.save_pretrained(teacher_dir)
            with open(key_file, "w") as f:
                json.dump(key, f)
    teacher.config.id2label = dict(enumerate(names))
    teacher.config.label2id = {s: i for i, s in enumerate(names)}
    dense_accuracy = accuracy(teacher, evals)

    recipe = Recipe(sparsity=args.sparsity, block_size=args.block, method=args.method, steps=steps,
                    batch_size=args.batch_size, lr=args.lr, seed=args.seed, bf16=args.bf16)
    student = copy.deepcopy(teacher)
    try:
        recover(student, teacher, train, recipe, checkpoint=os.path.join(out, "recover.pt"))
    except FloatingPointError as e:
        raise CliError(_first_line(e)) from None
    sparsity = model_block_sparsity(student, args.block)
    sparse_fp32_accuracy = accuracy(student, evals)
    example = None
    if args.int8 == "dynamic":
        example = tokenizer(train_texts[:64], padding=True, truncation=True, max_length=args.max_length,
                            return_tensors="pt")
    sparsebert.compress(student, sparsebert.CompressConfig(block_size=args.block, int8=args.int8),
                        example_inputs=example, progress=True)
    result = {"dense_accuracy": dense_accuracy, "accuracy": accuracy(student, evals),
              "sparse_fp32_accuracy": sparse_fp32_accuracy, "sparsity": sparsity, "block_size": list(args.block),
              "int8": args.int8, "labels": names, "train_examples": len(train), "eval_examples": len(evals),
              "recipe": recipe.to_dict(), "model_dir": os.path.abspath(args.model_dir)}
    sparsebert.save(student, out, tokenizer=tokenizer, overwrite=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    ckpt = os.path.join(out, "recover.pt")
    if os.path.isfile(ckpt):
        os.remove(ckpt)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"dense accuracy  {dense_accuracy:.2f}% on {len(evals)} examples")
        print(f"recovered       {result['accuracy']:.2f}% at {sparsity:.1%} of {args.block[0]}x{args.block[1]} blocks"
              f"{' + INT8 ' + args.int8 if args.int8 else ''} (fp32 sparse: {sparse_fp32_accuracy:.2f}%)")
        print(f"saved to {out}")
    return 0


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsebert", description=sparsebert.__doc__)
    parser.add_argument("--version", action="version", version=f"sparsebert {sparsebert.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, CPU ISA, backends, kernels, threads").set_defaults(func=info)

    p = sub.add_parser("compress", help="compress a Hugging Face BERT directory and save it",
                       description="Compress a Hugging Face BERT-family model directory (any task head) and save "
                                   "it with sparsebert.save; prints the per-layer report.")
    p.add_argument("model_dir")
    p.add_argument("--out", required=True, help="output directory (sparsebert.save)")
    p.add_argument("--sparsity", type=float, default=None, help="prune this share of blocks (default: keep zeros)")
    p.add_argument("--block", type=_block, default=(32, 32), help="block size ROWSxCOLS (default 32x32)")
    p.add_argument("--int8", type=_none_or, default=None, choices=["dynamic", "weight_only", None])
    p.add_argument("--act-quant", default="per_token",
                   choices=["per_token", "per_token_asym", "per_tensor", "per_tensor_asym"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attention", type=_none_or, default="sparsebert", choices=["sparsebert", "unpadded", None])
    p.add_argument("--attention-precision", default="fp32", choices=["fp32", "bf16", "int8"],
                   help="bf16: attention's matmuls take bf16-rounded q, k, v (bf16 dot products on AVX-512 BF16); "
                        "int8: q, k, v and the probabilities quantized to 8 bits (vpdpbusd on AVX-512 VNNI, CPU only)")
    p.add_argument("--kernel", default="auto", choices=["auto", "sparse", "dense"])
    p.add_argument("--compile", action="store_true",
                   help="record that sparsebert.load compiles the model (torch.compile, dynamic shapes)")
    p.add_argument("--no-fuse", action="store_true",
                   help="keep the FFN's GELU a separate op (default: fused into the INT8 up projection)")
    p.add_argument("--skip", action="append", help="module-name pattern never converted (repeatable)")
    p.add_argument("--min-cosine", type=float, default=0.999, help="fidelity budget of the calibrated INT8 choice")
    p.add_argument("--calibrate", type=int, default=64,
                   help="real sentences to calibrate int8=dynamic on (0: no calibration; default 64)")
    p.add_argument("--calib-file", help="text file, one calibration sentence per line (default: movie reviews)")
    p.add_argument("--tokens", type=int, default=None, help="token count of the per-layer timing")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=compress_cmd)

    p = sub.add_parser("bench", help="latency of a saved model against HF fp32 / bf16 / quantize_dynamic")
    p.add_argument("dir")
    p.add_argument("--batch", type=_int_list, default=[1, 8], help="batch sizes, e.g. 1,8")
    p.add_argument("--seq", type=_int_list, default=[128], help="sequence lengths, e.g. 128")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--baselines", default="fp32,bf16,quantize_dynamic")
    p.add_argument("--mixed", action="store_true", help="mixed sequence lengths, padded")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (at least)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="write a PNG bar chart here")
    p.set_defaults(func=bench_cmd)

    p = sub.add_parser("eval", help="embedding cosine against the original model; accuracy on labelled data")
    p.add_argument("dir")
    p.add_argument("--original", help="the original model directory (default: the one it was compressed from)")
    p.add_argument("--data", help="TSV of text<TAB>label lines (needs a classification head)")
    p.add_argument("--sentences", type=int, default=256, help="real sentences for the cosine (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=eval_cmd)

    p = sub.add_parser("report", help="per-layer format, density, size and measured speedup of a saved model")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=report_cmd)

    p = sub.add_parser("recover", help="prune while fine-tuning with distillation, on labelled TSV data",
                       description="Fine-tune a Hugging Face BERT-family model directory while pruning it to "
                                   "--sparsity on a cubic schedule, distilling from the dense model (a model without "
                                   "a classification head gets a dense teacher fine-tuned first, cached under "
                                   "OUT/teacher), then compress and save it with sparsebert.save, plus results.json.")
    p.add_argument("model_dir")
    p.add_argument("--train", required=True, help="TSV of text<TAB>label lines to train on")
    p.add_argument("--eval", required=True, help="TSV of text<TAB>label lines to measure accuracy on")
    p.add_argument("--sparsity", type=_fraction, required=True, help="share of blocks to prune, in [0, 1)")
    p.add_argument("--block", type=_block, default=(32, 32), help="block size ROWSxCOLS (default 32x32)")
    p.add_argument("--int8", type=_none_or, default=None, choices=["dynamic", "weight_only", None])
    p.add_argument("--method", default="magnitude", choices=list(RECOVER_METHODS),
                   help="how blocks are ranked: weight magnitude, movement (-w * grad) or activation (weight times "
                        "input feature norm)")
    p.add_argument("--epochs", type=_positive_int, default=3,
                   help="passes over --train, for the teacher's fine-tuning and for the recovery each (default 3)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--lr", type=_positive_float, default=1e-4, help="peak learning rate of the recovery (default 1e-4)")
    p.add_argument("--teacher-lr", type=_positive_float, default=5e-5,
                   help="peak learning rate of the dense teacher's fine-tuning, when the model has no head "
                        "(default 5e-5)")
    p.add_argument("--max-length", type=_positive_int, default=128, help="tokens per text (default 128)")
    p.add_argument("--bf16", action="store_true",
                   help="train under bfloat16 autocast (about 1.5x faster on CPUs with AVX512-BF16 or AMX, slower "
                        "without)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory (sparsebert.save + results.json)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true", help="print results.json")
    p.set_defaults(func=recover_cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its loading bars; sparsebert's own stay (stderr)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`sparsebert info | head`): stop quietly, and keep Python's exit
        # flush from raising again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("sparsebert: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, TypeError, OSError, ImportError) as e:
        print(f"sparsebert {args.command}: error: {_first_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
