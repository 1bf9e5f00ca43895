"""Prediction speed of a checkpoint: comments a second, and the latency of `POST /predict`.

    python benchmarks/predict_throughput.py --ckpt outputs/runs/<run>/checkpoints/<best>.ckpt \
        --comments data/uit-visfd/Test.csv          # or: make bench-predict CKPT=...

Throughput is `AspectSentimentPredictor.predict` on every comment of the file (tokenising,
batching by length, the network, decoding), `--batch-size` at a time on `--threads` CPU threads,
the median of `--repeats` passes after one warm-up batch. Latency is `--requests` one-comment
requests, one after another, from a real HTTP client to `absa-serve`'s server on 127.0.0.1 in
this process, after `--warmup` requests; the comments cycle through the file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request
from pathlib import Path

import torch

from absa_lightning.data.comments import read_csv_comments
from absa_lightning.predictor import load_predictor
from absa_lightning.serve import PredictionServer


def throughput(predictor, texts: list[str], repeats: int) -> float:
    predictor.predict(texts[: predictor.batch_size])  # warm-up: first-call allocations
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(texts)
        seconds.append(time.perf_counter() - start)
    return len(texts) / statistics.median(seconds)


def latency_ms(predictor, texts: list[str], requests: int, warmup: int) -> dict[str, float]:
    server = PredictionServer(("127.0.0.1", 0), predictor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        timings = []
        for i in range(warmup + requests):
            body = json.dumps({"texts": [texts[i % len(texts)]]}).encode("utf-8")
            start = time.perf_counter()
            with urllib.request.urlopen(server.url + "predict", data=body, timeout=60) as r:
                r.read()
            if i >= warmup:
                timings.append(1000 * (time.perf_counter() - start))
    finally:
        server.shutdown()
        server.server_close()
    cuts = statistics.quantiles(timings, n=100)
    return {"p50": statistics.median(timings), "p95": cuts[94], "max": max(timings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint or an exported folder")
    parser.add_argument("--comments", type=Path, required=True, help="a CSV of comments")
    parser.add_argument("--text-column", default="comment")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.ckpt, batch_size=args.batch_size, device="cpu")
    texts = read_csv_comments(args.comments, args.text_column).texts
    result = {
        "ckpt": str(args.ckpt),
        "comments": len(texts),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "comments_per_second": round(throughput(predictor, texts, args.repeats), 1),
        "post_predict_latency_ms": {
            k: round(v, 1)
            for k, v in latency_ms(predictor, texts, args.requests, args.warmup).items()
        },
        "requests": args.requests,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
