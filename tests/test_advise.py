"""absa-advise on run folders, its --check, and real short runs built to show each regime."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUIET, REPO, TINY, compose_train, write_synthetic_visfd
from omegaconf import OmegaConf

from absa_lightning import advise
from absa_lightning import diagnostics as dx
from absa_lightning.callbacks import DYNAMICS_COLUMNS

# A learning rate at which the tiny model learns the synthetic comments within a few epochs;
# with the prior bias (tiny turns it off), it starts from the class frequencies.
LR = ["optimizer.lr=1e-2", "model.encoder_lr=1e-2"]
LEARNS = [*LR, "model.head.prior_bias_init=true"]


def write_run(folder: Path, rows: list[dict], overrides: list[str]) -> Path:
    """A run folder as train.py leaves it: .hydra/ and loss_dynamics.csv (no training)."""
    (folder / ".hydra").mkdir(parents=True)
    cfg = compose_train(overrides, folder)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    with open(folder / "loss_dynamics.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=DYNAMICS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder


def rising_f1_rows(epochs: int = 4) -> list[dict]:
    return [
        {
            "epoch": t,
            "focal": 0.5 * 0.9**t,
            "contrastive_norm": 0.99 * 0.97**t,
            "val_focal": 0.45 * 0.95**t,
            "val_contrastive_norm": 0.99,
            "val_pair_f1": 0.2 + 0.05 * t,
            "focal_weight": 0.8,
            "contrastive_weight": 0.2,
            "collapsed": "",
            "aspects_with_gold": 9,
        }
        for t in range(epochs)
    ]


def test_advise_prints_the_reading_evidence_and_override(tmp_path, capsys):
    run = write_run(tmp_path / "run", rising_f1_rows(), ["trainer.max_epochs=4", "seed=7"])
    assert advise.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "reading:  under training" in out
    assert "val_pair_f1_slope=+0.0500" in out
    assert "override: trainer.max_epochs=8" in out


def test_a_default_run_whose_config_leaves_max_epochs_null_is_read(tmp_path, capsys):
    """The default recipe's trainer.max_epochs is null (model.training_length sets it when training
    starts): the epochs given come from loss_dynamics.csv, else from metrics.json's config."""
    rows = [{**row, "max_epochs": 5} for row in rising_f1_rows()]
    run = write_run(tmp_path / "run", rows, ["seed=7"])
    assert OmegaConf.load(run / ".hydra" / "config.yaml").trainer.max_epochs is None
    assert advise.main([str(run)]) == 0
    assert "override: trainer.max_epochs=10" in capsys.readouterr().out

    older = write_run(tmp_path / "older", rising_f1_rows(), ["seed=7"])  # no max_epochs column
    (older / "metrics.json").write_text(json.dumps({"config": {"trainer": {"max_epochs": 6}}}))
    assert advise.read_run(older).reading.override == "trainer.max_epochs=12"


def test_check_replaces_the_advised_keys_and_keeps_the_seed(tmp_path):
    run = write_run(tmp_path / "run", rising_f1_rows(), [*TINY, "trainer.max_epochs=4", "seed=7"])
    overrides, _ = advise.check_overrides(run, "trainer.max_epochs=8")
    assert overrides == ["model=tiny", "seed=7", "trainer.max_epochs=8"]


@pytest.mark.parametrize("what", ["no folder", "no csv"])
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, what):
    folder = tmp_path / "run"
    if what == "no csv":
        folder.mkdir()
    assert advise.main([str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("absa-advise: ") and "\n" not in err
    assert str(folder) in err


def train_cli(run_dir: Path, data: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(REPO / "train.py"),
        *TINY,
        *QUIET,
        f"data.root={data}",
        "~callbacks.embedding_space",
        "~callbacks.early_stopping",
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_check_reruns_the_recipe_with_the_override(small_visfd, tmp_path):
    """A tiny run at the default lr predicts no aspect (collapse); --check runs the advice."""
    run_dir = tmp_path / "run"
    train_cli(run_dir, small_visfd, "trainer.max_epochs=3", "seed=3")
    result = subprocess.run(
        [sys.executable, "-m", "absa_lightning.advise", str(run_dir), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    check_dir = tmp_path / "run-advice"
    checked = json.loads((check_dir / "advice_check.json").read_text())
    reading = advise.read_run(run_dir).reading
    assert checked["override"] == reading.override != ""
    overrides = OmegaConf.load(check_dir / ".hydra" / "overrides.yaml")
    assert "seed=3" in overrides and all(o in overrides for o in reading.override.split())
    before = json.loads((run_dir / "metrics.json").read_text())["best_val"]["val/pair_f1"]
    after = json.loads((check_dir / "metrics.json").read_text())["best_val"]["val/pair_f1"]
    assert checked["val_pair_f1_change"] == pytest.approx(after - before)
    assert "best val pair F1:" in result.stdout and "test pair F1 (for information" in result.stdout


# Real short runs built to show each regime: the tiny model on synthetic comments (seconds a
# run), read by the LossDynamics callback as the run went (loss_dynamics.csv, made with the
# run's own recipe). `learnable` has 640 training comments (20 batches an epoch, enough for the
# tiny model to start learning by epoch 3); `few` has 128, of which over-fitting trains on 16.
#
# What a short real run cannot show, and how these are built instead:
# - "healthy" at the end of a run: while both losses fall, a short run's val pair F1 still
#   rises, and under-training is read first (more epochs is the change to make). The run
#   asserts both falling (the evidence's slopes) with the reading healthy or under-training.
# - the lag regimes appear once val F1 stops rising each epoch, between under-training epochs,
#   and over-fitting while the memorised 16 comments still move val loss up; these are asserted
#   as read and held `diagnostics.patience` epochs mid-run (what loss/balancer=rule acts on),
#   not as the last epoch's reading (by then val focal rose < 2% an epoch: read as stalled).
# - contrastive lags: a contrastive temperature of 10 keeps its loss at its chance level
#   (similarities / 10 are all near 0) while focal falls; weight 0.01 did not (the loss still
#   fell 6% an epoch as the features improved).
# - focal lags: focal weight 0.05 with contrastive 1.0; inverse-frequency alpha, or the starved
#   heads collapse first (collapse is read before the curves).
REAL = {
    # name: (data, overrides, the regime read at the end of the run)
    "collapse: the default learning rate, 4 epochs of 4 batches": (
        "small",
        ["trainer.max_epochs=4"],
        {dx.COLLAPSE},
    ),
    "stalled: learning rate far too high": (
        "small",
        ["trainer.max_epochs=4", "optimizer.lr=3.0", "model.encoder_lr=3.0"],
        {dx.STALLED, dx.COLLAPSE},
    ),
    "stalled: learning rate far too low": (
        "small",
        ["trainer.max_epochs=4", "optimizer.lr=1e-5", "model.encoder_lr=1e-5"],
        {dx.STALLED},
    ),
    "under-training: 6 epochs, still learning": (
        "learnable",
        [*LEARNS, "trainer.max_epochs=6", "loss.focal_weight=0.95", "loss.contrastive_weight=0.05"],
        {dx.UNDER_TRAINING},
    ),
}
# Read mid-run and held `diagnostics.patience` epochs (what loss/balancer=rule acts on): data,
# overrides, regime.
HELD = {
    "over-fitting: 16 comments memorised": (
        "few",
        [
            *LR,
            "loss.focal.alpha=inverse_frequency",
            "data.train_subset=16",
            "trainer.max_epochs=12",
        ],
        dx.OVER_FITTING,
    ),
    "contrastive lags: temperature 10": (
        "learnable",
        [*LEARNS, "loss.contrastive.temperature=10", "trainer.max_epochs=12"],
        dx.CONTRASTIVE_LAGS,
    ),
    "focal lags: focal weight 0.05": (
        "learnable",
        [
            *LR,
            "loss.focal.alpha=inverse_frequency",
            "loss.focal_weight=0.05",
            "loss.contrastive_weight=1.0",
            "trainer.max_epochs=9",
        ],
        dx.FOCAL_LAGS,
    ),
}


@pytest.fixture(scope="module")
def synthetic(small_visfd, tmp_path_factory) -> dict[str, Path]:
    sizes = {"learnable": 640, "few": 128}
    folders = {
        name: write_synthetic_visfd(
            tmp_path_factory.mktemp(name), {"Train.csv": n, "Dev.csv": 96, "Test.csv": 48}
        )
        for name, n in sizes.items()
    }
    return {"small": small_visfd, **folders}


def run_rows(folder: Path, data: Path, *overrides: str) -> list[dict]:
    """Train in this process; the LossDynamics rows (its reading after every epoch)."""
    from absa_lightning.train import train

    cfg = compose_train(
        [
            *TINY,
            *QUIET,
            f"data.root={data}",
            "~callbacks.embedding_space",
            "~callbacks.early_stopping",
            "tune_thresholds=false",
            # the regimes were built with the small model's warm-up and focal loss at gamma 2
            "scheduler.warmup_ratio=0.1",
            "loss.focal.gamma=2",
            *overrides,
        ],
        folder,
    )
    train(cfg)
    with open(folder / "loss_dynamics.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def regimes(rows: list[dict]) -> str:
    return " ".join(f"{r['regime']}({r['held']})" for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("case", REAL)
def test_a_real_run_built_for_a_regime_reads_as_it(synthetic, tmp_path, case):
    data, overrides, expected = REAL[case]
    rows = run_rows(tmp_path, synthetic[data], *overrides)
    last = rows[-1]
    assert last["regime"] in expected, regimes(rows) + " | " + last["evidence"]
    if "too high" in case:  # a loss jumped: the advice lowers the learning rate tenfold
        assert "loss_jumped=True" in last["evidence"]
        assert last["override"] == "optimizer.lr=0.3 model.encoder_lr=0.3"
    if "too low" in case:  # nothing jumped: the advice raises it
        assert last["override"] == "optimizer.lr=3e-05 model.encoder_lr=3e-05"


@pytest.mark.slow
def test_a_real_run_whose_losses_both_fall_is_healthy_or_still_learning(synthetic, tmp_path):
    """Both fall; a short run's val F1 still rises, so under-training may come first."""
    rows = run_rows(
        tmp_path,
        synthetic["learnable"],
        *LEARNS,
        "trainer.max_epochs=10",
        "loss.focal_weight=0.95",
        "loss.contrastive_weight=0.05",
    )
    last = rows[-1]
    assert last["regime"] in (dx.HEALTHY, dx.UNDER_TRAINING), regimes(rows)
    evidence = dict(item.split("=", 1) for item in last["evidence"].split())
    assert float(evidence["focal_slope"]) < -0.02 and float(evidence["contrastive_slope"]) < -0.02
    assert not {r["regime"] for r in rows[-3:]} & {dx.STALLED, dx.COLLAPSE, dx.OVER_FITTING}


@pytest.mark.slow
@pytest.mark.parametrize("case", HELD)
def test_a_real_run_built_for_a_regime_reads_it_for_patience_epochs(synthetic, tmp_path, case):
    data, overrides, regime = HELD[case]
    rows = run_rows(tmp_path, synthetic[data], *overrides)
    held = [r for r in rows if r["regime"] == regime and int(r["held"]) >= dx.Thresholds().patience]
    assert held, regimes(rows)
    evidence = dict(item.split("=", 1) for item in held[0]["evidence"].split())
    if regime == dx.OVER_FITTING:  # val focal rose while train focal did not
        assert float(evidence["val_focal_slope"]) > 0.01
        assert float(evidence["focal_slope"]) <= 0.02
        assert held[0]["override"] == "optimizer.lr=0.005 model.encoder_lr=0.005"
    else:  # the lag's override moves weight to the lagging loss
        weights = (float(rows[0]["focal_weight"]), float(rows[0]["contrastive_weight"]))
        assert held[0]["override"] == dx.weight_override(*dx.suggested_weights(regime, *weights))


@pytest.mark.slow
def test_a_real_run_without_the_contrastive_loss_is_never_told_to_weight_it(small_visfd, tmp_path):
    rows = run_rows(
        tmp_path,
        small_visfd,
        "trainer.max_epochs=4",
        "loss.focal_weight=1.0",
        "loss.contrastive_weight=0",
        "optimizer.lr=1e-2",
        "model.encoder_lr=1e-2",
    )
    assert not {r["regime"] for r in rows} & {dx.CONTRASTIVE_LAGS, dx.FOCAL_LAGS}
    assert not any("contrastive_weight" in r["override"] for r in rows)
    assert all("contrastive_slope" not in r["evidence"] for r in rows)


def test_rule_balancer_without_the_callback_is_refused(small_visfd, tmp_path):
    from absa_lightning.train import train

    cfg = compose_train(
        [
            *TINY,
            *QUIET,
            f"data.root={small_visfd}",
            "loss/balancer=rule",
            "~callbacks.loss_dynamics",
            "trainer.max_epochs=1",
        ],
        tmp_path,
    )
    with pytest.raises(ValueError, match=r"keep callbacks\.loss_dynamics"):
        train(cfg)
