"""Prediction speed of a checkpoint: comments a second (the web service: serve_load.py).

    python benchmarks/predict_throughput.py --ckpt outputs/runs/<run>/checkpoints/<best>.ckpt \
        --comments data/uit-visfd/Test.csv          # or: make bench-predict CKPT=...

Throughput is `AspectSentimentPredictor.predict` on every comment of the file (tokenising,
batching by length, the network, decoding), `--batch-size` at a time on `--threads` CPU threads,
the median of `--repeats` passes after one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from absa_lightning.data.comments import read_csv_comments
from absa_lightning.predictor import load_predictor


def throughput(predictor, texts: list[str], repeats: int) -> float:
    predictor.predict(texts[: predictor.batch_size])  # warm-up: first-call allocations
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(texts)
        seconds.append(time.perf_counter() - start)
    return len(texts) / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint or an exported folder")
    parser.add_argument("--comments", type=Path, required=True, help="a CSV of comments")
    parser.add_argument("--text-column", default="comment")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
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
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
