"""absa-advise: a run's reading, its evidence and the override to run; --check runs it.

    absa-advise outputs/runs/2026-11-30_03-00-00
    absa-advise outputs/runs/2026-11-30_03-00-00 --check

The reading is made again from the run folder's `loss_dynamics.csv` with this version's
`absa_lightning.diagnostics.read` and the run's own `diagnostics.*` (`.hydra/config.yaml`), so
older runs get the current reading. `--check` trains the same recipe and seed (the run's
`.hydra/overrides.yaml`) with the override added, in a new run folder, and reports the change in
best validation pair F1; test pair F1 is shown too, labelled: the advice is judged on
validation.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from absa_lightning import diagnostics


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


@dataclass
class RunReading:
    run_dir: Path
    reading: diagnostics.Reading
    epochs: int
    best_val_pair_f1: float | None
    test_pair_f1: float | None


def _config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None  # type: ignore[return-value]


def _epochs_given(rows: list[dict[str, str]], run_dir: Path) -> int:
    """The epochs the run was given (its config may hold null: `training_length`): the
    callback's `max_epochs` column, else the resolved config in metrics.json, else the epochs
    recorded so far (a run from before the column, unfinished)."""
    recorded = rows[-1].get("max_epochs")
    if recorded:
        return int(float(recorded))
    path = run_dir / "metrics.json"
    if path.is_file():
        trainer = json.loads(path.read_text(encoding="utf-8")).get("config", {}).get("trainer", {})
        if trainer.get("max_epochs") is not None:
            return int(trainer["max_epochs"])
    return len(rows)


def _scores(run_dir: Path) -> tuple[float | None, float | None]:
    """Best val pair F1 (the best checkpoint's validation) and its test pair F1."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None, None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return (
        metrics.get("best_val", {}).get("val/pair_f1"),
        metrics.get("test", {}).get("test/pair_f1"),
    )


def read_run(run_dir: str | Path) -> RunReading:
    """The run folder's reading, made again from its `loss_dynamics.csv` and config."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder (give the folder train.py wrote)")
    table = run_dir / "loss_dynamics.csv"
    if not table.is_file():
        raise UserError(
            f"{table}: not found; the run had no loss_dynamics callback "
            "(keep callbacks.loss_dynamics) or trained no epoch"
        )
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{table}: no epochs recorded yet")
    cfg = _config(run_dir)
    recipe, thresholds = diagnostics.Recipe(), diagnostics.Thresholds()
    if cfg is not None:
        step = cfg.get("callbacks", {}).get("loss_dynamics", {}) or {}
        recipe = diagnostics.Recipe.from_config(
            cfg, step.get("suggestion_step", 0.1), _epochs_given(rows, run_dir)
        )
        try:
            thresholds = diagnostics.Thresholds(**(cfg.get("diagnostics") or {}))
        except (TypeError, ValueError) as e:
            raise UserError(f"{run_dir / '.hydra/config.yaml'}: diagnostics: {e}") from None
    reading = diagnostics.read_history(rows, recipe, thresholds)
    return RunReading(run_dir, reading, len(rows), *_scores(run_dir))


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def check_overrides(run_dir: Path, override: str) -> tuple[list[str], Path]:
    """The run's overrides with `override` in place of any of the same keys, and its cwd."""
    cfg = _config(run_dir)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if cfg is None or not overrides_file.is_file():
        raise UserError(f"{run_dir / '.hydra'}: config.yaml/overrides.yaml not found: cannot rerun")
    original = [str(o) for o in OmegaConf.load(overrides_file)]
    advised = override.split()
    replaced = {_key(o) for o in advised}
    kept = [o for o in original if _key(o) not in replaced | {"seed"}]
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    cwd = Path.cwd()
    if hydra_file.is_file():
        cwd = Path(OmegaConf.load(hydra_file).hydra.runtime.cwd)
    return [*kept, f"seed={cfg['seed']}", *advised], cwd


def check(run: RunReading, out: Path | None = None, timeout: float | None = None) -> dict:
    """Train the run's recipe and seed with its override in a new folder; the F1 changes."""
    if not run.reading.override:
        raise UserError(f"{run.run_dir}: the reading ({run.reading.regime}) has no override")
    if run.best_val_pair_f1 is None:
        raise UserError(f"{run.run_dir / 'metrics.json'}: not found: the run did not finish")
    out = Path(out) if out else run.run_dir.with_name(run.run_dir.name + "-advice")
    if out.exists():
        raise UserError(f"{out}: already exists; give another folder with --out")
    overrides, cwd = check_overrides(run.run_dir, run.reading.override)
    command = [
        sys.executable,
        "-m",
        "absa_lightning.train",
        *overrides,
        f"hydra.run.dir={out.resolve()}",
    ]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"the check run in {out} failed: {tail[0]}")
    val, test = _scores(out)
    result = {
        "run_dir": str(run.run_dir),
        "check_dir": str(out),
        "regime": run.reading.regime,
        "override": run.reading.override,
        "val_pair_f1_before": run.best_val_pair_f1,
        "val_pair_f1_after": val,
        "val_pair_f1_change": None if val is None else val - run.best_val_pair_f1,
        "test_pair_f1_before": run.test_pair_f1,
        "test_pair_f1_after": test,
        "test_pair_f1_change": None
        if test is None or run.test_pair_f1 is None
        else test - run.test_pair_f1,
    }
    partial = out / "advice_check.json.partial"
    partial.write_text(json.dumps(result, indent=2), encoding="utf-8")
    partial.replace(out / "advice_check.json")
    return result


def describe(run: RunReading) -> str:
    reading = run.reading
    lines = [
        f"run:      {run.run_dir} ({run.epochs} epochs)",
        f"reading:  {reading.regime.replace('_', ' ')} ({diagnostics.held_words(reading.held)}): "
        f"{reading.advice}",
        f"evidence: {reading.evidence_line() or '-'}",
        f"override: {reading.override or '(none: keep the recipe)'}",
    ]
    if run.best_val_pair_f1 is not None:
        lines.append(f"best val pair F1: {run.best_val_pair_f1:.4f}")
    return "\n".join(lines)


def describe_check(result: dict) -> str:
    def fmt(before, after, change):
        if after is None or before is None:
            return "n/a"
        return f"{before:.4f} -> {after:.4f} ({change:+.4f})"

    return "\n".join(
        [
            f"check run: {result['check_dir']}",
            "best val pair F1: "
            + fmt(
                result["val_pair_f1_before"],
                result["val_pair_f1_after"],
                result["val_pair_f1_change"],
            ),
            "test pair F1 (for information; the advice is judged on val): "
            + fmt(
                result["test_pair_f1_before"],
                result["test_pair_f1_after"],
                result["test_pair_f1_change"],
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="absa-advise", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder written by train.py")
    parser.add_argument(
        "--check", action="store_true", help="rerun the recipe and seed with the override"
    )
    parser.add_argument("--out", type=Path, help="the check run's folder (default: RUN_DIR-advice)")
    args = parser.parse_args(argv)
    try:
        run = read_run(args.run_dir)
        print(describe(run))
        if args.check:
            result = check(run, args.out)
            print(describe_check(result))
    except UserError as e:
        print(f"absa-advise: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"absa-advise: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
