"""The sweep summary: from job folders written here, then from real multiruns (basic, Optuna)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import NO_DIAGNOSTICS, QUIET, REPO, TINY
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from absa_lightning.errors import AbsaUserError
from absa_lightning.summary import (
    ERROR_FILE,
    SweepSummary,
    draw_panel,
    main,
    read_job,
    summary_rows,
    write_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_job(
    sweep: Path, name: str, overrides: list[str], val: float | None = None, **extra: dict
) -> Path:
    """A job folder as Hydra and train.py leave it; no metrics.json when `val` is None."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra/overrides.yaml").write_text(yaml.safe_dump(overrides))
    if val is not None:
        metrics = {
            "best_val": {"val/pair_f1": val, "val/aspect_f1": val + 0.1},
            "test": {"test/pair_f1": val - 0.02, "test/aspect_f1": val + 0.08},
            "final_losses": {
                "train/focal_loss": 0.1,
                "train/contrastive_loss": 2.0,
                "val/focal_loss": 0.2,
                "val/contrastive_loss": 3.0,
            },
            **extra,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Five jobs of a 2-D sweep: three finished, one still running (or killed), one failed."""
    sweep = tmp_path / "sweep"

    def overrides(focal: float, contrastive: float) -> list[str]:
        return [
            f"loss.focal_weight={focal}",
            f"loss.contrastive_weight={contrastive}",
            "model=tiny",
        ]

    write_job(sweep, "0", overrides(0.7, 0.1), val=0.60)
    write_job(
        sweep,
        "1",
        overrides(0.9, 0.1),
        val=0.70,
        diagnosis={"regime": "classifier_overfits", "advice": "…", "override": ""},
        effective_weights={"focal_weight": 0.85, "contrastive_weight": 0.15},
    )
    write_job(sweep, "2", overrides(0.7, 0.3))
    failed = write_job(sweep, "10", overrides(0.9, 0.3))
    (failed / ERROR_FILE).write_text("Traceback (most recent call last):\nValueError: boom\n")
    write_job(sweep, "3", overrides(0.8, 0.3), val=0.65)
    (sweep / "multirun.yaml").write_text("{}")  # files beside the job folders are not jobs
    return sweep


def test_rows_best_first_with_failed_and_missing_jobs_last(sweep: Path) -> None:
    rows = write_summary(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [
        ("1", "ok"),
        ("3", "ok"),
        ("0", "ok"),
        ("2", "missing"),
        ("10", "failed"),  # job order: 2 before 10
    ]
    best = rows[0]
    assert best["loss.focal_weight"] == "0.9"
    assert best["loss.contrastive_weight"] == "0.1"
    assert "model" not in best  # the same in every job: not swept
    assert best["val/pair_f1"] == 0.70
    assert best["test/pair_f1"] == pytest.approx(0.68)
    assert best["final val/contrastive_loss"] == 3.0
    assert best["effective focal_weight"] == 0.85
    assert best["regime"] == "classifier_overfits"
    # metrics.json without the diagnosis or the effective weights: empty cells
    assert rows[1]["regime"] == ""
    assert rows[1]["effective contrastive_weight"] is None
    assert rows[3]["val/pair_f1"] is None
    assert rows[4]["error"] == "ValueError: boom"


def test_csv_md_and_png_written_into_the_sweep_folder(sweep: Path) -> None:
    write_summary(sweep)
    with open(sweep / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["job"] for r in table] == ["1", "3", "0", "2", "10"]
    assert float(table[0]["val/pair_f1"]) == 0.70
    assert table[3]["val/pair_f1"] == ""
    assert table[0]["regime"] == "classifier_overfits"

    md = (sweep / "summary.md").read_text()
    assert "5 jobs (1 failed, 1 missing, 3 ok)" in md
    assert "| job | status | loss.focal_weight | loss.contrastive_weight | val/pair_f1 |" in md
    assert "| 1 | ok | 0.9 | 0.1 | 0.7000 | 0.8000 | 0.6800 |" in md
    assert "Best: job 1, `val/pair_f1` 0.7000" in md
    assert "python train.py loss.focal_weight=0.9 loss.contrastive_weight=0.1 model=tiny\n" in md
    assert "![pair F1 against each swept key](summary.png)" in md
    assert (sweep / "summary.png").read_bytes().startswith(PNG_MAGIC)


def test_grid_panels_draw_a_line_per_value_of_the_other_key() -> None:
    def row(focal: str, contrastive: str, val: float) -> dict:
        keys = {"loss.focal_weight": focal, "loss.contrastive_weight": contrastive}
        return {**keys, "val/pair_f1": val, "test/pair_f1": val - 0.01}

    keys = ["loss.focal_weight", "loss.contrastive_weight"]
    grid = [row(f, c, 0.5) for f in ("0.7", "0.9") for c in ("0.1", "0.2", "0.3")]
    ax = Figure().subplots()
    draw_panel(ax, grid, "loss.focal_weight", keys)
    # 3 values of contrastive_weight x (val, test): 6 lines of 2 points
    assert [len(line.get_xdata()) for line in ax.lines] == [2] * 6
    assert [line.get_label() for line in ax.lines[:3]] == [
        f"loss.contrastive_weight={c}" for c in ("0.1", "0.2", "0.3")
    ]

    random_search = [row(str(0.5 + i / 10), str(i / 10), 0.5) for i in range(4)]
    ax = Figure().subplots()
    draw_panel(ax, random_search, "loss.focal_weight", keys)
    assert [len(line.get_xdata()) for line in ax.lines] == [4, 4]  # val, test: points
    assert all(line.get_linestyle() == "None" for line in ax.lines)


def test_sweep_of_a_non_numeric_key_has_no_plot(tmp_path: Path) -> None:
    (tmp_path / "summary.png").write_bytes(PNG_MAGIC)  # from an earlier summary
    write_job(tmp_path, "0", ["model=tiny"], val=0.5)
    write_job(tmp_path, "1", ["model=small"], val=0.6)
    rows = write_summary(tmp_path)
    assert [r["model"] for r in rows] == ["small", "tiny"]
    assert not (tmp_path / "summary.png").exists()
    assert "summary.png" not in (tmp_path / "summary.md").read_text()


def test_unreadable_metrics_json_is_a_failed_job(tmp_path: Path) -> None:
    folder = write_job(tmp_path, "0", ["loss.focal_weight=0.7"])
    (folder / "metrics.json").write_text('{"test": {')  # killed while writing
    job = read_job(folder)
    assert job.status == "failed"
    assert job.error.startswith("metrics.json: Expecting")
    rows = summary_rows([job], ["loss.focal_weight"])
    assert rows[0]["loss.focal_weight"] == "0.7"


def test_bad_sweep_folders_are_refused_with_their_path(tmp_path: Path) -> None:
    with pytest.raises(AbsaUserError, match=f"sweep folder {tmp_path / 'nope'} does not"):
        write_summary(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    (tmp_path / "run/metrics.json").write_text("{}")  # a single run's folder, not a sweep's
    with pytest.raises(ValueError, match="no job folders"):
        write_summary(tmp_path)
    folder = write_job(tmp_path, "0", [])
    (folder / ".hydra/overrides.yaml").write_text("loss.focal_weight: 0.7\n")
    with pytest.raises(ValueError, match=r"0/\.hydra/overrides\.yaml: expected a list"):
        write_summary(tmp_path)


def test_failed_job_leaves_its_traceback_in_multirun_only(tmp_path: Path) -> None:
    def config(mode: RunMode, folder: Path):
        return OmegaConf.create({"hydra": {"mode": mode, "runtime": {"output_dir": str(folder)}}})

    failed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("boom"))
    for mode in RunMode:
        (tmp_path / mode.name).mkdir()
        SweepSummary().on_job_end(config(mode, tmp_path / mode.name), job_return=failed)
    assert not (tmp_path / "RUN" / ERROR_FILE).exists()
    assert (tmp_path / "MULTIRUN" / ERROR_FILE).read_text().endswith("ValueError: boom\n")
    done = JobReturn(status=JobStatus.COMPLETED, _return_value=0.5)
    (tmp_path / "ok").mkdir()
    SweepSummary().on_job_end(config(RunMode.MULTIRUN, tmp_path / "ok"), job_return=done)
    assert not (tmp_path / "ok" / ERROR_FILE).exists()


@pytest.mark.slow  # a fresh interpreter imports the package: lightning, torch
def test_cli_writes_the_summary(sweep: Path) -> None:
    entry_point = 'absa-summary = "absa_lightning.summary:main"'
    assert entry_point in (REPO / "pyproject.toml").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "absa_lightning.summary", str(sweep)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "best: job 1: python train.py loss.focal_weight=0.9" in result.stdout
    assert "job 10 failed: ValueError: boom" in result.stdout
    assert (sweep / "summary.csv").is_file()


def test_cli_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert f"absa-summary: error: sweep folder {tmp_path / 'nope'} does not exist" in (
        capsys.readouterr().err
    )


def multirun(*overrides: str) -> None:
    """`python train.py -m <overrides>` on the tiny model, one batch a job."""
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", *TINY, *QUIET, *NO_DIAGNOSTICS, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def summary_table(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_optuna_search_over_the_loss_weights_ends_with_the_summary(
    small_visfd: Path, tmp_path: Path
) -> None:
    """`python train.py -m hparams_search=loss_weights`: each trial its folder and metrics, the
    sweep's summary best first. (The basic sweeper's summary: test_distributed's submitit run.)"""
    multirun(
        "hparams_search=loss_weights",
        "hydra.sweeper.n_trials=2",
        f"data.root={small_visfd}",
        "debug=fdr",
        f"hydra.sweep.dir={tmp_path}",
    )
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    jobs = sorted(tmp_path.glob("*/metrics.json"))  # each job its folder and metrics
    trials = {json.loads(p.read_text())["config"]["loss"]["focal_weight"] for p in jobs}
    table = summary_table(tmp_path)
    assert len(table) == 2 == len(jobs)
    assert {float(row["loss.focal_weight"]) for row in table} == trials
    for row in table:
        assert row["status"] == "ok" and row["val/pair_f1"]
        assert 0.5 <= float(row["loss.focal_weight"]) <= 1.0
        assert 0.0 <= float(row["loss.contrastive_weight"]) <= 0.5
    assert float(table[0]["val/pair_f1"]) >= float(table[1]["val/pair_f1"])
    # Optuna's best trial is the summary's best row: both maximise val/pair_f1
    assert results["best_value"] == pytest.approx(float(table[0]["val/pair_f1"]))
    assert "Best: job" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").read_bytes().startswith(PNG_MAGIC)
