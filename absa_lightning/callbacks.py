"""Callbacks that read a run for the user: the loss curves, and the embedding space."""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from absa_lightning import diagnostics, plots
from absa_lightning.metrics import embedding_space_scores

log = logging.getLogger(__name__)

DYNAMICS_COLUMNS = (
    "epoch",
    "focal",
    "contrastive",
    "contrastive_norm",
    "total",
    "val_focal",
    "val_contrastive",
    "val_contrastive_norm",
    "val_total",
    "val_aspect_f1",
    "val_pair_f1",
    "focal_weight",
    "contrastive_weight",
    "max_epochs",
    "collapsed",
    "aspects_with_gold",
    "regime",
    "held",
    "override",
    "evidence",
)
METRIC_KEYS = {  # row column -> logged metric (train: epoch means)
    "focal": "train/focal_loss_epoch",
    "contrastive": "train/contrastive_loss_epoch",
    "contrastive_norm": "train/contrastive_norm_epoch",
    "total": "train/loss_epoch",
    "val_focal": "val/focal_loss",
    "val_contrastive": "val/contrastive_loss",
    "val_contrastive_norm": "val/contrastive_norm",
    "val_total": "val/loss",
    "val_aspect_f1": "val/aspect_f1",
    "val_pair_f1": "val/pair_f1",
}


def _run_folder(trainer: L.Trainer) -> Path:
    """The run folder: the trainer's `default_root_dir` (conf/trainer: `${output_dir}`)."""
    folder = Path(trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_rows_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """`loss_dynamics.csv`, written beside and renamed into place (a kill leaves the old one)."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=DYNAMICS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


class LossDynamics(L.Callback):
    """After each epoch: which regime the run is in, its evidence, and the override to run.

    Reads the epoch means of the unweighted training losses, the validation losses and val F1s,
    and the validation heads' per-class prediction counts; reads the run with
    `absa_lightning.diagnostics.read`; logs the regime with its override; hands the reading to
    the model's balancer (`loss/balancer=rule` acts on it); keeps `loss_dynamics.csv` and
    `loss_dynamics.png` in the run folder up to date; prints the table and the final reading with
    its slopes when training ends. Its rows are the run's one per-epoch loss history, saved in
    checkpoints, so a resumed run continues it.
    """

    def __init__(
        self,
        thresholds: dict[str, Any] | None = None,
        suggestion_step: float = 0.1,
    ):
        self.thresholds = diagnostics.Thresholds(**(thresholds or {}))
        self.suggestion_step = suggestion_step
        self.rows: dict[int, dict[str, Any]] = {}
        self.reading: diagnostics.Reading | None = None

    def recipe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> diagnostics.Recipe:
        hparams = pl_module.hparams
        focal_weight, contrastive_weight = pl_module.balancer.effective_weights()
        alpha = hparams.loss["focal"].get("alpha")
        return diagnostics.Recipe(
            focal_weight=focal_weight,
            contrastive_weight=contrastive_weight,
            lr=float(hparams.optimizer.get("lr", 1e-3)),
            encoder_lr=float(hparams.encoder_lr),
            max_epochs=int(trainer.max_epochs or 1),
            # train.build resolves inverse_frequency into the weights: any list counts as set.
            focal_alpha="inverse_frequency" if alpha else None,
            weight_step=self.suggestion_step,
            focal_uniform=None
            if alpha
            else diagnostics.uniform_focal(
                len(hparams.polarities) + 1, float(hparams.loss["focal"].get("gamma", 2.0))
            ),
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if METRIC_KEYS["focal"] not in metrics:  # no training batch ran this epoch
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for column, key in METRIC_KEYS.items():
            row[column] = float(metrics[key]) if key in metrics else float("nan")
        # The weights in effect this epoch: the balancer updates from this reading.
        row["focal_weight"], row["contrastive_weight"] = pl_module.balancer.effective_weights()
        # The epochs this run was given: with trainer.max_epochs null (training_length), the
        # config on disk does not say; absa-advise reads it here.
        row["max_epochs"] = trainer.max_epochs
        troubled: list[str] = []
        counts = getattr(pl_module, "val_class_counts", None)
        if counts is not None:
            gold, predicted = (c.float().cpu() for c in counts)
            aspects = list(pl_module.hparams.aspects)
            troubled = [
                aspects[a]
                for a in diagnostics.collapsed_aspects(
                    gold, predicted, self.thresholds.collapse_share
                )
            ]
            row["aspects_with_gold"] = int((gold[:, 1:].sum(dim=1) > 0).sum())
        row["collapsed"] = ";".join(troubled)
        self.rows[row["epoch"]] = row
        history = [self.rows[e] for e in sorted(self.rows)]
        reading = diagnostics.read_history(
            history, self.recipe(trainer, pl_module), self.thresholds
        )
        self.reading = reading
        row["regime"], row["held"], row["override"] = reading.regime, reading.held, reading.override
        row["evidence"] = reading.evidence_line()
        pl_module.balancer.end_epoch(row["epoch"], reading, history)
        if trainer.is_global_zero:
            log.info(
                "epoch %d reading (%s): %s%s [%s]",
                row["epoch"],
                diagnostics.held_words(reading.held),
                reading.advice,
                f": {reading.override}" if reading.override else "",
                row["evidence"],
            )
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        folder = _run_folder(trainer)
        rows = [self.rows[e] for e in sorted(self.rows)]
        write_rows_csv(rows, folder / "loss_dynamics.csv")
        plots.loss_dynamics(rows, folder / "loss_dynamics.png", self.thresholds.patience)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            console = Console()
            console.print(self.table())
            console.print(self.final_reading())

    def final_reading(self) -> str:
        """The last epoch's regime, for how many consecutive epochs it held, the override and
        the evidence (the slopes): the console's last words on a run."""
        last = self.rows[max(self.rows)]
        held = int(last.get("held") or 1)
        return (
            f"reading: {last['regime'].replace('_', ' ')}, {diagnostics.held_words(held)}"
            + (f" → {last['override']}" if last["override"] else "")
            + f"\nevidence: {last.get('evidence') or '-'}"
        )

    def table(self) -> Table:
        table = Table(title="loss dynamics (train epoch means; val; contr = over its chance level)")
        headers = ("epoch", "focal", "contr", "val focal", "val contr", "pair F1", "status")
        for header in headers:
            table.add_column(header, justify="left" if header == "status" else "right")
        for epoch in sorted(self.rows):
            r = self.rows[epoch]
            status = r["regime"].replace("_", " ")
            if r["override"]:
                status += f" → {r['override']}"
            # Rows from checkpoints of older versions may lack a column.
            cells = (
                "focal",
                "contrastive_norm",
                "val_focal",
                "val_contrastive_norm",
                "val_pair_f1",
            )
            table.add_row(str(epoch), *(f"{float(r.get(c, 'nan')):.4f}" for c in cells), status)
        return table

    def diagnosis(self) -> dict[str, Any]:
        """The last epoch's regime, what it means, its evidence, the override (metrics.json)."""
        if not self.rows:
            return {}
        last = self.rows[max(self.rows)]
        return {
            "epoch": last["epoch"],
            "regime": last["regime"],
            "advice": diagnostics.ADVICE[last["regime"]],
            "held": int(last.get("held") or 1),
            "override": last["override"],
            "evidence": last.get("evidence", ""),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"rows": {e: dict(r) for e, r in self.rows.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = {int(e): dict(r) for e, r in state_dict["rows"].items()}


class EmbeddingSpace(L.Callback):
    """The aspect embeddings of the validation comments, measured and drawn.

    Before the first epoch, every `every_n_epochs` epochs (if set) and when training ends, it
    embeds the validation comments and, over the mentioned (aspect, polarity) cells, logs
    `val/emb_{silhouette,cos_within,cos_across_polarity,alignment,uniformity}` (see
    `absa_lightning.metrics.embedding_space_scores`) and draws `embeddings_<NN>.png`, NN = the
    epochs trained so far, one panel per aspect, coloured by polarity.

    `space` is the `AspectOutputs` field measured: `aspect_embeddings` (what both heads read)
    or `projections` (what the contrastive loss sees). `max_cells` caps the cells (a fixed
    random subset; the scores cost O(cells^2) memory). The cost is one forward pass over the
    validation split per measurement; `seconds` records it.
    """

    def __init__(
        self,
        every_n_epochs: int | None = None,
        space: str = "aspect_embeddings",
        max_cells: int = 6000,
        max_panels: int | None = None,
        seed: int = 0,
    ):
        self.every_n_epochs = every_n_epochs
        self.space = space
        self.max_cells = max_cells
        self.max_panels = max_panels
        self.seed = seed
        self.scores: dict[int, dict[str, float]] = {}  # by epochs trained; in checkpoints
        self.seconds: dict[int, float] = {}  # what each measurement cost; not state

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:  # before the first epoch; a resumed run measured it already
            self._measure(trainer, pl_module, epochs_trained=0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if self.every_n_epochs and done % self.every_n_epochs == 0:
            self._measure(trainer, pl_module, epochs_trained=done)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._measure(trainer, pl_module, epochs_trained=trainer.current_epoch)

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule, epochs_trained: int):
        if epochs_trained in self.scores or not trainer.is_global_zero:
            return
        started = time.perf_counter()
        points, cells = self._embed(trainer, pl_module)
        finite = points.isfinite().all(dim=1)
        if not finite.all():  # a run with check_finite=false may have diverged
            log.warning("embedding space: %d non-finite embeddings left out", int((~finite).sum()))
            points, cells = points[finite], cells[finite]
        if len(points) < 2:
            return
        if len(points) > self.max_cells:
            keep = torch.randperm(len(points), generator=torch.Generator().manual_seed(self.seed))
            points, cells = points[keep[: self.max_cells]], cells[keep[: self.max_cells]]
        scores = embedding_space_scores(points, cells[:, 0], cells[:, 1])

        hparams = pl_module.hparams
        folder = _run_folder(trainer)
        plots.embedding_panels(
            points,
            cells[:, 0],
            cells[:, 1],
            list(hparams.aspects),
            list(hparams.polarities),
            title=f"{self.space} of the validation comments after {epochs_trained} epochs: "
            f"silhouette {scores['silhouette']:.3f}",
            path=folder / f"embeddings_{epochs_trained:02d}.png",
            max_panels=self.max_panels,
        )
        self.scores[epochs_trained] = scores
        self.seconds[epochs_trained] = time.perf_counter() - started
        for logger in trainer.loggers:
            logger.log_metrics({f"val/emb_{k}": v for k, v in scores.items()}, trainer.global_step)
        log.info(
            "embedding space after %d epochs (%.1f s): %s",
            epochs_trained,
            self.seconds[epochs_trained],
            {k: round(v, 4) for k, v in scores.items()},
        )

    @torch.no_grad()
    def _embed(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """(cells, D) embeddings of the mentioned validation cells and their (aspect, polarity).

        Iterating a DataLoader draws from the global random generator: forked, so that measuring
        leaves training exactly as it would be without this callback.
        """
        cuda = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            was_training = pl_module.training
            pl_module.eval()
            embeddings, labels = [], []
            for batch in trainer.datamodule.val_dataloader():
                names = ("input_ids", "attention_mask", "ngram_ids")
                out = pl_module(*[batch[k].to(pl_module.device) for k in names if k in batch])
                mentioned = batch["labels"] > 0  # (B, A)
                aspect_ids = torch.arange(mentioned.shape[1]).expand_as(mentioned)
                points = getattr(out, self.space).float().cpu()  # (B, A, D)
                embeddings.append(points[mentioned])
                labels.append(
                    torch.stack([aspect_ids[mentioned], batch["labels"][mentioned]], dim=1)
                )
            pl_module.train(was_training)
        return torch.cat(embeddings), torch.cat(labels)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": {e: dict(s) for e, s in self.scores.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scores = {int(e): dict(s) for e, s in state_dict["scores"].items()}
