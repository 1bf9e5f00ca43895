"""The LightningModule: the network, both losses combined by their weights, and the metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from transformers import PreTrainedTokenizerBase

from absa_lightning.balancers import LossBalancer
from absa_lightning.checkpointing import read_checkpoint
from absa_lightning.diagnostics import contrastive_chance
from absa_lightning.errors import AbsaUserError
from absa_lightning.metrics import AspectConfusionMatrix
from absa_lightning.models import (
    AspectSentimentNet,
    HashedNgramBranch,
    encoder_from_spec,
    encoder_spec,
)
from absa_lightning.models.ngrams import valid_ngram_settings
from absa_lightning.report import LOSS_KEYS
from absa_lightning.thresholds import aspect_thresholds, decode

# Parts of a training module that a network loaded for inference does not have.
TRAINING_ONLY_STATE = ("balancer.", "focal.", "contrastive.")
RECIPE_KEYS = ("loss", "optimizer", "scheduler")  # in hparams for the record, never built


def _loss_means() -> nn.ModuleDict:
    """An epoch mean of each loss, weighted, in which a NaN stays NaN.

    (nan_strategy: "warn" would drop NaNs, "disable" also drops the weights.)
    """
    keys = (*LOSS_KEYS, "contrastive_norm")
    return nn.ModuleDict({k: MeanMetric(nan_strategy=float("nan")) for k in keys})


class AspectSentimentModule(L.LightningModule):
    """loss = focal_weight * focal + contrastive_weight * contrastive, both logged as curves.

    Every part comes built (`absa_lightning.train.build`): the network, the two losses, the
    balancer that weighs them (the configured weights, or weights set between epochs or learned;
    see `absa_lightning.balancers`), and the optimizer and scheduler as factories completed in
    `configure_optimizers`. The weights in effect are logged as
    `train/{focal,contrastive}_weight_eff` every epoch. A module loaded for inference
    (`from_checkpoint`) has the network only: it predicts, validates and tests (scores, no losses).

    `hparams` is plain data: what rebuilds the network (aspects, polarities, head settings), how
    comments are cut and prepared (`max_length`, `preprocess`, as training did) and the recipe's
    `loss`, `optimizer` and `scheduler` settings (for the record only). The checkpoint adds the
    encoder's config and the tokenizer's files (`encoder_spec`), so `from_checkpoint` needs
    neither the hub nor the training data.
    """

    def __init__(
        self,
        net: AspectSentimentNet,
        tokenizer: PreTrainedTokenizerBase,
        aspects: list[str],
        polarities: list[str],
        *,
        focal: nn.Module | None = None,
        contrastive: nn.Module | None = None,
        balancer: LossBalancer | None = None,
        optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        encoder_lr: float | None = None,
        check_finite: bool = True,
        views: int = 1,
        max_length: int = 128,
        preprocess: dict[str, Any] | None = None,
        recipe: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "aspects": list(aspects),
                "polarities": list(polarities),
                "head": dict(net.head_settings),
                "ngrams": net.ngrams.settings if net.ngrams is not None else None,
                "max_length": max_length,
                "preprocess": preprocess,
                "encoder_lr": encoder_lr,
                **(recipe or {}),
            }
        )
        self.tokenizer = tokenizer
        self.net = net
        self.focal, self.contrastive, self.balancer = focal, contrastive, balancer
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.check_finite = check_finite
        self.views = views
        self.val_scores = AspectConfusionMatrix(len(aspects), len(polarities))
        self.test_scores = AspectConfusionMatrix(len(aspects), len(polarities))
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

    @property
    def has_losses(self) -> bool:
        return self.balancer is not None

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> AspectSentimentModule:
        """The trained network from a checkpoint alone: no hub, no data, no pickled code, no
        losses (nothing named in the checkpoint is built)."""
        checkpoint = read_checkpoint(path, map_location)  # plain data, preprocess checked
        settings = checkpoint["hyper_parameters"]
        tokenizer, encoder = encoder_from_spec(checkpoint["encoder_spec"])
        aspects, polarities = list(settings["aspects"]), list(settings["polarities"])
        num_classes = 1 + len(polarities)
        # The branch class itself, from plain settings: nothing the checkpoint names is built.
        ngrams = settings.get("ngrams")  # absent in checkpoints from before the branch
        if ngrams is not None and not valid_ngram_settings(ngrams):
            raise AbsaUserError(
                f"field 'hyper_parameters.ngrams' holds {ngrams!r:.80}",
                str(path),
                "give a checkpoint written by train.py",
            )
        branch = HashedNgramBranch(len(aspects), num_classes, **ngrams) if ngrams else None
        net = AspectSentimentNet(
            encoder, len(aspects), num_classes, **settings["head"], ngrams=branch
        )
        module = cls(
            net,
            tokenizer,
            aspects,
            polarities,
            # Checkpoints from before these were kept: the defaults of their time.
            max_length=settings.get("max_length", 128),
            preprocess=settings.get("preprocess"),
            encoder_lr=settings.get("encoder_lr"),
            recipe={k: settings[k] for k in RECIPE_KEYS if k in settings},
        )
        state = checkpoint["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_STATE)}
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise AbsaUserError(
                f"checkpoint does not fit the model: {(missing + unexpected)[:5]}", str(path)
            )
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

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        ngram_ids: torch.Tensor | None = None,
    ):
        return self.net(input_ids, attention_mask, ngram_ids)

    def _losses(self, batch: dict[str, torch.Tensor]):
        if self.training and self.views > 1:
            # SimCSE-style views: each comment again under other dropout masks, so every cell
            # has its own other view as a positive; both losses see every view.
            batch = {k: v.repeat(self.views, *[1] * (v.ndim - 1)) for k, v in batch.items()}
        out = self.net(batch["input_ids"], batch["attention_mask"], batch.get("ngram_ids"))
        if not self.has_losses:  # loaded for inference: scores only
            return out, {}
        # The contrastive loss over its chance level: comparable across batch sizes (train/val)
        # and queues. The candidates are read before the loss puts this batch in its queue.
        candidates = getattr(self.contrastive, "candidate_labels", lambda labels: labels)
        chance = contrastive_chance(
            candidates(batch["labels"]), getattr(self.contrastive, "negatives", "all")
        )
        focal = self.focal(out.logits, batch["labels"])
        contrastive = self.contrastive(out.projections, batch["labels"])
        total = self.balancer(focal, contrastive)
        return out, {
            "focal_loss": focal,
            "contrastive_loss": contrastive,
            "loss": total,
            "contrastive_norm": contrastive.detach() / chance,
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not self.has_losses:
            raise RuntimeError("this module was loaded for inference: it has no losses to train")
        _, losses = self._losses(batch)
        losses = {f"train/{k}": v for k, v in losses.items()}
        if self.check_finite:
            # The losses trained on; contrastive_norm is a reading of one of them.
            trained = {k: v for k, v in losses.items() if k != "train/contrastive_norm"}
            self._check_finite(trained, batch, batch_idx)
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
        # The balancer changes weights from LossDynamics's reading, after this epoch's.
        focal_weight, contrastive_weight = self.balancer.effective_weights()
        self.log("train/focal_weight_eff", focal_weight)
        self.log("train/contrastive_weight_eff", contrastive_weight)

    def on_train_start(self) -> None:
        self.val_pair_f1_best.reset()  # the sanity check's value is not a real best
        self.thresholds = {}  # tuned for other weights (a resumed tuned checkpoint): argmax
        from absa_lightning.callbacks import LossDynamics  # plots: only where training runs

        if getattr(self.balancer, "reads_curves", False) and not any(
            isinstance(c, LossDynamics) for c in self.trainer.callbacks
        ):
            raise AbsaUserError(
                f"{type(self.balancer).__name__} acts on the loss-dynamics reading, which is off",
                "loss/balancer",
                "keep callbacks.loss_dynamics (do not drop it with ~callbacks.loss_dynamics)",
            )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out, losses = self._losses(batch)
        self._log_means("val", self.val_losses, losses, len(batch["labels"]))
        self.val_scores.update(self.decoded(out.logits), batch["labels"])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_scores.compute()
        self.val_class_counts = self.val_scores.class_counts()  # LossDynamics's collapse test
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
        self.log_dict({f"{stage}/{name}": means[name] for name in losses})

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_scores.compute().items()})
        self.test_per_aspect = self.test_scores.per_aspect()
        self.test_scores.reset()

    def configure_optimizers(self):
        return self.optimization(int(self.trainer.estimated_stepping_batches))

    def optimization(self, total_steps: int):
        """The optimizer over the parameter groups, and its per-step schedule over `total_steps`."""
        if self.optimizer_factory is None:
            raise RuntimeError("this module was loaded for inference: it has no optimizer")
        groups = [
            {"params": self.net.encoder_parameters(), "lr": self.hparams.encoder_lr},
            {"params": self.net.head_parameters()},  # the optimizer's own lr
            *self.net.ngram_parameter_groups(),  # model.ngrams.lr, model.ngrams.weight_decay
        ]
        if balancer_parameters := list(self.balancer.parameters()):
            groups.append({"params": balancer_parameters, "weight_decay": 0.0})
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
