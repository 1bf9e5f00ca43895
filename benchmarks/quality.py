"""The neural rows: `train.py` once per (row, seed), one after another, and the test metrics
over seeds.

    python -m benchmarks.bench --only quality [--quick] [--reuse]

Rows and their overrides are `quality.rows` in benchmarks/bench.yaml. Runs are sequential: on 2
cores two trainings at once would each time the other's load. Each run writes into
`outputs/bench/<full|quick>/<row>/seed_<S>/`: the run's own files, its console output
(`bench.log`) and `bench_stamp.json` (git revision, a hash of the uncommitted diff, overrides,
wall time). With `--reuse`, a run whose metrics.json and stamp match the current code and
overrides is read instead of run again (each reuse is printed); otherwise its folder is emptied
first, so that train.py's `resume=auto` never continues a stale run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from benchmarks.results import (
    METRICS,
    REPO,
    MeanStd,
    Section,
    Target,
    code_version,
    load_settings,
)

OUTPUT_ROOT = REPO / "outputs" / "bench"
STAMP = "bench_stamp.json"
LOG = "bench.log"
COLUMNS = ["row", "recipe", "seeds", *METRICS, "fit_min", "wall_min", "epochs"]
QUICK_NOTE = "quick mode: shortened training, not comparable"


@dataclass(frozen=True)
class TrainingRun:
    row: str
    seed: int
    overrides: tuple[str, ...]  # everything train.py gets, run folder and seed included
    run_dir: Path

    def command(self) -> list[str]:
        return [sys.executable, str(REPO / "train.py"), *self.overrides]


@dataclass(frozen=True)
class RunOutcome:
    metrics: dict[str, Any]  # the run's metrics.json
    wall_seconds: float  # the train.py process, start to end
    reused: bool


def planned_runs(
    settings: DictConfig, data_dir: Path, mode: str, output_root: Path = OUTPUT_ROOT
) -> list[TrainingRun]:
    """Every (row, seed) of the settings, rows in their order, seeds within a row."""
    quality = settings.quality
    runs = []
    for row, spec in quality.rows.items():
        for seed in settings.seeds:
            run_dir = output_root / mode / row / f"seed_{seed}"
            overrides = (
                *spec.overrides,
                *quality.common_overrides,
                *quality.extra_overrides,
                f"data.root={data_dir}",
                f"seed={seed}",
                f"hydra.run.dir={run_dir}",
            )
            runs.append(TrainingRun(row, seed, overrides, run_dir))
    return runs


def execute(run: TrainingRun, code: dict[str, Any], reuse: bool) -> RunOutcome:
    """Runs train.py for `run`, or, with `reuse`, reads a finished run of the same code."""
    stamp = {"code": code, "overrides": list(run.overrides)}
    stamp_path, metrics_path = run.run_dir / STAMP, run.run_dir / "metrics.json"
    if reuse and stamp_path.is_file() and metrics_path.is_file():
        saved = json.loads(stamp_path.read_text(encoding="utf-8"))
        if {key: saved.get(key) for key in stamp} == stamp:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            return RunOutcome(metrics, saved["wall_seconds"], reused=True)

    shutil.rmtree(run.run_dir, ignore_errors=True)
    run.run_dir.mkdir(parents=True)
    log_path = run.run_dir / LOG
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.run(run.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall_seconds = time.perf_counter() - start
    if process.returncode != 0 or not metrics_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(
            f"{run.row} seed {run.seed}: train.py exited with {process.returncode} "
            f"(output in {log_path}):\n{tail}"
        )
    stamp_path.write_text(json.dumps({**stamp, "wall_seconds": wall_seconds}, indent=2) + "\n")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    return RunOutcome(metrics, wall_seconds, reused=False)


def aggregate(row: str, recipe: str, outcomes: Sequence[RunOutcome]) -> dict[str, Any]:
    """One table row: each test metric's mean ± sample std over the seeds, times in minutes."""
    return {
        "row": row,
        "recipe": recipe,
        "seeds": len(outcomes),
        **{m: MeanStd.of([o.metrics["test"][f"test/{m}"] for o in outcomes]) for m in METRICS},
        "fit_min": MeanStd.of([o.metrics["fit_seconds"] / 60 for o in outcomes], digits=1),
        "wall_min": MeanStd.of([o.wall_seconds / 60 for o in outcomes], digits=1),
        "epochs": "/".join(str(o.metrics["epochs_trained"]) for o in outcomes),
    }


def mean_of(cell: MeanStd | float) -> float:
    return cell.mean if isinstance(cell, MeanStd) else float(cell)


def recipe_targets(quality: Section, settings: DictConfig, quick: bool) -> list[Target]:
    """The default recipe's time limit, and its gain over cross-entropy alone."""
    default, ce = quality.row("default"), quality.row("ce")
    note = QUICK_NOTE if quick else ""
    gain = settings.targets.contrastive_pair_f1_gain
    return [
        Target(
            "default recipe: train.py wall time of the slowest seed (min)",
            max(default["wall_min"].values),
            "<=",
            settings.targets.max_train_minutes,
            note,
        ),
        Target(
            f"default mean pair_f1 >= CE-only mean pair_f1 + {gain}",
            mean_of(default["pair_f1"]),
            ">=",
            mean_of(ce["pair_f1"]) + gain,
            note or f"over {default['seeds']} seeds",
        ),
    ]


def baseline_targets(
    svm_row: dict[str, Any], quality: Section, settings: DictConfig, quick: bool
) -> list[Target]:
    """The default recipe against the TF-IDF + SVM baseline, on the test split."""
    default = quality.row("default")
    margin = settings.targets.svm_pair_f1_margin
    note = QUICK_NOTE if quick else "default: mean over seeds"
    return [
        Target(
            f"default pair_f1 >= SVM pair_f1 + {margin}",
            mean_of(default["pair_f1"]),
            ">=",
            mean_of(svm_row["pair_f1"]) + margin,
            note,
        ),
        Target(
            "default aspect_f1 > SVM aspect_f1",
            mean_of(default["aspect_f1"]),
            ">",
            mean_of(svm_row["aspect_f1"]),
            note,
        ),
    ]


def run(data_dir: Path, quick: bool, reuse: bool = False) -> Section:
    settings = load_settings(quick)
    mode = "quick" if quick else "full"
    runs = planned_runs(settings, data_dir, mode)
    code = code_version()
    outcomes: dict[str, list[RunOutcome]] = {row: [] for row in settings.quality.rows}
    for i, training in enumerate(runs, start=1):
        print(f"[{i}/{len(runs)}] {training.row} seed {training.seed}: {training.run_dir}")
        outcome = execute(training, code, reuse)
        verb = "reused (same code and overrides)" if outcome.reused else "trained"
        print(f"    {verb}: {outcome.wall_seconds / 60:.1f} min", flush=True)
        outcomes[training.row].append(outcome)

    published = settings.quality.published
    section = Section(
        title="Quality: neural recipes (test split, mean ± sample std over seeds)",
        columns=COLUMNS,
        rows=[
            *(
                aggregate(row, spec.label, outcomes[row])
                for row, spec in settings.quality.rows.items()
            ),
            {
                "row": "published",
                "recipe": published.label,
                "aspect_f1": published.aspect_f1,
                "pair_f1": published.pair_f1,
            },
        ],
        notes=[
            "fit_min: trainer.fit (metrics.json fit_seconds); wall_min: the whole train.py "
            "process (start-up, fit, validation and test of the best checkpoint)",
            "epochs: epochs trained per seed (early stopping may end a run before max_epochs)",
            "published: quoted from the paper, not measured here; its sentiment F1 under pair_f1",
            f"runs in {OUTPUT_ROOT / mode}; reused: "
            f"{sum(o.reused for rows in outcomes.values() for o in rows)} of {len(runs)}",
        ]
        + ([QUICK_NOTE + f": {' '.join(settings.quality.extra_overrides)}"] if quick else []),
    )
    section.targets = recipe_targets(section, settings, quick)
    return section
