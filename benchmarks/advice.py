"""The advice benchmark: deliberately varied short runs, each read and its advice checked.

    python -m benchmarks.advice [--only ROW ...] [--datasets visfd mams] [--reuse]

For every dataset of benchmarks/advice.yaml whose `conf/data/<data>.yaml` exists and every row:
train the row's recipe (common + dataset + row overrides), read it with `absa-advise`, and when
the reading has an override, run `absa-advise --check` (same recipe and seed, override added).
Reports, per run, the reading, its evidence, the override and the change in best val pair F1
(test too, labelled), then the share of advice that raised val pair F1 and the share of rows
with a constructed problem whose reading named it, against their targets (with the margins);
the thresholds used are the run's `diagnostics.*`. Then, per dataset, `loss/balancer=rule`
against static weights on one recipe and seed (`balancers` in advice.yaml). A dataset's files
are found as train.py finds them (`data.root`, e.g. $ABSA_DATA_DIR, $ABSA_MAMS_DIR). Runs are
sequential (2 cores) under outputs/bench-advice/; with `--reuse`, a run folder holding a
metrics.json is read instead of trained again. Writes benchmarks/results/advice.md and .json.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from absa_lightning import advise, diagnostics
from benchmarks.results import REPO, Section, Target, environment, write_results

SETTINGS = Path(__file__).with_name("advice.yaml")
OUTPUT_ROOT = REPO / "outputs" / "bench-advice"
COLUMNS = [
    "dataset",
    "row",
    "problem",
    "reading",
    "named",
    "evidence",
    "override",
    "val_before",
    "val_after",
    "val_change",
    "test_change",
    "minutes",
]


def merged(*groups: Sequence[str]) -> list[str]:
    """Overrides in order, a later one replacing an earlier one of the same key."""
    by_key: dict[str, str] = {}
    for override in (o for group in groups for o in group):
        key = advise._key(override)
        if key in by_key and override.startswith("+") and not by_key[key].startswith("~"):
            by_key.pop(key)
        by_key[key] = override
    return list(by_key.values())


def train_run(overrides: list[str], run_dir: Path, reuse: bool) -> float:
    """Train into `run_dir` (emptied first unless reused); the minutes it took."""
    if reuse and (run_dir / "metrics.json").is_file():
        print(f"  reusing {run_dir}", flush=True)
        return 0.0
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    command = [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:]
        raise RuntimeError(f"{run_dir}: train.py failed: {tail}")
    return (time.perf_counter() - started) / 60


def named(regime: str, row: Any) -> bool | None:
    """Whether the reading names the row's constructed problem; None: no problem constructed."""
    expect, avoid = list(row.get("expect") or []), list(row.get("avoid") or [])
    if not expect and not avoid:
        return None
    return (not expect or regime in expect) and regime not in avoid


def run_row(dataset: str, name: str, row: Any, settings: Any, reuse: bool) -> dict[str, Any]:
    folder = OUTPUT_ROOT / dataset / name
    data = settings.datasets[dataset]
    overrides = merged(
        settings.common_overrides,
        [f"data={data.data}", *data.overrides],
        row.overrides,
        [f"seed={settings.seed}"],
    )
    minutes = train_run(overrides, folder / "run", reuse)
    run = advise.read_run(folder / "run")
    print(advise.describe(run), flush=True)
    result: dict[str, Any] = {
        "dataset": dataset,
        "row": name,
        "problem": row.label,
        "reading": run.reading.regime,
        "named": named(run.reading.regime, row),
        "evidence": run.reading.evidence_line(),
        "override": run.reading.override,
        "val_before": run.best_val_pair_f1,
    }
    if run.reading.override:
        check_dir = folder / "check"
        if not (reuse and _checked(check_dir, run.reading.override)):
            shutil.rmtree(check_dir, ignore_errors=True)
            started = time.perf_counter()
            checked = advise.check(run, check_dir)
            minutes += (time.perf_counter() - started) / 60
        else:
            print(f"  reusing {check_dir}", flush=True)
            checked = _reused_check(run, check_dir)
        print(advise.describe_check(checked), flush=True)
        result.update(
            val_after=checked["val_pair_f1_after"],
            val_change=checked["val_pair_f1_change"],
            test_change=checked["test_pair_f1_change"],
        )
    result["minutes"] = round(minutes, 1)
    return result


def _checked(check_dir: Path, override: str) -> bool:
    """Whether a finished check run in `check_dir` ran `override`."""
    overrides = check_dir / ".hydra" / "overrides.yaml"
    if not (check_dir / "metrics.json").is_file() or not overrides.is_file():
        return False
    ran = {str(o) for o in OmegaConf.load(overrides)}
    return all(o in ran for o in override.split())


def _reused_check(run: advise.RunReading, check_dir: Path) -> dict[str, Any]:
    val, test = advise._scores(check_dir)
    return {
        "check_dir": str(check_dir),
        "val_pair_f1_before": run.best_val_pair_f1,
        "val_pair_f1_after": val,
        "val_pair_f1_change": val - run.best_val_pair_f1,
        "test_pair_f1_before": run.test_pair_f1,
        "test_pair_f1_after": test,
        "test_pair_f1_change": None if test is None else test - run.test_pair_f1,
    }


def summarise(results: list[dict[str, Any]], settings: Any) -> Section:
    checked = [r for r in results if r.get("val_change") is not None]
    advice_targets = advice_shares(results, settings)
    thresholds = diagnostics.Thresholds()
    return Section(
        title="Advice checked: each run's reading, its override, and what the override did",
        columns=COLUMNS,
        rows=results,
        targets=advice_targets,
        notes=[
            "val_change: best val pair F1 of the check run (same recipe and seed, override "
            "added) minus the run's; test_change: the same on test, for information.",
            f"thresholds (diagnostics.*): {thresholds}",
            "every run: " + " ".join(settings.common_overrides) + f", seed {settings.seed}, "
            "plus the row's overrides (benchmarks/advice.yaml); timings on a shared 2-core "
            "machine.",
        ],
        measurements={"checked": len(checked)},
    )


def advice_shares(results: list[dict[str, Any]], settings: Any) -> list[Target]:
    """The two targets: advice that raised val pair F1, constructed problems named."""
    checked = [r for r in results if r.get("val_change") is not None]
    judged = [r for r in results if r.get("named") is not None]
    shares = [
        (
            "advice that raised best val pair F1",
            sum(r["val_change"] > 0 for r in checked),
            len(checked),
            "overrides",
            settings.targets.advice_raised_val_f1,
        ),
        (
            "constructed problem named by the reading",
            sum(bool(r["named"]) for r in judged),
            len(judged),
            "rows",
            settings.targets.problem_named,
        ),
    ]
    return [
        Target(name, round(hits / total, 3), ">=", needed, f"{hits} of {total} {unit}")
        for name, hits, total, unit, needed in shares
        if total
    ]


BALANCER_COLUMNS = [
    "dataset",
    "balancer",
    "best_val_pair_f1",
    "test_pair_f1",
    "final_weights",
    "weight_changes",
    "last_reading",
    "minutes",
]


def run_balancer(dataset: str, balancer: str, settings: Any, reuse: bool) -> dict[str, Any]:
    """One run of the comparison recipe with `loss/balancer=<balancer>`."""
    data, recipe = settings.datasets[dataset], settings.balancers
    overrides = merged(
        settings.common_overrides,
        [f"data={data.data}", *data.overrides],
        recipe.overrides,
        [f"loss/balancer={balancer}", f"seed={settings.seed}"],
    )
    folder = OUTPUT_ROOT / dataset / f"balancer_{balancer}"
    same = [n for n, r in settings.rows.items() if list(r.overrides) == list(recipe.overrides)]
    if balancer == "static" and same and (OUTPUT_ROOT / dataset / same[0] / "run").is_dir():
        folder, reuse = OUTPUT_ROOT / dataset / same[0] / "run", True  # static is the default
    minutes = train_run(overrides, folder, reuse)
    val, test = advise._scores(folder)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    weights = metrics.get("effective_weights", {})
    with open(folder / "loss_dynamics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    used = [(r["focal_weight"], r["contrastive_weight"]) for r in rows]
    changes = sum(a != b for a, b in itertools.pairwise(used))
    return {
        "dataset": dataset,
        "balancer": balancer,
        "best_val_pair_f1": val,
        "test_pair_f1": test,
        "final_weights": f"{weights.get('focal_weight')} / {weights.get('contrastive_weight')}",
        "weight_changes": changes,
        "last_reading": rows[-1]["regime"] if rows else "",
        "minutes": round(minutes, 1),
    }


def compare_balancers(datasets: Sequence[str], settings: Any, reuse: bool) -> list[dict]:
    """The comparison's runs on `datasets`, one row each (static, then rule)."""
    results = []
    for dataset in datasets:
        for balancer in settings.balancers.choices:
            print(f"== {dataset} / loss/balancer={balancer}", flush=True)
            try:
                results.append(run_balancer(dataset, balancer, settings, reuse))
            except Exception as e:  # a failed run is a row of the report, not the end of it
                print(f"  failed: {e}", flush=True)
                results.append({"dataset": dataset, "balancer": balancer, "last_reading": str(e)})
    return results


def balancer_section(results: list[dict], settings: Any) -> Section:
    return Section(
        title="loss/balancer=rule against static weights (same recipe and seed)",
        columns=BALANCER_COLUMNS,
        rows=results,
        notes=[
            "recipe: every run's overrides"
            + (
                " plus " + " ".join(settings.balancers.overrides)
                if settings.balancers.overrides
                else ""
            ),
            "weight_changes: epochs after which the rule moved weight (loss_dynamics.csv); the "
            "rule acts on a lag regime held diagnostics.patience epochs, then waits `window`.",
        ],
    )


def available(settings: Any, only: Sequence[str] | None) -> list[str]:
    names = [d for d in settings.datasets if not only or d in only]
    present = [
        d for d in names if (REPO / "conf" / "data" / f"{settings.datasets[d].data}.yaml").is_file()
    ]
    for d in sorted(set(names) - set(present)):
        print(f"dataset {d}: conf/data/{settings.datasets[d].data}.yaml not here yet, skipped")
    return present


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.advice", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="rows to run (default: all)")
    parser.add_argument("--datasets", nargs="*", help="datasets to run (default: all present)")
    parser.add_argument("--reuse", action="store_true", help="read finished run folders")
    parser.add_argument("--name", default="advice", help="results file name (benchmarks/results)")
    args = parser.parse_args(argv)
    settings = OmegaConf.load(SETTINGS)
    os.environ["OMP_NUM_THREADS"] = str(settings.threads)  # the runs' and the checks' threads
    started = time.perf_counter()
    env = environment([settings.seed], quick=False)
    env["mode"] = "advice"
    results: list[dict[str, Any]] = []
    balancers: list[dict[str, Any]] = []

    def sections() -> list[Section]:
        compared = [balancer_section(balancers, settings)] if balancers else []
        return [summarise(results, settings), *compared]

    datasets = available(settings, args.datasets)
    # Row by row over the datasets, the results rewritten after each run: a benchmark cut
    # short still reports the same rows on every dataset.
    for name, row in settings.rows.items():
        if args.only and name not in args.only:
            continue
        for dataset in datasets:
            print(f"== {dataset} / {name}: {row.label}", flush=True)
            try:
                results.append(run_row(dataset, name, row, settings, args.reuse))
            except (RuntimeError, advise.UserError) as e:
                print(f"  failed: {e}", flush=True)
                results.append(
                    {
                        "dataset": dataset,
                        "row": name,
                        "problem": row.label,
                        "reading": f"failed: {e}",
                    }
                )
            if list(row.overrides) == list(settings.balancers.overrides):
                balancers.extend(compare_balancers([dataset], settings, args.reuse))
            write_results(sections(), env, time.perf_counter() - started, args.name)
    section = sections()[0]
    md_path, _ = write_results(sections(), env, time.perf_counter() - started, args.name)
    print(md_path.read_text(encoding="utf-8"))
    for target in section.targets:
        verdict = "PASS" if target.passed else "FAIL"
        print(
            f"{target.name}: {target.value} {target.comparison} {target.target} ({verdict}; "
            f"{target.note})"
        )


if __name__ == "__main__":
    main()
