"""Aspect-based sentiment models trained with focal + supervised contrastive loss."""

from absa_lightning import resolvers  # noqa: F401  (registers the resolvers conf/ uses)
from absa_lightning.data import AspectSentimentDataModule
from absa_lightning.losses import FocalLoss, SupConLoss
from absa_lightning.metrics import AspectSentimentScores
from absa_lightning.module import AspectSentimentModule
from absa_lightning.predictor import AspectSentimentPredictor

__all__ = [
    "AspectSentimentDataModule",
    "AspectSentimentModule",
    "AspectSentimentPredictor",
    "AspectSentimentScores",
    "FocalLoss",
    "SupConLoss",
]
