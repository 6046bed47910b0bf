"""What each whole-model step is worth, each measured by turning it off on one compressed model in
one process, round by round against the model with everything on (paired: the VM's drift hits
every configuration alike).

Model: BERT-base shape (random weights, seed 0), 90% 32x32 blocks + INT8 dynamic, unpadded
encoder, compressed once (``CompressConfig`` defaults: GELU fused into the up projection, each
block's residual add + LayerNorm as one op). Configurations:

- ``all``: as compressed (fp32 attention);
- ``no lean layers``: a no-op forward hook on the first layer, so the unpadded encoder calls
  transformers' ``BertLayer.forward`` (the lean path steps aside for hooks);
- ``no fused add + LayerNorm``: ``sparsebert.hf.unfuse_layer_norms``;
- ``no fused GELU``: ``sparsebert.unfuse_activations``;
- ``no fused QKV``: ``sparsebert.hf.unfuse_qkv`` (query, key and value as three layers);
- ``no layer plans``: the lean path reaches each layer's ops through its modules (the private
  switch ``sparsebert.hf._LAYER_PLANS`` off; a plan holds a layer's five ops with their arguments
  bound, see ``sparsebert/hf.py``);
- ``no fused FFN``: ``sparsebert.hf.unfuse_ffn`` (the FFN's two projections and its add + LayerNorm
  as separate ops);
- ``+ bf16 attention``: ``set_attention_precision(model, "bf16")``;
- ``+ int8 attention``: ``set_attention_precision(model, "int8")``.

Each switch happens outside the timed call (``time_methods`` runs every method once untimed right
before its timed call). ``--fidelity`` adds what bf16 and int8 attention cost in fidelity on the
real MiniLM-L6: the minimum cosine of pooled embeddings of real sentences to fp32, with and without
INT8 weights.

    python benchmarks/bench_steps.py [--shapes 1x128,8x128] [--rounds 15] [--fidelity] [--json F]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sparsebert  # noqa: E402
from common import Method, fmt_ms, header, markdown_table, time_methods, write_json  # noqa: E402
from sparsebert.hf import (  # noqa: E402
    fuse_ffn, fuse_layer_norms, fuse_qkv, set_attention_precision, unfuse_ffn, unfuse_layer_norms, unfuse_qkv,
)

CONFIGS = ("all", "no lean layers", "no layer plans", "no fused add + LayerNorm", "no fused GELU", "no fused QKV", "no fused FFN",
           "+ bf16 attention", "+ int8 attention")


class Switch:
    """Puts the model into one configuration; does nothing when it is already there."""

    def __init__(self, model):
        self.model, self.state, self.hook = model, "all", None

    def __call__(self, config: str) -> None:
        if config == self.state:
            return
        m = self.model
        # back to "all"
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
        fuse_layer_norms(m)
        sparsebert.fuse_activations(m)
        fuse_qkv(m)
        fuse_ffn(m)
        set_attention_precision(m, "fp32")
        sparsebert.hf._LAYER_PLANS = True
        # then the one change
        if config == "no lean layers":
            self.hook = m.encoder.layer[0].register_forward_hook(lambda *a: None)
        elif config == "no layer plans":
            sparsebert.hf._LAYER_PLANS = False
        elif config == "no fused add + LayerNorm":
            unfuse_layer_norms(m)
        elif config == "no fused GELU":
            sparsebert.unfuse_activations(m)
        elif config == "no fused QKV":
            unfuse_qkv(m)
        elif config == "no fused FFN":
            unfuse_ffn(m)
        elif config == "+ bf16 attention":
            set_attention_precision(m, "bf16")
        elif config == "+ int8 attention":
            set_attention_precision(m, "int8")
        self.state = config


def speed_rows(shapes, rounds: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval()
    sparsebert.compress(model, sparsebert.CompressConfig(sparsity=0.9, int8="dynamic", kernel="sparse",
                                                         attention="unpadded"), cache=False)
    switch = Switch(model)
    rows, recs = [], []
    for b, s in shapes:
        ids = torch.randint(5, model.config.vocab_size, (b, s), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)

        def runner(config):
            def run(_):
                switch(config)
                return model(input_ids=ids, attention_mask=mask)
            return run

        with torch.inference_mode():
            timing = time_methods([Method(c, runner(c)) for c in CONFIGS], min_rounds=rounds)
        base = timing.median("all")
        for c in CONFIGS:
            t = timing.median(c)
            rows.append([f"{b}x{s}", c, fmt_ms(t), f"{t / base:.3f}"])
            recs.append(dict(shape=f"{b}x{s}", config=c, seconds=t, vs_all=t / base))
    table = markdown_table(["shape", "configuration", "ms (median)", "time / all"], rows)
    return table, recs


def fidelity_rows():
    from transformers import AutoModel, AutoTokenizer

    from sparsebert.compress import pooled_output
    from sparsebert.data import minilm_path, split_sentences

    tok = AutoTokenizer.from_pretrained(minilm_path())
    calib_s, test_s = split_sentences(64, 256)
    calib = tok(calib_s, padding=True, return_tensors="pt")

    def embed(m):
        outs = []
        with torch.inference_mode():
            for i in range(0, len(test_s), 32):
                enc = tok(test_s[i:i + 32], padding=True, return_tensors="pt")
                outs.append(pooled_output(m(**enc), enc["attention_mask"]))
        return torch.cat(outs)

    ref = embed(AutoModel.from_pretrained(minilm_path()).eval())
    rows, recs = [], []
    for name, cfg in (("fp32 weights, bf16 attention", dict(attention_precision="bf16", kernel="dense")),
                      ("INT8 (calibrated), fp32 attention", dict(int8="dynamic")),
                      ("INT8 (calibrated), bf16 attention", dict(int8="dynamic", attention_precision="bf16")),
                      ("fp32 weights, int8 attention", dict(attention_precision="int8", kernel="dense")),
                      ("INT8 (calibrated), int8 attention", dict(int8="dynamic", attention_precision="int8"))):
        m = sparsebert.compress(AutoModel.from_pretrained(minilm_path()).eval(),
                                sparsebert.CompressConfig(attention="unpadded", **cfg),
                                example_inputs=calib if "int8" in cfg else None)
        cos = torch.nn.functional.cosine_similarity(embed(m), ref, dim=-1)
        rows.append([name, f"{cos.min():.6f}", f"{cos.median():.6f}"])
        recs.append(dict(model=name, min_cosine=cos.min().item(), median_cosine=cos.median().item()))
    table = markdown_table([f"MiniLM-L6, {len(test_s)} real sentences", "min cosine to fp32", "median"], rows)
    return table, recs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="1x128,8x128", help="batch x seq, comma-separated")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fidelity", action="store_true", help="also bf16 and int8 attention's fidelity on the real MiniLM-L6")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print(header("What each whole-model step is worth: BERT-base, 90% 32x32 + INT8, unpadded", {
        "command": "python benchmarks/bench_steps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": str(args.threads),
        "timing": f"one process, the configurations interleaved round by round, at least {args.rounds} rounds, "
                  "medians; time / all > 1: the step saves that much",
    }))
    print()
    table, recs = speed_rows(shapes, args.rounds)
    print(table)
    if args.fidelity:
        ftable, frecs = fidelity_rows()
        print()
        print(ftable)
        recs += frecs
    write_json(args.json, {"argv": argv if argv is not None else sys.argv[1:]}, recs)


if __name__ == "__main__":
    main()
