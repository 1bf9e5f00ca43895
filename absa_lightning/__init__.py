"""Aspect-based sentiment models trained with focal + supervised contrastive loss.

The names below are imported when first used, so that `import absa_lightning.losses` loads
torch alone, not Lightning, Hydra or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AspectConfusionMatrix": "absa_lightning.metrics",
    "AspectSentimentDataModule": "absa_lightning.data",
    "AspectSentimentModule": "absa_lightning.module",
    "AspectSentimentPredictor": "absa_lightning.predictor",
    "FocalLoss": "absa_lightning.losses",
    "LossBalancer": "absa_lightning.balancers",
    "SupConLoss": "absa_lightning.losses",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'absa_lightning' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
