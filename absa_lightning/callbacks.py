"""Callbacks that read a run for the user: the two loss curves, and the embedding space."""

from __future__ import annotations

import csv
import logging
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
    "total",
    "val_focal",
    "val_contrastive",
    "val_total",
    "val_aspect_f1",
    "val_pair_f1",
    "focal_weight",
    "contrastive_weight",
    "regime",
    "override",
)
METRIC_KEYS = {  # row column -> logged metric (train: epoch means)
    "focal": "train/focal_loss_epoch",
    "contrastive": "train/contrastive_loss_epoch",
    "total": "train/loss_epoch",
    "val_focal": "val/focal_loss",
    "val_contrastive": "val/contrastive_loss",
    "val_total": "val/loss",
    "val_aspect_f1": "val/aspect_f1",
    "val_pair_f1": "val/pair_f1",
}


def _run_folder(trainer: L.Trainer) -> Path:
    """The run folder: the trainer's `default_root_dir` (conf/trainer: `${output_dir}`)."""
    folder = Path(trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class LossDynamics(L.Callback):
    """After each epoch: which regime the loss curves are in, and what to change.

    Reads the epoch means of the unweighted training losses (the curves the table is about),
    the validation losses and val F1s; classifies the last `thresholds.window` epochs with
    `absa_lightning.diagnostics.classify`; logs the regime with an override line to paste; keeps
    `loss_dynamics.csv` and `loss_dynamics.png` in the run folder up to date; prints the table
    `epoch | focal | contr | pair F1 | status` when training ends. Its history is saved in
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

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if METRIC_KEYS["focal"] not in metrics:  # no training batch ran this epoch
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for column, key in METRIC_KEYS.items():
            row[column] = float(metrics[key]) if key in metrics else float("nan")
        # The weights in effect this epoch: the module's balancer updates after this hook.
        row["focal_weight"], row["contrastive_weight"] = pl_module.balancer.effective_weights()
        self.rows[row["epoch"]] = row
        history = [self.rows[e] for e in sorted(self.rows)]
        regime = diagnostics.classify(
            [r["focal"] for r in history],
            [r["contrastive"] for r in history],
            [r["val_pair_f1"] for r in history],
            self.thresholds,
        )
        weights = (row["focal_weight"], row["contrastive_weight"])
        suggestion = diagnostics.suggested_weights(regime, *weights, self.suggestion_step)
        row["regime"], row["override"] = regime, diagnostics.override_line(suggestion)
        if trainer.is_global_zero:
            log.info(
                "epoch %d loss dynamics: %s%s",
                row["epoch"],
                diagnostics.ADVICE[regime],
                f": {row['override']}" if row["override"] else "",
            )
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        folder = _run_folder(trainer)
        rows = [self.rows[e] for e in sorted(self.rows)]
        with open(folder / "loss_dynamics.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=DYNAMICS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        plots.loss_dynamics(rows, folder / "loss_dynamics.png")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            Console().print(self.table())

    def table(self) -> Table:
        table = Table(title="loss dynamics (train epoch means, val pair F1)")
        for header in ("epoch", "focal", "contr", "pair F1", "status"):
            table.add_column(header, justify="left" if header == "status" else "right")
        for epoch in sorted(self.rows):
            r = self.rows[epoch]
            status = r["regime"].replace("_", " ")
            if r["override"]:
                status += f" → {r['override']}"
            table.add_row(
                str(epoch),
                f"{r['focal']:.4f}",
                f"{r['contrastive']:.4f}",
                f"{r['val_pair_f1']:.4f}",
                status,
            )
        return table

    def diagnosis(self) -> dict[str, Any]:
        """The last epoch's regime, what it means and the override to paste (metrics.json)."""
        if not self.rows:
            return {}
        last = self.rows[max(self.rows)]
        return {
            "epoch": last["epoch"],
            "regime": last["regime"],
            "advice": diagnostics.ADVICE[last["regime"]],
            "override": last["override"],
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
                out = pl_module(
                    batch["input_ids"].to(pl_module.device),
                    batch["attention_mask"].to(pl_module.device),
                )
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
