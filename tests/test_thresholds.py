"""Per-aspect decision thresholds: tuned on dev, kept in the checkpoint, used by the scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, QUIET
from hydra import compose, initialize_config_dir

from absa_lightning.metrics import AspectConfusionMatrix
from absa_lightning.module import AspectSentimentModule
from absa_lightning.predictor import AspectSentimentPredictor
from absa_lightning.thresholds import by_aspect, decode, threshold_grid, tune

pytestmark = pytest.mark.timeout(300)


def pair_f1(preds: torch.Tensor, labels: torch.Tensor) -> float:
    scores = AspectConfusionMatrix(labels.shape[1], 3)
    scores.update(preds, labels)
    return float(scores.compute()["pair_f1"])


def quiet_aspect_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Aspect 0: every mention gets P(mentioned) 0.45 split over the polarities (0.35 for the
    right one), so argmax says absent (0.55) for all of them; non-mentions get 0.10. Aspect 1 is
    easy: argmax is already right."""
    n = 40
    labels = torch.zeros(n, 2, dtype=torch.long)
    labels[: n // 2, 0] = 1  # half mention aspect 0, positively
    labels[::2, 1] = 2  # every other one mentions aspect 1, negatively
    probs = torch.zeros(n, 2, 4)
    probs[:, 0] = torch.tensor([0.90, 0.04, 0.03, 0.03])
    probs[: n // 2, 0] = torch.tensor([0.55, 0.35, 0.05, 0.05])
    probs[:, 1] = torch.tensor([0.80, 0.05, 0.10, 0.05])
    probs[::2, 1] = torch.tensor([0.10, 0.05, 0.80, 0.05])
    return probs, labels


@pytest.mark.parametrize("objective", ["pair_f1", "pair_f1_per_aspect"])
def test_tuned_threshold_beats_argmax_where_argmax_misses(objective: str) -> None:
    probs, labels = quiet_aspect_case()
    tuned = tune(probs, labels, threshold_grid(0.05), objective)
    assert 0.10 < tuned[0] <= 0.45  # between the non-mentions' and the mentions' P(mentioned)
    assert math.isnan(tuned[1])  # argmax is perfect there: kept (ties go to argmax)
    argmax_f1 = pair_f1(probs.argmax(dim=-1), labels)
    tuned_f1 = pair_f1(decode(probs, tuned), labels)
    assert argmax_f1 == pytest.approx(2 / 3)  # aspect 1 only: 20 of 40 gold pairs
    assert tuned_f1 == pytest.approx(1.0)
    assert by_aspect(tuned, ["A", "B"]) == {"A": pytest.approx(float(tuned[0]))}


def random_case() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(200, 5, 4, generator=generator).softmax(dim=-1)
    labels = torch.randint(0, 4, (200, 5), generator=generator)
    labels[labels == 3] = 0  # mostly absent
    return probs, labels


def test_micro_tuning_never_loses_to_argmax_on_the_data_it_was_tuned_on() -> None:
    probs, labels = random_case()
    tuned = tune(probs, labels, threshold_grid(0.05), objective="pair_f1")
    assert pair_f1(decode(probs, tuned), labels) > pair_f1(probs.argmax(dim=-1), labels)


def test_per_aspect_tuning_never_loses_to_argmax_on_any_aspect() -> None:
    probs, labels = random_case()
    tuned = tune(probs, labels, threshold_grid(0.05), objective="pair_f1_per_aspect")
    for a in range(5):  # per aspect: the objective it maximises
        cell = (slice(None), slice(a, a + 1))
        assert pair_f1(decode(probs[cell], tuned[a : a + 1]), labels[cell]) >= pair_f1(
            probs[cell].argmax(dim=-1), labels[cell]
        )
    with pytest.raises(ValueError, match="threshold_objective must be one of"):
        tune(probs, labels, threshold_grid(0.05), objective="accuracy")


def test_threshold_grid() -> None:
    torch.testing.assert_close(threshold_grid(0.25), torch.tensor([0.25, 0.5, 0.75]))
    with pytest.raises(ValueError, match="threshold_grid_step"):
        threshold_grid(0.0)


def test_tuned_run_keeps_thresholds_in_checkpoint_metrics_and_predictor(
    tiny_run: dict, small_visfd: Path, tmp_path: Path
) -> None:
    """A run with tune_thresholds=true (the default): metrics.json holds them and the argmax
    scores beside; the best checkpoint holds them; eval.py's scores and the predictor use them."""
    from absa_lightning.evaluate import evaluate

    thresholds = tiny_run["thresholds"]
    assert thresholds, "a tiny model five epochs in has some aspect argmax does not decode best"
    assert set(thresholds) <= set(tiny_run["aspects"])
    run_dir = Path(tiny_run["best_checkpoint"]).parents[1]
    assert json.loads((run_dir / "metrics.json").read_text())["thresholds"] == thresholds
    # Tuned on dev: on dev, never worse than argmax decoding.
    tuned_dev = tiny_run["best_val"]["val/pair_f1"]
    assert tuned_dev >= tiny_run["argmax_decoding"]["best_val"]["val/pair_f1"]

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "eval",
            [
                f"ckpt_path={tiny_run['best_checkpoint']}",
                f"data.root={small_visfd}",
                "data.test_split=dev",
                f"output_dir={tmp_path}",
                *QUIET[1:],
            ],
        )
    assert evaluate(cfg)["test/pair_f1"] == pytest.approx(tuned_dev)

    checkpoint = torch.load(tiny_run["best_checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["thresholds"] == thresholds
    assert AspectSentimentModule.from_checkpoint(tiny_run["best_checkpoint"]).thresholds == (
        thresholds
    )
    predictor = AspectSentimentPredictor.from_checkpoint(tiny_run["best_checkpoint"])
    assert predictor.threshold == thresholds
    assert (
        AspectSentimentPredictor.from_checkpoint(
            tiny_run["best_checkpoint"], threshold=None
        ).threshold
        is None
    )  # the caller's choice wins
