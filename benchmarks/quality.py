"""The neural rows: `train.py` once per (dataset, row, seed), one after another, and the test
metrics over seeds.

    python -m benchmarks.bench --only quality [--quick] [--reuse] [--datasets visfd]
    python -m benchmarks.bench --only quality --override trainer=gpu --jobs 8   # on a GPU

Datasets and rows, with their overrides, are `datasets` and `quality.rows` in
benchmarks/bench.yaml. Runs are sequential by default: on 2 cores two trainings at once would
each time the other's load. `--jobs N` runs N at once, for a GPU that one small model leaves
mostly idle (their times then count each other's load). `--override` adds train.py overrides to
every run; those runs go into their own folder. Each run writes into
`outputs/bench/<full|quick>[_<overrides>]/<dataset>/<row>/seed_<S>/`: the
run's own files, its console output (`bench.log`) and `bench_stamp.json` (git revision, a hash of
the uncommitted diff, overrides, wall time). With `--reuse`, a run whose metrics.json and stamp
match the current code and overrides is read instead of run again (each reuse is printed);
otherwise its folder is emptied first, so that train.py's `resume=auto` never continues a stale run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
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
COLUMNS = ["dataset", "row", "recipe", "seeds", *METRICS, "fit_min", "wall_min", "epochs"]
QUICK_NOTE = "quick mode: shortened training, not comparable"


@dataclass(frozen=True)
class TrainingRun:
    dataset: str
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


def rows_on(rows: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """bench.yaml's quality rows that run on `dataset`: those naming it in `datasets`, or none."""
    return {
        row: spec
        for row, spec in rows.items()
        if spec.get("datasets") is None or dataset in spec.datasets
    }


def planned_runs(
    settings: DictConfig,
    datasets: Mapping[str, Sequence[str]],
    mode: str,
    output_root: Path = OUTPUT_ROOT,
    extra: Sequence[str] = (),
) -> list[TrainingRun]:
    """Every (dataset, row, seed): datasets, then rows, in their order, seeds within a row.

    `datasets`: {name: the train.py overrides that select it, e.g. ["data=mams"]}; `extra`:
    overrides added to every run, last.
    """
    quality = settings.quality
    runs = []
    for dataset, data_overrides in datasets.items():
        for row, spec in rows_on(quality.rows, dataset).items():
            for seed in settings.seeds:
                run_dir = output_root / mode / dataset / row / f"seed_{seed}"
                overrides = (
                    *data_overrides,
                    *spec.overrides,
                    *quality.common_overrides,
                    *quality.extra_overrides,
                    *extra,
                    f"seed={seed}",
                    f"hydra.run.dir={run_dir}",
                )
                runs.append(TrainingRun(dataset, row, seed, overrides, run_dir))
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
            f"{run.dataset} {run.row} seed {run.seed}: train.py exited with {process.returncode} "
            f"(output in {log_path}):\n{tail}"
        )
    stamp_path.write_text(json.dumps({**stamp, "wall_seconds": wall_seconds}, indent=2) + "\n")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    return RunOutcome(metrics, wall_seconds, reused=False)


def aggregate(
    dataset: str, row: str, recipe: str, outcomes: Sequence[RunOutcome]
) -> dict[str, Any]:
    """One table row: each test metric's mean ± sample std over the seeds, times in minutes."""
    return {
        "dataset": dataset,
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
    """Per dataset: the default recipe's time limit, its gain over cross-entropy alone, and its
    least metrics (`targets.default_at_least`)."""
    note = QUICK_NOTE if quick else ""
    gain = settings.targets.contrastive_pair_f1_gain
    targets = []
    for dataset in dict.fromkeys(row["dataset"] for row in quality.rows if row["row"] == "default"):
        default = quality.row(dataset=dataset, row="default")
        least = settings.targets.get("default_at_least", {}).get(dataset, {})
        targets += [
            Target(
                f"{dataset}: default mean {metric} >= {value}",
                mean_of(default[metric]),
                ">=",
                value,
                note,
            )
            for metric, value in least.items()
        ]
        targets += [
            Target(
                f"{dataset}: default recipe, train.py wall time of the slowest seed (min)",
                max(default["wall_min"].values),
                "<=",
                settings.targets.max_train_minutes,
                note,
            )
        ]
        try:
            ce = quality.row(dataset=dataset, row="ce")
        except KeyError:
            continue  # no cross-entropy row on this dataset
        targets.append(
            Target(
                f"{dataset}: default mean pair_f1 >= CE-only mean pair_f1 + {gain}",
                mean_of(default["pair_f1"]),
                ">=",
                mean_of(ce["pair_f1"]) + gain,
                note or f"over {default['seeds']} seeds",
            )
        )
    return targets


def baseline_targets(
    svm: Section, quality: Section, settings: DictConfig, quick: bool
) -> list[Target]:
    """Per dataset in both sections: the default recipe against the TF-IDF + SVM baseline."""
    margin = settings.targets.svm_pair_f1_margin
    note = QUICK_NOTE if quick else "default: mean over seeds"
    targets = []
    for svm_row in svm.rows:
        dataset = svm_row["dataset"]
        try:
            default = quality.row(dataset=dataset, row="default")
        except KeyError:
            continue  # the quality section ran on other datasets
        targets += [
            Target(
                f"{dataset}: default pair_f1 >= SVM pair_f1 + {margin}",
                mean_of(default["pair_f1"]),
                ">=",
                mean_of(svm_row["pair_f1"]) + margin,
                note,
            ),
            Target(
                f"{dataset}: default aspect_f1 > SVM aspect_f1",
                mean_of(default["aspect_f1"]),
                ">",
                mean_of(svm_row["aspect_f1"]),
                note,
            ),
        ]
    return targets


def runs_folder(quick: bool, extra: Sequence[str]) -> str:
    """`full`, `quick`, or with overrides e.g. `full_trainer_gpu`: their runs never mix."""
    mode = "quick" if quick else "full"
    return "_".join([mode, *(re.sub(r"[^A-Za-z0-9.]+", "_", o).strip("_") for o in extra)])


def chosen_rows(settings: DictConfig, names: Sequence[str] | None) -> None:
    """Keeps only the quality rows named (all when None), in bench.yaml's order."""
    if names is None:
        return
    unknown = set(names) - set(settings.quality.rows)
    if unknown or not names:
        known = list(settings.quality.rows)
        raise SystemExit(f"--rows: unknown {sorted(unknown)}; pick from {known}")
    settings.quality.rows = {r: s for r, s in settings.quality.rows.items() if r in names}


def execute_all(
    runs: Sequence[TrainingRun], code: dict[str, Any], reuse: bool, jobs: int
) -> list[RunOutcome]:
    """Each run's outcome, in the order of `runs`; `jobs` of them at once. The first failure
    cancels the runs not yet started and is raised once the started ones end."""

    def announced(training: TrainingRun) -> RunOutcome:  # hours-long runs: say which one is on
        print(f"started {training.dataset} {training.row} seed {training.seed}", flush=True)
        return execute(training, code, reuse)

    outcomes: dict[TrainingRun, RunOutcome] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(announced, training): training for training in runs}
        for i, future in enumerate(as_completed(futures), start=1):
            training = futures[future]
            try:
                outcome = future.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
            verb = "reused (same code and overrides)" if outcome.reused else "trained"
            print(
                f"[{i}/{len(runs)}] {training.dataset} {training.row} seed {training.seed}: "
                f"{verb}, {outcome.wall_seconds / 60:.1f} min ({training.run_dir})",
                flush=True,
            )
            outcomes[training] = outcome
    return [outcomes[training] for training in runs]


def run(
    datasets: Mapping[str, Sequence[str]],
    quick: bool,
    reuse: bool = False,
    row_names: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    jobs: int = 1,
) -> Section:
    settings = load_settings(quick)
    chosen_rows(settings, row_names)
    mode = runs_folder(quick, extra)
    runs = planned_runs(settings, datasets, mode, extra=extra)
    print(f"{len(runs)} training runs, {jobs} at a time, in {OUTPUT_ROOT / mode}", flush=True)
    outcomes: dict[tuple[str, str], list[RunOutcome]] = {}
    finished = execute_all(runs, code_version(), reuse, jobs)
    for training, outcome in zip(runs, finished, strict=True):
        outcomes.setdefault((training.dataset, training.row), []).append(outcome)

    rows = []
    for dataset in datasets:
        rows += [
            aggregate(dataset, row, spec.label, outcomes[dataset, row])
            for row, spec in rows_on(settings.quality.rows, dataset).items()
        ]
        published = settings.quality.published.get(dataset)
        if published is not None:
            rows.append(
                {
                    "dataset": dataset,
                    "row": "published",
                    "recipe": published.label,
                    "aspect_f1": published.aspect_f1,
                    "pair_f1": published.pair_f1,
                }
            )
    section = Section(
        title="Quality: neural recipes (test split, mean ± sample std over seeds)",
        columns=COLUMNS,
        rows=rows,
        notes=[
            "fit_min: trainer.fit (metrics.json fit_seconds); wall_min: the whole train.py "
            "process (start-up, fit, validation and test of the best checkpoint)",
            "epochs: epochs trained per seed (early stopping may end a run before max_epochs)",
            "published: quoted from the paper, not measured here; its sentiment F1 under pair_f1",
            f"runs in {OUTPUT_ROOT / mode}; reused: "
            f"{sum(o.reused for rows in outcomes.values() for o in rows)} of {len(runs)}",
        ]
        + ([f"every run also had: {' '.join(extra)}"] if extra else [])
        + ([f"{jobs} runs at a time: each one's times count the others' load"] if jobs > 1 else [])
        + ([QUICK_NOTE + f": {' '.join(settings.quality.extra_overrides)}"] if quick else []),
    )
    section.targets = recipe_targets(section, settings, quick)
    return section
