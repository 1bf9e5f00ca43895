"""The GPU check: all 12 layers of multilingual-e5-small (`experiment=visfd_e5_full_cpu`)
fine-tuned in bf16 on one GPU (`trainer=gpu`), on UIT-ViSFD and on MAMS-ACSA (`data=mams`,
nothing else changed): test F1, fit time, training comments/s and peak GPU memory. Run by
gpu_check.sh.

    python -m benchmarks.gpu_check --out DIR [--epochs N] [--smoke]

--smoke: a few batches on the CPU, to check the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from absa_lightning.config import CONF_DIR
from absa_lightning.train import train
from benchmarks.results import METRICS, Section, Target, environment, write_results

DATASETS = {"visfd": [], "mams": ["data=mams"]}
SMOKE = ["debug=limit", "trainer.max_epochs=1", "trainer.accelerator=cpu"]
QUIET = ["~callbacks.progress_bar", "+trainer.enable_progress_bar=false"]
# The targets for the quality recipe, test pair F1 (mean of 3 seeds there; one seed here).
PAIR_F1_TARGET = {"visfd": 0.80, "mams": 0.72}


def run(data: str, extra: list[str], workdir: Path) -> dict:
    overrides = ["experiment=visfd_e5_full_cpu", "trainer=gpu", *DATASETS[data], *QUIET, *extra]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = str(workdir / data)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - started
    comments = metrics["epochs_trained"] * metrics["train_comments"]
    return {
        "dataset": data,
        **{k: round(metrics["test"][f"test/{k}"], 4) for k in METRICS},
        "best_val_pair_f1": round(metrics["best_val"]["val/pair_f1"], 4),
        "epochs": metrics["epochs_trained"],
        "fit_s": round(metrics["fit_seconds"], 1),
        "total_s": round(seconds, 1),
        "train_comments_per_s": round(comments / metrics["fit_seconds"], 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.gpu_check", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    extra = [f"trainer.max_epochs={args.epochs}"] if args.epochs else []
    extra += SMOKE if args.smoke else []
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; --smoke checks the script on a CPU")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in DATASETS:
            rows.append(run(data, extra, Path(tmp)))
            print(rows[-1], flush=True)
    section = Section(
        title="GPU check: e5-small fine-tuned in bf16 (experiment=visfd_e5_full_cpu trainer=gpu)",
        columns=list(rows[0]),
        rows=rows,
        targets=[
            Target(
                f"{r['dataset']} test pair F1 (one seed)",
                r["pair_f1"],
                ">=",
                PAIR_F1_TARGET[r["dataset"]],
                "issue 13's target, for the quality recipe",
            )
            for r in rows
        ],
        notes=[
            f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
            "comments/s: training comments x epochs / fit seconds (validation included)",
        ],
    )
    env = environment([42], quick=args.smoke)
    env["mode"] = "gpu-smoke" if args.smoke else "gpu"
    md, _ = write_results([section], env, time.perf_counter() - started, "gpu_check", args.out)
    print(md.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
