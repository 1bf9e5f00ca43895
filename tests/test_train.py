"""End to end: train.py and eval.py through Hydra, as a user runs them, on a tiny model."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    CONF_DIR,
    NO_DIAGNOSTICS,
    QUIET,
    REPO,
    TINY,
    compose_train,
    needs_real_data,
    write_visfd_subset,
)
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from absa_lightning.module import AspectSentimentModule
from absa_lightning.report import LOSS_KEYS
from absa_lightning.train import build, focal_alpha, train


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    """`python <script> <overrides>` from the repository, as a user types it."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def trained_run(small_visfd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch run of the tiny model through `python train.py`, shared by several tests."""
    run_dir = tmp_path_factory.mktemp("run")
    check(
        run(
            "train.py",
            *TINY,
            *QUIET,
            f"data.root={small_visfd}",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            f"hydra.run.dir={run_dir}",
        )
    )
    return run_dir


def test_run_writes_metrics_checkpoints_and_both_loss_curves(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    expected = {
        "aspect_f1",
        "pair_f1",
        "aspect_f1_macro",
        "pair_f1_macro",
        "polarity_acc",
        "focal_loss",
        "contrastive_loss",
        "loss",
        "contrastive_norm",  # the contrastive loss over its chance level (diagnostics)
    }
    assert {k.removeprefix("test/") for k in metrics["test"]} == expected
    assert all(0 <= metrics["test"][f"test/{k}"] <= 1 for k in ("aspect_f1", "pair_f1"))
    assert "val/pair_f1_best" in metrics["best_val"]
    assert set(metrics["final_losses"]) == {
        f"{stage}/{k}"
        for stage in ("train", "val")
        for k in ("focal_loss", "contrastive_loss", "loss")
    }
    assert metrics["config"]["loss"]["focal_weight"] == 0.8
    assert set(metrics["per_aspect"]) == set(metrics["aspects"])
    assert (trained_run / "checkpoints/last.ckpt").is_file()
    assert Path(metrics["best_checkpoint"]).is_file()

    with open(trained_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for column in (
        "train/focal_loss_step",
        "train/contrastive_loss_step",
        "train/focal_loss_epoch",
        "train/contrastive_loss_epoch",
        "val/focal_loss",
        "val/contrastive_loss",
    ):
        assert any(row[column] for row in rows), column
    epochs = [row for row in rows if row["train/focal_loss_epoch"]]
    assert len(epochs) == 2


def test_eval_reproduces_the_test_metrics_of_the_checkpoint(
    trained_run: Path, small_visfd: Path, tmp_path: Path
) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    check(
        run(
            "eval.py",
            f"ckpt_path={metrics['best_checkpoint']}",
            f"data.root={small_visfd}",
            "data.test_split=test",
            f"hydra.run.dir={tmp_path}",
            "+trainer.enable_progress_bar=false",
        )
    )
    evaluated = json.loads((tmp_path / "eval_metrics.json").read_text())
    # A checkpoint is loaded for inference, without the losses: the scores, not the loss values.
    losses = (*LOSS_KEYS, "contrastive_norm")
    scores = {k: v for k, v in metrics["test"].items() if k.split("/")[-1] not in losses}
    assert {"test/pair_f1", "test/aspect_f1"} <= set(scores) == set(evaluated["test"])
    for key, value in scores.items():
        assert evaluated["test"][key] == pytest.approx(value, abs=1e-5), key


def test_checkpoint_loads_without_data_or_hub(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    model = AspectSentimentModule.from_checkpoint(metrics["best_checkpoint"]).eval()
    assert model.hparams.aspects == metrics["aspects"]
    batch = model.tokenizer(["Pin trâu, camera hơi mờ"], return_tensors="pt")
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"])
    assert out.logits.shape == (1, len(metrics["aspects"]), 4)
    assert torch.allclose(out.projections.norm(dim=-1), torch.ones(1, len(metrics["aspects"])))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.focal_weight=-0.1"], "loss.focal_weight must be >= 0"),
        (["loss.contrastive_weight=-1"], "loss.contrastive_weight must be >= 0"),
        (["loss.focal_weight=0", "loss.contrastive_weight=0"], "both 0"),
        (["loss.views=0"], "loss.views must be an integer >= 1, got 0"),
    ],
)
def test_bad_loss_weights_refused_before_any_work(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    cfg = compose_train([*TINY, *overrides, "data.root=/nonexistent"], tmp_path)
    with pytest.raises(ValueError, match=message):  # not the missing data: nothing was read
        train(cfg)


def test_same_seed_same_metrics_in_process_as_through_train_py(
    trained_run: Path, small_visfd: Path, tmp_path: Path
) -> None:
    """`train(cfg)` in this process repeats `python train.py`'s run with the same overrides."""
    overrides = [
        *TINY,
        *QUIET,
        f"data.root={small_visfd}",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
    ]
    again = train(compose_train(overrides, tmp_path))
    first = json.loads((trained_run / "metrics.json").read_text())
    again = json.loads(json.dumps(again, default=str))  # as metrics.json holds it
    for key in ("test", "best_val", "final_losses", "thresholds", "per_aspect"):
        assert again[key] == first[key], key


@needs_real_data
def test_overfits_64_comments_through_both_losses(tmp_path: Path) -> None:
    """Train = dev = test = 64 comments: gradients flow, the tiny model memorises them."""
    data = write_visfd_subset(tmp_path / "data", {"Train.csv": 64})
    for split in ("Dev.csv", "Test.csv"):
        (data / split).write_bytes((data / "Train.csv").read_bytes())
    overrides = [
        *TINY,
        *QUIET,
        *NO_DIAGNOSTICS,
        f"data.root={data}",
        "data.batch_size=16",
        "model.encoder.hidden_size=64",
        "model.encoder.intermediate_size=128",
        "model.head.dropout=0",
        "model.encoder.dropout=0",
        "optimizer.lr=3e-3",
        "model.encoder_lr=3e-3",
        "trainer.max_epochs=40",
        "~callbacks.early_stopping",
    ]
    metrics = train(compose_train(overrides, tmp_path / "run"))
    assert metrics["test"]["test/pair_f1"] >= 0.9
    with open(tmp_path / "run/metrics.csv", newline="") as f:
        epochs = [row for row in csv.DictReader(f) if row["train/focal_loss_epoch"]]
    for loss in ("focal_loss", "contrastive_loss"):  # both fell: gradients flow through both
        first, last = (float(epochs[i][f"train/{loss}_epoch"]) for i in (0, -1))
        assert last < 0.6 * first, (loss, first, last)


def test_mixed_precision_trains_with_gradient_clipping(small_visfd: Path, tmp_path: Path) -> None:
    """trainer=gpu's bf16-mixed with the default optimizer and clipping: Lightning refuses to clip
    for a fused AdamW under mixed precision, so the optimizer is fused in full precision only
    (bf16 autocast runs on the CPU too, which is how this is checked without a GPU)."""
    assert compose_train(["trainer=gpu"], tmp_path).optimizer.fused is False
    assert compose_train([], tmp_path).optimizer.fused is True
    overrides = [
        *TINY,
        *QUIET,
        *NO_DIAGNOSTICS,
        f"data.root={small_visfd}",
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
    ]
    cfg = compose_train(overrides, tmp_path / "run")
    assert cfg.trainer.gradient_clip_val > 0 and cfg.optimizer.fused is False
    metrics = train(cfg)
    assert metrics["epochs_trained"] == 1
    assert metrics["config"]["trainer"]["precision"] == "bf16-mixed"


PINNED_BY_EXPERIMENTS = (
    "seed",
    "data.batch_size",
    "data.max_length",
    "optimizer.lr",
    "model.encoder_lr",
    "model.head.projection_dim",
    "model.head.attention_heads",
    "model.head.dropout",
    "loss.focal_weight",
    "loss.contrastive_weight",
    "trainer.max_epochs",
)


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
)
def test_every_experiment_composes_and_pins_what_makes_its_numbers(
    experiment: str, tmp_path: Path
) -> None:
    compose_train([f"experiment={experiment}"], tmp_path)
    pinned = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml")
    for key in PINNED_BY_EXPERIMENTS:
        assert OmegaConf.select(pinned, key) is not None, f"{experiment}.yaml leaves {key} unset"


@pytest.mark.slow
def test_the_packaged_minilm_trains_one_batch(small_visfd: Path, tmp_path: Path) -> None:
    """The real loading code (`from_pretrained` on a local Hugging Face folder), one batch."""
    cfg = compose_train(
        [
            "model=minilm",
            *QUIET,
            *NO_DIAGNOSTICS,
            f"data.root={small_visfd}",
            "data.batch_size=8",
            "data.eval_batch_size=8",
            "data.max_length=32",
            "tune_thresholds=false",
            "debug=fdr",
        ],
        tmp_path,
    )
    _, module = build(cfg)
    assert module.net.encoder.config.hidden_size == 384  # MiniLM's width, not the small BERT's
    assert (
        module.tokenizer("Pin TRÂU")["input_ids"][1:-1]
        == module.tokenizer("pin trau")["input_ids"][1:-1]
    )  # its uncased English vocabulary: case and diacritics erased
    metrics = train(cfg)
    assert 0 < metrics["test"]["test/focal_loss"] < 2  # finite, near its initial ~0.78


def test_resume_continues_from_last_checkpoint(
    trained_run: Path, small_visfd: Path, tmp_path: Path
) -> None:
    """An interrupted run goes on from `last.ckpt` in its own folder, keeping its loss curves."""
    run_dir = shutil.copytree(trained_run, tmp_path / "run")  # trained_run is shared: left as is
    last = run_dir / "checkpoints/last.ckpt"
    overrides = [
        *TINY,
        *QUIET,
        f"data.root={small_visfd}",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        f"ckpt_path={last}",
    ]
    train(compose_train(overrides, run_dir))
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 2
    assert checkpoint["global_step"] == 3 * 4  # 4 batches an epoch: epochs 0-1 were not redone
    with open(run_dir / "metrics.csv", newline="") as f:
        epochs = [row["epoch"] for row in csv.DictReader(f) if row["train/focal_loss_epoch"]]
    assert epochs == ["0", "1", "2"]  # the curves from before the resume are still there


def test_focal_alpha_inverse_frequency() -> None:
    counts = torch.tensor([600, 200, 150, 50])
    alpha = torch.tensor(focal_alpha("inverse_frequency", counts))
    assert alpha.mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(alpha * counts, torch.full((4,), float(alpha[0] * 600)))
    assert focal_alpha([1.0, 2.0, 2.0, 2.0], counts) == [1.0, 2.0, 2.0, 2.0]
    assert focal_alpha(None, counts) is None


def test_hparams_search_sweeps_both_loss_weights() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", ["hparams_search=loss_weights"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/pair_f1_best"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.sampler.seed == cfg.seed
    assert sweeper.params["loss.focal_weight"] == "interval(0.5, 1.0)"
    assert sweeper.params["loss.contrastive_weight"] == "interval(0.0, 0.5)"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_user_datasets_train_through_data_csv_and_jsonl(fmt: str, tmp_path: Path) -> None:
    """`data=csv` / `data=jsonl` with the user's own files and column names."""
    rows = [
        ("Pin trâu, chụp ảnh đẹp", [("BATTERY", "Positive"), ("CAMERA", "positive")]),
        ("Giá hơi cao", [("PRICE", "Negative")]),
        ("Màn hình ổn", [("SCREEN", "Neutral"), ("OTHERS", None)]),
    ] * 6
    for split in ("train", "dev", "test"):
        path = tmp_path / f"{split}.{fmt}"
        if fmt == "jsonl":
            lines = [
                json.dumps({"text": t, "labels": [{"aspect": a, "polarity": p} for a, p in ls]})
                for t, ls in rows
            ]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            with open(path, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["review", "aspects"])
                for text, labels in rows:
                    items = [f"{{{a}#{p}}}" if p else f"{{{a}}}" for a, p in labels]
                    writer.writerow([text, ";".join(items) + ";"])
    columns = ["data.reader.text_column=review", "data.reader.label_column=aspects"]
    overrides = [
        *TINY,
        *QUIET,
        *NO_DIAGNOSTICS,
        f"data={fmt}",
        f"data.root={tmp_path}",
        "debug=fdr",
        *(columns if fmt == "csv" else []),
    ]
    metrics = train(compose_train(overrides, tmp_path / "run"))
    assert metrics["aspects"] == ["BATTERY", "CAMERA", "PRICE", "SCREEN"]
    # debug=fdr: one batch each, no checkpoint, yet the run's metrics.json is written
    assert metrics["best_checkpoint"] == ""
    written = json.loads((tmp_path / "run/metrics.json").read_text())
    assert set(written["test"]) >= {"test/aspect_f1", "test/pair_f1", "test/focal_loss"}
