"""The LightningModule: the network, both losses combined by their weights, and the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from absa_lightning.metrics import AspectSentimentScores
from absa_lightning.models import AspectSentimentNet, encoder_from_spec, encoder_spec
from absa_lightning.report import LOSS_KEYS
from absa_lightning.thresholds import aspect_thresholds, decode

STATIC_BALANCER = "absa_lightning.balancers.StaticWeights"


def check_loss_weights(focal_weight: float, contrastive_weight: float) -> None:
    """Refuse weights that make no sense before any work starts."""
    for name, weight in (
        ("focal_weight", focal_weight),
        ("contrastive_weight", contrastive_weight),
    ):
        if weight < 0:
            raise ValueError(f"loss.{name} must be >= 0, got {weight}")
    if focal_weight == 0 and contrastive_weight == 0:
        raise ValueError(
            "loss.focal_weight and loss.contrastive_weight are both 0: nothing to train"
        )


def build_balancer(loss: dict[str, Any]) -> torch.nn.Module:
    """`loss.balancers[loss.balancer]` with the configured weights (static for old configs)."""
    name = loss.get("balancer", "static")
    balancers = loss.get("balancers", {"static": {"_target_": STATIC_BALANCER}})
    if name not in balancers:
        raise ValueError(f"loss.balancer={name!r}: expected one of {sorted(balancers)}")
    return instantiate(
        balancers[name],
        focal_weight=loss["focal_weight"],
        contrastive_weight=loss["contrastive_weight"],
    )


def _loss_means() -> nn.ModuleDict:
    """An epoch mean of each loss, weighted, in which a NaN stays NaN.

    (nan_strategy: "warn" would drop NaNs, "disable" also drops the weights.)
    """
    return nn.ModuleDict({k: MeanMetric(nan_strategy=float("nan")) for k in LOSS_KEYS})


class AspectSentimentModule(L.LightningModule):
    """loss = focal_weight * focal + contrastive_weight * contrastive, both logged as curves.

    The weights are the configured ones (`loss.balancer=static`) or set by a balancer between
    epochs or by gradient descent (`rule`, `dwa`, `uncertainty`; see `absa_lightning.balancers`);
    the weights in effect are logged as `train/{focal,contrastive}_weight_eff` every epoch.

    Everything but the encoder and tokenizer is plain data in `hparams`; the checkpoint adds the
    encoder's config and the tokenizer's files (`encoder_spec`), so `from_checkpoint` needs
    neither the hub nor the training data. `max_length` and `preprocess` (the data config's) are
    kept for prediction, which must cut and prepare comments as training did; checkpoints from
    before they were kept get the defaults, 128 tokens and no preprocessing.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        aspects: list[str],
        polarities: list[str],
        loss: dict[str, Any],
        head: dict[str, Any],
        optimizer: dict[str, Any],
        encoder_lr: float,
        scheduler: dict[str, Any] | None = None,
        max_length: int = 128,
        preprocess: dict[str, Any] | None = None,
    ):
        super().__init__()
        check_loss_weights(loss["focal_weight"], loss["contrastive_weight"])
        self.save_hyperparameters(ignore=["encoder", "tokenizer"])
        self.tokenizer = tokenizer
        self.net = AspectSentimentNet(encoder, len(aspects), 1 + len(polarities), **head)
        self.focal = instantiate(loss["focal"])
        self.contrastive = instantiate(loss["contrastive"])
        self.balancer = build_balancer(loss)
        self.val_scores = AspectSentimentScores(len(aspects), len(polarities))
        self.test_scores = AspectSentimentScores(len(aspects), len(polarities))
        self.val_pair_f1_best = MaxMetric()
        # Evaluation losses as metrics: their weighted sums add up over DDP processes, which may
        # hold different numbers of comments (Lightning's own mean of logged values averages the
        # processes' comment counts as an integer).
        self.val_losses = _loss_means()
        self.test_losses = _loss_means()
        self.test_per_aspect: dict[str, torch.Tensor] = {}
        # {aspect: threshold on P(mentioned)} tuned on dev after training (tune_thresholds); kept
        # in the checkpoint; the aspects not named are decoded by argmax.
        self.thresholds: dict[str, float] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> AspectSentimentModule:
        """The trained module from a checkpoint alone: no hub, no data, no pickled code."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        tokenizer, encoder = encoder_from_spec(checkpoint["encoder_spec"])
        module = cls(encoder, tokenizer, **checkpoint["hyper_parameters"])
        missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
        # The balancer's state only matters to training; checkpoints from before it lack it.
        mismatched = [k for k in missing + unexpected if not k.startswith("balancer.")]
        if mismatched:
            raise RuntimeError(f"{path}: checkpoint does not fit the model: {mismatched[:5]}")
        module.on_load_checkpoint(checkpoint)
        return module

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["encoder_spec"] = encoder_spec(self.tokenizer, self.net.encoder)
        checkpoint["thresholds"] = dict(self.thresholds)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        thresholds = dict(checkpoint.get("thresholds") or {})
        aspect_thresholds(thresholds, self.hparams.aspects)  # numbers in [0, 1], known aspects
        self.thresholds = thresholds

    def decoded(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, A) classes by the tuned thresholds; without any, the logits (scored by argmax)."""
        if not self.thresholds:
            return logits
        thresholds = aspect_thresholds(self.thresholds, self.hparams.aspects)
        return decode(logits.float().softmax(dim=-1), thresholds.to(logits.device))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.net(input_ids, attention_mask)

    def _losses(self, batch: dict[str, torch.Tensor]):
        out = self.net(batch["input_ids"], batch["attention_mask"])
        focal = self.focal(out.logits, batch["labels"])
        contrastive = self.contrastive(out.projections, batch["labels"])
        total = self.balancer(focal, contrastive)
        return out, {"focal_loss": focal, "contrastive_loss": contrastive, "loss": total}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, losses = self._losses(batch)
        losses = {f"train/{k}": v for k, v in losses.items()}
        if self.hparams.loss.get("check_finite", True):
            self._check_finite(losses, batch, batch_idx)
        self.log_dict(
            losses, on_step=True, on_epoch=True, batch_size=len(batch["labels"]), sync_dist=True
        )
        return losses["train/loss"]

    def _check_finite(
        self, losses: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], batch_idx: int
    ) -> None:
        """Stop before the optimizer steps on a NaN or infinite loss, naming it and the batch."""
        finite = torch.stack([v.detach() for v in losses.values()]).isfinite()
        if bool(finite.all()):  # a host sync each step: cheap, see `loss.check_finite` in conf
            return
        bad = [
            f"{name} is {value.item()}"
            for (name, value), ok in zip(losses.items(), finite.tolist(), strict=True)
            if not ok
        ]
        raise FloatingPointError(
            f"{', '.join(bad)} at global step {self.global_step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}); batch comment indices: {batch['index'].tolist()}"
        )

    def on_train_epoch_end(self) -> None:
        focal_weight, contrastive_weight = self.balancer.effective_weights()
        self.log("train/focal_weight_eff", focal_weight)
        self.log("train/contrastive_weight_eff", contrastive_weight)
        metrics = self.trainer.callback_metrics
        if "train/focal_loss_epoch" not in metrics:  # no training batch ran (resumed at epoch end)
            return
        val_pair_f1 = metrics.get("val/pair_f1")
        self.balancer.end_epoch(
            self.current_epoch,
            float(metrics["train/focal_loss_epoch"]),
            float(metrics["train/contrastive_loss_epoch"]),
            None if val_pair_f1 is None else float(val_pair_f1),
        )

    def on_train_start(self) -> None:
        self.val_pair_f1_best.reset()  # the sanity check's value is not a real best
        self.thresholds = {}  # tuned for other weights (a resumed tuned checkpoint): argmax

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out, losses = self._losses(batch)
        self._log_means("val", self.val_losses, losses, len(batch["labels"]))
        self.val_scores.update(self.decoded(out.logits), batch["labels"])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_scores.compute()
        self.val_scores.reset()
        self.val_pair_f1_best.update(scores["pair_f1"])
        self.log_dict({f"val/{k}": v for k, v in scores.items()})
        self.log("val/pair_f1_best", self.val_pair_f1_best.compute())

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out, losses = self._losses(batch)
        self._log_means("test", self.test_losses, losses, len(batch["labels"]))
        self.test_scores.update(self.decoded(out.logits), batch["labels"])

    def _log_means(
        self, stage: str, means: nn.ModuleDict, losses: dict[str, torch.Tensor], comments: int
    ) -> None:
        """Each loss into its epoch mean, weighted by the batch's comments, as Lightning weighs."""
        for name, value in losses.items():
            means[name].update(value, comments)
        self.log_dict({f"{stage}/{name}": mean for name, mean in means.items()})

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_scores.compute().items()})
        self.test_per_aspect = self.test_scores.per_aspect()
        self.test_scores.reset()

    def configure_optimizers(self):
        return self.optimization(int(self.trainer.estimated_stepping_batches))

    def optimization(self, total_steps: int):
        """The optimizer over the parameter groups, and its per-step schedule over `total_steps`."""
        groups = [
            {"params": self.net.encoder_parameters(), "lr": self.hparams.encoder_lr},
            {"params": self.net.head_parameters()},  # the optimizer's own lr
        ]
        if balancer_parameters := list(self.balancer.parameters()):
            groups.append({"params": balancer_parameters, "weight_decay": 0.0})
        optimizer = instantiate(self.hparams.optimizer)(groups)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer, total_steps=total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
