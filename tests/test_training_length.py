"""Epochs and early-stopping patience scaled to the training set (`model.training_length`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_train

from absa_lightning.train import scale_training_length
from absa_lightning.training_length import TrainingLength

pytestmark = pytest.mark.timeout(60)


def test_rule_on_the_datasets_it_was_set_for() -> None:
    length = TrainingLength(target_steps=1950, min_epochs=8, max_epochs=40, patience_steps=700)
    assert length.for_data(7786, 32) == (8, 3)  # UIT-ViSFD: 244 steps an epoch, as before
    assert length.for_data(1000, 32) == (40, 22)  # 32 steps an epoch: 61 epochs, capped at 40
    assert length.for_data(3000, 32) == (21, 8)  # 94 steps an epoch
    assert length.for_data(100_000, 32) == (8, 3)  # min_epochs and min_patience
    assert TrainingLength().for_data(1000, 32) is None  # no target: as configured


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_steps": 0}, "target_steps must be >= 1"),
        ({"min_epochs": 10, "max_epochs": 5}, "min_epochs <= max_epochs"),
        ({"patience_steps": -1}, "must be >= 0"),
    ],
)
def test_bad_settings_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingLength(**options)


@pytest.mark.parametrize(
    ("model", "comments", "expected"),
    [
        # fine-tuned (the default, e5_small): 976 steps, 4 to 20 epochs
        ([], 7786, (4, 3)),  # UIT-ViSFD
        ([], 3149, (10, 6)),  # MAMS-ACSA
        ([], 1000, (20, 16)),
        # trained from scratch: 1950 steps, 8 to 40 epochs
        (["model=small"], 7786, (8, 3)),
        (["model=small"], 1000, (40, 22)),
        (["model=tiny"], 1000, (40, 22)),  # tiny is small's preset
        (["model=minilm"], 7786, (4, 3)),
    ],
)
def test_each_model_scales_the_trainer_and_the_early_stopping_callback(
    model: list[str], comments: int, expected: tuple[int, int], tmp_path: Path
) -> None:
    cfg = compose_train(model, tmp_path)  # trainer.max_epochs null
    scale_training_length(cfg, comments)
    assert (cfg.trainer.max_epochs, cfg.callbacks.early_stopping.patience) == expected


def test_a_set_max_epochs_wins(tmp_path: Path) -> None:
    cfg = compose_train(["trainer.max_epochs=2"], tmp_path)
    scale_training_length(cfg, 1000)
    assert (cfg.trainer.max_epochs, cfg.callbacks.early_stopping.patience) == (2, 3)
    neither = compose_train(["model.training_length.target_steps=null"], tmp_path)
    with pytest.raises(ValueError, match="both null: set one"):
        scale_training_length(neither, 1000)
