"""Train: data, encoder, model, trainer from the config; fit; test the best checkpoint; report.

python train.py loss.contrastive_weight=0.3
python train.py -m loss.focal_weight=0.7,0.8,0.9
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from absa_lightning import report, thresholds
from absa_lightning.callbacks import EmbeddingSpace, LossDynamics
from absa_lightning.checkpointing import resume_checkpoint
from absa_lightning.config import CONF_DIR
from absa_lightning.errors import AbsaUserError, check_arguments, reports_user_errors
from absa_lightning.models import AspectSentimentNet
from absa_lightning.models.network import class_priors
from absa_lightning.module import AspectSentimentModule
from absa_lightning.pretraining import masked_lm_pretraining

log = logging.getLogger(__name__)


def focal_alpha(alpha, class_counts: torch.Tensor) -> list[float] | None:
    """`loss.focal.alpha`: null, one weight per class, or `inverse_frequency` of the train split."""
    if alpha != "inverse_frequency":
        return alpha
    weights = class_counts.sum() / class_counts.clamp(min=1).float()
    return (weights / weights.sum() * len(weights)).tolist()  # mean weight 1


def instantiate_all(group: DictConfig | None) -> list:
    """A config group of named objects (callbacks, loggers) -> the objects; `null` entries drop."""
    return [instantiate(c) for c in (group or {}).values() if c is not None]


def callback_reports(trainer: L.Trainer) -> dict:
    """What the reading callbacks found: the last regime, the embedding scores by epoch."""
    reports = {}
    for callback in trainer.callbacks:
        if isinstance(callback, LossDynamics):
            reports["diagnosis"] = callback.diagnosis()
        if isinstance(callback, EmbeddingSpace):
            reports["embedding_space"] = {
                f"after_{e}_epochs": {**s, "time_s": callback.seconds.get(e)}
                for e, s in callback.scores.items()
            }
    return reports


@dataclass(frozen=True)
class LossSettings:
    """`loss.focal_weight`, `loss.contrastive_weight`, `loss.check_finite`, `loss.views`:
    checked here, once."""

    focal_weight: float
    contrastive_weight: float
    check_finite: bool = True
    views: int = 1

    def __post_init__(self) -> None:
        for name in ("focal_weight", "contrastive_weight"):
            if not getattr(self, name) >= 0:
                raise AbsaUserError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if not (isinstance(self.views, int) and self.views >= 1):
            raise AbsaUserError(f"loss.views must be an integer >= 1, got {self.views!r}")
        if self.focal_weight == 0 and self.contrastive_weight == 0:
            raise AbsaUserError(
                "loss.focal_weight and loss.contrastive_weight are both 0: nothing to train"
            )


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, AspectSentimentModule]:
    """The data (set up for fitting) and the model that `cfg` describes, every part built here."""
    settings = LossSettings(
        cfg.loss.focal_weight,
        cfg.loss.contrastive_weight,
        cfg.loss.get("check_finite", True),
        cfg.loss.get("views", 1),
    )
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer, encoder = instantiate(cfg.model.encoder)(texts=datamodule.train_texts())
    pretraining = dict(cfg.model.get("pretraining") or {})
    if pretraining.get("epochs", 0) > 0:
        stage = instantiate(
            cfg.trainer,
            max_epochs=pretraining.pop("epochs"),
            callbacks=[],
            logger=False,
            enable_checkpointing=False,
        )
        masked_lm_pretraining(tokenizer, encoder, datamodule.train_texts(), stage, **pretraining)
    aspects, polarities = datamodule.aspects, datamodule.polarities
    num_classes = 1 + len(polarities)
    head = OmegaConf.to_container(cfg.model.head, resolve=True)
    if head.pop("prior_bias_init", False):
        head["class_priors"] = class_priors(datamodule.datasets["train"].labels, num_classes)
    ngrams = cfg.model.get("ngrams")  # null: no n-gram branch
    branch = instantiate(ngrams)(len(aspects), num_classes) if ngrams else None
    net = AspectSentimentNet(encoder, len(aspects), num_classes, **head, ngrams=branch)
    datamodule.set_tokenizer(tokenizer, ngrams=net.ngram_hashing)

    alpha = focal_alpha(cfg.loss.focal.get("alpha"), datamodule.class_counts())
    recipe = {  # for the record (hparams.yaml, checkpoints): plain data, never built again
        key: OmegaConf.to_container(cfg[key], resolve=True) if cfg[key] else None
        for key in ("loss", "optimizer", "scheduler")
    }
    recipe["loss"]["focal"]["alpha"] = alpha
    model = AspectSentimentModule(
        net,
        tokenizer,
        aspects,
        polarities,
        focal=instantiate(cfg.loss.focal, alpha=alpha),
        contrastive=instantiate(cfg.loss.contrastive),
        balancer=instantiate(
            cfg.loss.balancer,
            focal_weight=settings.focal_weight,
            contrastive_weight=settings.contrastive_weight,
        ),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.scheduler else None,
        encoder_lr=cfg.model.encoder_lr,
        check_finite=settings.check_finite,
        views=settings.views,
        max_length=cfg.data.max_length,
        preprocess=datamodule.preprocess_spec,
        recipe=recipe,
    )
    return datamodule, model


def scale_training_length(cfg: DictConfig, num_comments: int) -> None:
    """Set `trainer.max_epochs` and the early-stopping patience from `cfg.model.training_length`,
    unless `trainer.max_epochs` is set (a number wins, with the patience as configured)."""
    if cfg.trainer.get("max_epochs") is not None:
        return
    scaled = instantiate(cfg.model.training_length).for_data(num_comments, cfg.data.batch_size)
    if scaled is None:
        raise AbsaUserError(
            "trainer.max_epochs and model.training_length.target_steps are both null: set one"
        )
    cfg.trainer.max_epochs, patience = scaled
    if cfg.callbacks and cfg.callbacks.get("early_stopping") is not None:
        cfg.callbacks.early_stopping.patience = patience
    log.info("%d training comments: max_epochs %d, patience %d", num_comments, *scaled)


def train(cfg: DictConfig) -> dict:
    """One training run; returns what it writes to `metrics.json` in `cfg.output_dir`."""
    for group in ("trainer", "data"):  # before the data loads: a bad value fails in seconds
        check_arguments(cfg[group], group)
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.output_dir)
    datamodule, model = build(cfg)
    scale_training_length(cfg, len(datamodule.datasets["train"]))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=instantiate_all(cfg.callbacks), logger=instantiate_all(cfg.logger)
    )
    resume_from = resume_checkpoint(run_dir, cfg.ckpt_path, cfg.resume)
    if resume_from:
        log.info("resuming from %s", resume_from)
    fit_start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    fit_seconds = time.perf_counter() - fit_start  # of this process: a resumed run's remainder
    losses = report.final_losses(trainer.callback_metrics)
    # Before validate/test load the best checkpoint, with its older balancer and callback state.
    focal_weight, contrastive_weight = model.balancer.effective_weights()
    readings = callback_reports(trainer)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt_path = best or None  # fast_dev_run saves no checkpoint: use the weights in memory
    best_val = report.scalars(
        trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path)[0]
    )
    argmax_decoding = {}
    if cfg.tune_thresholds:  # the model holds the best weights: tune them on dev, then score
        argmax_decoding = {
            "best_val": best_val,
            "test": report.scalars(
                trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)[0]
            ),
        }
        thresholds.tune_on_dev(
            model,
            datamodule,
            cfg.threshold_grid_step,
            best,
            objective=cfg.threshold_objective,
            write=trainer.is_global_zero,
        )
        trainer.strategy.barrier()  # the checkpoint holds them before any process reloads it
        best_val = report.scalars(
            trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path)[0]
        )
    test = report.scalars(trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)[0])
    per_aspect = report.per_aspect_rows(datamodule.aspects, model.test_per_aspect)

    metrics = {
        "test": test,
        "best_val": best_val,
        "final_losses": losses,
        "effective_weights": {
            "focal_weight": focal_weight,
            "contrastive_weight": contrastive_weight,
        },
        **readings,
        "per_aspect": per_aspect,
        "thresholds": model.thresholds,  # tuned on dev; {}: argmax decoding
        **({"argmax_decoding": argmax_decoding} if argmax_decoding else {}),
        "fit_seconds": fit_seconds,
        "train_comments": len(datamodule.datasets["train"]),
        "epochs_trained": trainer.current_epoch,  # fewer than max_epochs after early stopping
        "best_checkpoint": best,
        "aspects": datamodule.aspects,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:  # every DDP process gets here with the same (synced) metrics
        report.print_per_aspect_table(
            per_aspect, title=f"{datamodule.test_split} split, per aspect"
        )
        run_dir.mkdir(parents=True, exist_ok=True)  # fast_dev_run writes nothing else there
        report.write_json(run_dir / "metrics.json", metrics)
        log.info("test: %s", {k: round(v, 4) for k, v in test.items()})
        log.info("run folder: %s", run_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@reports_user_errors
def main(cfg: DictConfig) -> float | None:
    """The value a sweeper optimises: `optimized_metric` of the best validation epoch."""
    return train(cfg)["best_val"].get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
