"""The reading of a run: loss dynamics, embedding space and balancers, end to end and alone."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUIET, REPO, TINY, compose_train
from hydra.errors import MissingConfigException
from rich.console import Console

from absa_lightning import diagnostics as dx
from absa_lightning.balancers import RuleBalancer
from absa_lightning.callbacks import DYNAMICS_COLUMNS, LossDynamics
from absa_lightning.metrics import embedding_space_scores
from absa_lightning.module import AspectSentimentModule
from absa_lightning.train import train

EPOCHS = 4
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rule_run(small_visfd: Path, tmp_path_factory: pytest.TempPathFactory):
    """`python train.py loss/balancer=rule`, 4 epochs of the tiny model; (folder, stdout)."""
    run_dir = tmp_path_factory.mktemp("rule_run")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            *TINY,
            *QUIET,
            f"data.root={small_visfd}",
            f"trainer.max_epochs={EPOCHS}",
            "~callbacks.early_stopping",
            "loss/balancer=rule",
            "diagnostics.window=2",  # so that the rule can act within 4 epochs
            "callbacks.embedding_space.every_n_epochs=2",
            "trainer.log_every_n_steps=1",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result.stdout


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_run_folder_holds_the_dynamics_and_the_pictures(rule_run):
    run_dir, _ = rule_run
    rows = read_csv(run_dir / "loss_dynamics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert tuple(rows[0]) == DYNAMICS_COLUMNS
    for name in ("loss_dynamics", "embeddings_00", "embeddings_02", "embeddings_04"):
        assert (run_dir / f"{name}.png").read_bytes()[:8] == PNG, name


def recipe_of(rows_so_far, lr=1e-3):
    last = rows_so_far[-1]
    weights = float(last["focal_weight"]), float(last["contrastive_weight"])
    return dx.Recipe(*weights, lr, lr, EPOCHS, focal_uniform=dx.uniform_focal(4, 2.0))


def test_dynamics_are_the_logged_epoch_means_and_the_readings(rule_run):
    run_dir, _ = rule_run
    rows = read_csv(run_dir / "loss_dynamics.csv")
    logged = {
        int(r["epoch"]): r for r in read_csv(run_dir / "metrics.csv") if r["train/loss_epoch"]
    }
    thresholds = dx.Thresholds(window=2)
    for i, row in enumerate(rows):
        epoch = logged[int(row["epoch"])]
        for column, key in (
            ("focal", "train/focal_loss_epoch"),
            ("contrastive", "train/contrastive_loss_epoch"),
            ("contrastive_norm", "train/contrastive_norm_epoch"),
            ("focal_weight", "train/focal_weight_eff"),
        ):
            assert float(row[column]) == pytest.approx(float(epoch[key])), column
        # Over its chance level: near 1 for an untrained tiny model, on train and val alike.
        assert 0.5 < float(row["contrastive_norm"]) < 1.2
        assert 0.5 < float(row["val_contrastive_norm"]) < 1.2
        history = rows[: i + 1]
        expected = dx.read_history(history, recipe_of(history), thresholds)
        assert (row["regime"], row["override"]) == (expected.regime, expected.override)
        held = 1 + (int(rows[i - 1]["held"]) if i and rows[i - 1]["regime"] == row["regime"] else 0)
        assert int(row["held"]) == expected.held == held
        assert row["evidence"] == expected.evidence_line()


def test_rule_balancer_acted_on_the_readings_between_epochs(rule_run):
    """Replaying the rule on the recorded readings gives the weights the run trained with."""
    run_dir, _ = rule_run
    rows = read_csv(run_dir / "loss_dynamics.csv")
    replay = RuleBalancer(0.8, 0.2, thresholds={"window": 2})
    for i, row in enumerate(rows):
        used = (float(row["focal_weight"]), float(row["contrastive_weight"]))
        assert used == pytest.approx(replay.effective_weights())
        reading = dx.Reading(row["regime"], held=int(row["held"]))
        replay.end_epoch(int(row["epoch"]), reading, rows[: i + 1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    final = metrics["effective_weights"]
    assert (final["focal_weight"], final["contrastive_weight"]) == pytest.approx(
        replay.effective_weights()
    )
    assert metrics["diagnosis"]["regime"] == rows[-1]["regime"]
    assert metrics["diagnosis"]["advice"] == dx.ADVICE[rows[-1]["regime"]]
    assert metrics["diagnosis"]["evidence"] == rows[-1]["evidence"]


def test_embedding_scores_logged_at_start_every_n_epochs_and_end(rule_run):
    run_dir, _ = rule_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    measured = metrics["embedding_space"]
    assert set(measured) == {"after_0_epochs", "after_2_epochs", "after_4_epochs"}
    for scores in measured.values():
        assert -1 <= scores["silhouette"] <= 1
        assert scores["uniformity"] <= 0
        assert scores["time_s"] > 0
    logged = [r for r in read_csv(run_dir / "metrics.csv") if r["val/emb_silhouette"]]
    assert [float(r["val/emb_silhouette"]) for r in logged] == pytest.approx(
        [measured[k]["silhouette"] for k in ("after_0_epochs", "after_2_epochs", "after_4_epochs")]
    )


def test_console_table_at_the_end_of_training(rule_run):
    run_dir, stdout = rule_run
    header = next(line for line in stdout.splitlines() if "focal" in line and "status" in line)
    columns = ("epoch", "focal", "contr", "val focal", "val contr", "pair F1", "status")
    assert [w for w in columns if w not in header] == []
    last = read_csv(run_dir / "loss_dynamics.csv")[-1]
    held = int(last["held"])
    words = dx.held_words(held)
    assert f"reading: {last['regime'].replace('_', ' ')}, {words}" in " ".join(stdout.split())
    # The evidence: the slopes the reading used (rich may wrap the line).
    assert "evidence: focal_slope=" in stdout


def test_checkpoints_from_before_the_balancer_still_load(rule_run, tmp_path):
    """An older checkpoint: the loss settings in `hyper_parameters`, no balancer state."""
    run_dir, _ = rule_run
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    for key in [k for k in checkpoint["state_dict"] if k.startswith("balancer.")]:
        del checkpoint["state_dict"][key]
    del checkpoint["hyper_parameters"]["loss"]["balancer"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    model = AspectSentimentModule.from_checkpoint(tmp_path / "old.ckpt")
    assert model.balancer is None  # loaded for inference: the network only
    assert model.hparams.loss["focal_weight"] == 0.8


def test_uncertainty_weights_are_trained(small_visfd: Path, tmp_path: Path):
    cfg = compose_train(
        [
            *TINY,
            *QUIET,
            f"data.root={small_visfd}",
            "trainer.max_epochs=1",
            "loss/balancer=uncertainty",
            "~callbacks.embedding_space",
        ],
        tmp_path,
    )
    weights = train(cfg)["effective_weights"]
    assert weights["focal_weight"] != pytest.approx(0.8, abs=1e-4)
    assert weights["contrastive_weight"] != pytest.approx(0.2, abs=1e-4)


def test_warm_start_trains_on_the_contrastive_loss_from_its_second_epoch(
    small_visfd: Path, tmp_path: Path
):
    cfg = compose_train(
        [
            *TINY,
            *QUIET,
            f"data.root={small_visfd}",
            "trainer.max_epochs=2",
            "~callbacks.early_stopping",
            "loss/balancer=warm_start",
            "~callbacks.embedding_space",
        ],
        tmp_path,
    )
    assert train(cfg)["effective_weights"] == {"focal_weight": 0.8, "contrastive_weight": 0.2}
    rows = read_csv(tmp_path / "loss_dynamics.csv")
    assert [float(r["contrastive_weight"]) for r in rows] == [0.0, 0.2]
    assert all(float(r["contrastive"]) > 0 for r in rows)  # computed and logged all along


def test_unknown_balancer_names_the_choices(tmp_path: Path):
    choices = r"(?s)magic.*dwa.*rule.*static.*uncertainty.*warm_start"
    with pytest.raises(MissingConfigException, match=choices):
        compose_train([*TINY, "loss/balancer=magic"], tmp_path)


def test_loss_dynamics_state_comes_back_from_a_checkpoint():
    callback = LossDynamics()
    callback.rows = {
        e: {
            "epoch": e,
            "focal": 0.5 - 0.1 * e,
            "contrastive_norm": 0.9,
            "val_focal": 0.4,
            "val_contrastive_norm": 0.95,
            "val_pair_f1": 0.3,
            "regime": dx.WARMING_UP,
            "override": "",
        }
        for e in range(3)
    }
    restored = LossDynamics()
    restored.load_state_dict(callback.state_dict())
    assert restored.rows == callback.rows
    console = Console(record=True, width=120)
    console.print(restored.table())
    text = console.export_text()
    assert "warming up" in text and "0.3000" in text and "0.9500" in text


def test_collapse_counts_are_summed_across_processes_after_compute():
    """Under DDP each process holds its own share of the validation cells: LossDynamics's
    collapse test must read them all. The other process's confmat comes in through the
    metric's own sync (dist_sync_fn), as torch.distributed's all-gather would bring it."""
    from absa_lightning.metrics import AspectConfusionMatrix

    g = torch.Generator().manual_seed(0)
    mine = torch.randint(0, 4, (2, 8, 3), generator=g)  # (preds|target, comments, aspects)
    theirs = torch.randint(0, 4, (2, 8, 3), generator=g)
    other = AspectConfusionMatrix(3)
    other.update(theirs[0], theirs[1])

    def all_gather(tensor, group=None):
        return [tensor, other.confmat.clone()]

    metric = AspectConfusionMatrix(
        3, dist_sync_fn=all_gather, distributed_available_fn=lambda: True
    )
    metric.update(mine[0], mine[1])
    whole = AspectConfusionMatrix(3)
    whole.update(torch.cat([mine[0], theirs[0]]), torch.cat([mine[1], theirs[1]]))

    metric.compute()  # syncs, then leaves the local states again (as the module does)
    for synced, expected in zip(metric.class_counts(), whole.class_counts(), strict=True):
        assert torch.equal(synced, expected)
    gold, _ = metric.class_counts()
    assert int(gold.sum()) == 16 * 3  # every cell of both processes, once
    assert int(metric.confmat.sum()) == 8 * 3  # and the states are local again


def naive_scores(z: torch.Tensor, aspects: list[int], polarities: list[int]) -> dict:
    """Textbook loops over cells and pairs, in float64."""
    z = torch.nn.functional.normalize(z.double(), dim=-1)
    n = len(z)
    group = [(a, p) for a, p in zip(aspects, polarities, strict=True)]
    cos = lambda i, j: float(z[i] @ z[j])  # noqa: E731
    within, across, align, unif = [], [], [], []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            d2 = float(((z[i] - z[j]) ** 2).sum())
            unif.append(math.exp(-2 * d2))
            if group[i] == group[j]:
                within.append(cos(i, j))
                align.append(d2)
            elif aspects[i] == aspects[j]:
                across.append(cos(i, j))
    silhouettes = []
    for i in range(n):
        same = [1 - cos(i, j) for j in range(n) if j != i and group[j] == group[i]]
        if not same:
            silhouettes.append(0.0)
            continue
        a = sum(same) / len(same)
        b = min(
            sum(1 - cos(i, j) for j in range(n) if group[j] == g)
            / sum(1 for j in range(n) if group[j] == g)
            for g in set(group) - {group[i]}
        )
        silhouettes.append((b - a) / max(a, b))
    return {
        "silhouette": sum(silhouettes) / n,
        "cos_within": sum(within) / len(within),
        "cos_across_polarity": sum(across) / len(across),
        "alignment": sum(align) / len(align),
        "uniformity": math.log(sum(unif) / len(unif)),
    }


@pytest.mark.parametrize("seed", range(3))
def test_embedding_scores_match_loops(seed):
    g = torch.Generator().manual_seed(seed)
    n = 40
    aspects = torch.randint(0, 3, (n,), generator=g)
    polarities = torch.randint(1, 4, (n,), generator=g)
    z = (
        torch.randn(n, 8, generator=g)
        + 1.5 * torch.nn.functional.one_hot(aspects * 3 + polarities, 12)[:, :8]
    )
    got = embedding_space_scores(z, aspects, polarities)
    expected = naive_scores(z, aspects.tolist(), polarities.tolist())
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_separated_groups_score_high_and_mixed_ones_near_zero():
    g = torch.Generator().manual_seed(0)
    aspects = torch.zeros(300, dtype=torch.long)
    polarities = torch.arange(300) % 3 + 1
    centres = torch.eye(16)[:3] * 10
    clustered = centres[polarities - 1] + 0.3 * torch.randn(300, 16, generator=g)
    mixed = torch.randn(300, 16, generator=g)
    good, bad = (embedding_space_scores(z, aspects, polarities) for z in (clustered, mixed))
    assert good["silhouette"] > 0.9 and abs(bad["silhouette"]) < 0.05
    assert good["cos_within"] > 0.9 > good["cos_across_polarity"]
    assert good["alignment"] < bad["alignment"]


def test_measuring_the_embedding_space_leaves_training_unchanged(small_visfd: Path, tmp_path):
    base = [*TINY, *QUIET, f"data.root={small_visfd}", "trainer.max_epochs=2"]
    measured = train(
        compose_train([*base, "callbacks.embedding_space.every_n_epochs=1"], tmp_path / "a")
    )
    plain = train(compose_train([*base, "~callbacks.embedding_space"], tmp_path / "b"))
    assert measured["test"] == plain["test"]
    assert measured["final_losses"] == plain["final_losses"]


def test_the_picture_draws_rows_read_back_from_a_csv(tmp_path):
    """absa-advise and the tests read loss_dynamics.csv: every cell a string."""
    from absa_lightning import plots

    rows = [
        {
            "epoch": str(e),
            "focal": str(0.5 - 0.05 * e),
            "contrastive_norm": "0.9",
            "val_focal": "0.45",
            "val_contrastive_norm": "0.95",
            "val_pair_f1": str(0.2 + 0.1 * e),
            "contrastive_weight": "0.2",
            "regime": dx.WARMING_UP if e < 2 else dx.UNDER_TRAINING,
            "held": str(e + 1 if e < 2 else e - 1),
        }
        for e in range(5)
    ]
    plots.loss_dynamics(rows, tmp_path / "loss_dynamics.png", patience=2)
    assert (tmp_path / "loss_dynamics.png").read_bytes()[:8] == PNG
