"""How long to train, scaled to the training set: epochs and early-stopping patience from a
number of optimiser steps, so that a small dataset is not stopped after a few hundred steps."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingLength:
    """max_epochs = ceil(target_steps / steps_per_epoch), within [min_epochs, max_epochs];
    patience = ceil(patience_steps / steps_per_epoch), at least min_patience epochs."""

    target_steps: int | None = None
    """Optimiser steps to aim for; None: the trainer's max_epochs and patience stay as set."""
    min_epochs: int = 8
    """Never fewer epochs than this (a large dataset reaches the target steps sooner)."""
    max_epochs: int = 40
    """Never more: bounds the time a tiny dataset takes."""
    patience_steps: int = 700
    """Early stopping waits this many steps without a better val pair F1."""
    min_patience: int = 3
    """... and at least this many epochs."""

    def __post_init__(self) -> None:
        if self.target_steps is not None and self.target_steps < 1:
            raise ValueError(
                f"model.training_length.target_steps must be >= 1 or null, got {self.target_steps}"
            )
        if not 1 <= self.min_epochs <= self.max_epochs:
            raise ValueError(
                "model.training_length: need 1 <= min_epochs <= max_epochs, got "
                f"{self.min_epochs} and {self.max_epochs}"
            )
        if self.patience_steps < 0 or self.min_patience < 0:
            raise ValueError("model.training_length.patience_steps and min_patience must be >= 0")

    def for_data(self, num_comments: int, batch_size: int) -> tuple[int, int] | None:
        """(max_epochs, patience) for a training set of `num_comments`; None without a target."""
        if self.target_steps is None:
            return None
        steps_per_epoch = math.ceil(num_comments / batch_size)
        epochs = math.ceil(self.target_steps / steps_per_epoch)
        epochs = min(max(epochs, self.min_epochs), self.max_epochs)
        patience = max(self.min_patience, math.ceil(self.patience_steps / steps_per_epoch))
        return epochs, patience
