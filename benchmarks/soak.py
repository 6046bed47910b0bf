"""Serving under load: a compressed model behind a small threaded HTTP server on loopback, with
client threads sending real sentences for a fixed time.

Every answer is checked against the output of the same sentence computed beforehand, one at a
time, in this process (bit-equal: concurrency must change nothing); resident memory is sampled
once a second, and the request rate per tenth of the run is recorded. Fails (exit 1) on any
wrong or missing answer, on resident memory growing by more than ``--max-growth-mb`` after the
warm-up, or on a tenth of the run serving under half the median rate.

    python benchmarks/soak.py                    # the real MiniLM-L6, 10 minutes (make soak)
    python benchmarks/soak.py --seconds 8 --model tiny   # the quick profile make test runs
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.request

import torch

import sparsebert
from sparsebert import CompressConfig, compress


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(model_name: str):
    """(model, tokenizer, sentences) for a compressed model and a pool of request sentences."""
    from sparsebert.data import movie_reviews

    sentences = [s for s, _ in movie_reviews()][:256]
    if model_name == "minilm":
        from sparsebert.data import load_minilm

        model, tokenizer = load_minilm()
        config = CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic", attention="unpadded")
    else:
        from transformers import BertConfig, BertModel

        from sparsebert.data import load_minilm

        _, tokenizer = load_minilm()
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128)).eval()
        config = CompressConfig(sparsity=0.5, block_size=(16, 16), int8="dynamic", kernel="sparse",
                                attention="unpadded")
    compress(model, config, cache=False)
    return model, tokenizer, sentences


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


class Server:
    """ThreadingHTTPServer on 127.0.0.1: POST / with {"text": ...} -> {"digest", "norm"}."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.tokenizer_lock = threading.Lock()  # tokenizer objects are not shared across threads
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    reply = {"digest": outer.embed_digest(body["text"])}
                    code = 200
                except Exception as e:  # an error is an answer the client counts as wrong
                    reply, code = {"error": f"{type(e).__name__}: {e}"}, 500
                data = json.dumps(reply).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def embed_digest(self, text: str) -> str:
        with self.tokenizer_lock:
            inputs = self.tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            return digest(self.model(**inputs)[0])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def soak(model_name: str, seconds: float, clients: int, max_requests: int, seed: int = 0) -> dict:
    model, tokenizer, sentences = build(model_name)
    server = Server(model, tokenizer)
    expected = [server.embed_digest(s) for s in sentences]  # sequential, before any concurrency
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stamps: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    counter = iter(range(max_requests))
    counter_lock = threading.Lock()

    def client(i: int):
        rng = random.Random(seed * 1000 + i)
        while not stop.is_set():
            with counter_lock:
                if next(counter, None) is None:
                    return
            j = rng.randrange(len(sentences))
            data = json.dumps({"text": sentences[j]}).encode()
            t0 = time.perf_counter()
            try:
                req = urllib.request.Request(server.url, data=data, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as r:
                    reply = json.loads(r.read())
            except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
                failures.append(f"request {j}: {type(e).__name__}: {e}")
                continue
            t1 = time.perf_counter()
            if reply.get("digest") != expected[j]:
                failures.append(f"sentence {j}: {reply.get('error', 'a different output than sequentially')}")
            latencies[i].append(t1 - t0)
            stamps[i].append(t1)

    def sampler():
        while not stop.wait(1.0):
            rss.append((time.perf_counter(), rss_mb()))

    with server:
        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        threads.append(threading.Thread(target=sampler))
        for t in threads:
            t.start()
        stop.wait(seconds)
        stop.set()
        for t in threads:
            t.join()
        end = time.perf_counter()

    lat = sorted(x for per in latencies for x in per)
    times = sorted(x for per in stamps for x in per)
    windows = [0] * 10
    for t in times:
        windows[min(9, int((t - start) / (end - start) * 10))] += 1
    warm = [m for t, m in rss if t - start >= 0.2 * (end - start)] or [m for _, m in rss] or [rss_mb()]
    return {
        "model": model_name, "seconds": round(end - start, 1), "clients": clients, "served": len(lat),
        "failures": failures, "rate_per_s": round(len(lat) / (end - start), 1),
        "p50_ms": round(1e3 * lat[len(lat) // 2], 2) if lat else None,
        "p99_ms": round(1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
        "per_tenth": windows, "rss_after_warmup_mb": round(warm[0], 1), "rss_end_mb": round(warm[-1], 1),
        "rss_max_mb": round(max(warm), 1), "cpu": sparsebert.measure.cpu_model(), "threads": torch.get_num_threads(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seconds", type=float, help="run time in seconds (overrides --minutes)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-requests", type=int, default=10_000_000, help="stop after this many requests")
    p.add_argument("--max-growth-mb", type=float, default=32.0,
                   help="resident memory may grow at most this much after the warm-up (first fifth)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    if args.clients < 1:
        p.error(f"--clients must be at least 1, got {args.clients}")
    seconds = args.seconds if args.seconds is not None else 60 * args.minutes
    r = soak(args.model, seconds, args.clients, args.max_requests)
    growth = r["rss_end_mb"] - r["rss_after_warmup_mb"]
    med = statistics.median(r["per_tenth"])
    slow = [i for i, n in enumerate(r["per_tenth"]) if n < 0.5 * med]
    print(f"soak: {r['model']} for {r['seconds']} s, {r['clients']} clients, {r['cpu']}, {r['threads']} threads")
    print(f"  served {r['served']} requests ({r['rate_per_s']}/s), {len(r['failures'])} failures")
    print(f"  latency p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    print(f"  requests per tenth of the run: {r['per_tenth']}")
    print(f"  resident memory after warm-up {r['rss_after_warmup_mb']} MB, at the end {r['rss_end_mb']} MB "
          f"(max {r['rss_max_mb']} MB, growth {growth:+.1f} MB)")
    for f in r["failures"][:10]:
        print(f"  FAIL {f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    problems = []
    if r["failures"]:
        problems.append(f"{len(r['failures'])} wrong or failed answers")
    if r["served"] == 0:
        problems.append("no request served")
    if growth > args.max_growth_mb:
        problems.append(f"resident memory grew by {growth:.1f} MB (> {args.max_growth_mb} MB)")
    if slow and r["served"] < args.max_requests:  # a run stopped by --max-requests ends early on purpose
        problems.append(f"tenths {slow} of the run served under half the median rate ({med})")
    if problems:
        print("soak FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("soak passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
