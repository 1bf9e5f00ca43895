"""How the focal and contrastive losses are weighted into one objective (`loss/balancer=...`).

Plain `torch.nn.Module`s: `balancer(focal, contrastive)` is the objective to minimise,
`effective_weights()` the weights it applies now, and `end_epoch(epoch, reading, rows)` gives
it, between epochs, the `LossDynamics` callback's reading and its per-epoch rows (the run's one
loss history). Everything a balancer learns or decides is in its `state_dict`, so a resumed run
carries on with the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from absa_lightning import diagnostics

log = logging.getLogger(__name__)


class LossBalancer(nn.Module):
    """The base of the balancers: `focal_weight * focal + contrastive_weight * contrastive`.

    The weights are validated once, where the run is built (`train.LossSettings`); a subclass
    checks only what its own method needs of them.
    """

    weights: torch.Tensor
    reads_curves = False  # True: needs LossDynamics's `end_epoch` calls (callbacks.loss_dynamics)

    def __init__(self, focal_weight: float, contrastive_weight: float):
        super().__init__()
        self.register_buffer("weights", torch.tensor([focal_weight, contrastive_weight]))
        self.last_epoch = -1

    def forward(self, focal: torch.Tensor, contrastive: torch.Tensor) -> torch.Tensor:
        return self.weights[0] * focal + self.weights[1] * contrastive

    def effective_weights(self) -> tuple[float, float]:
        focal_weight, contrastive_weight = (round(w, 6) for w in self.weights.tolist())
        return focal_weight, contrastive_weight

    def end_epoch(
        self, epoch: int, reading: diagnostics.Reading, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Between epochs: `LossDynamics`'s reading of this epoch and its rows so far (the one
        per-epoch history of the run). An epoch seen before (a resumed run re-running it) is a
        no-op."""
        if epoch <= self.last_epoch:
            return
        self.last_epoch = epoch
        self.update_weights(epoch, reading, rows)

    def update_weights(
        self, epoch: int, reading: diagnostics.Reading, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Set `weights` for the next epoch."""

    def get_extra_state(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # Checkpoints from before the history moved to LossDynamics hold it here.
        self.last_epoch = int(state.get("last_epoch", max(map(int, state.get("history", {-1: 0})))))


class StaticWeights(LossBalancer):
    """The configured weights, unchanged through training (`loss/balancer=static`)."""


class RuleBalancer(LossBalancer):
    """Applies the loss-dynamics reading between epochs (see `absa_lightning.diagnostics`).

    When the reading is "focal falls, contrastive flat", `step` of weight moves from focal to
    contrastive; "contrastive falls, focal flat" moves it back. Every other regime (over-fitting,
    collapse, under-training, ...) asks for something weights cannot give, and a contrastive
    weight of 0 is a recipe without that loss: no change then. Each weight stays within
    [min_weight, max_weight], the sum stays as configured. It acts only on a lag regime read in
    `thresholds.patience` consecutive epochs (readings flip near a threshold), and after a
    change it waits `thresholds.window` epochs, so that it judges curves made with the new
    weights.
    """

    reads_curves = True

    def __init__(
        self,
        focal_weight: float,
        contrastive_weight: float,
        step: float = 0.1,
        min_weight: float = 0.05,
        max_weight: float = 0.95,
        thresholds: dict[str, Any] | None = None,
    ):
        super().__init__(focal_weight, contrastive_weight)
        if not (step > 0 and 0 <= min_weight <= max_weight):
            raise ValueError(
                f"loss.balancer (rule): need step > 0 and 0 <= min_weight <= max_weight, got "
                f"step={step}, min_weight={min_weight}, max_weight={max_weight}"
            )
        for name, weight in (
            ("focal_weight", focal_weight),
            ("contrastive_weight", contrastive_weight),
        ):
            if weight > 0 and not min_weight <= weight <= max_weight:
                raise ValueError(
                    f"loss.{name}={weight} is outside loss.balancer's bounds "
                    f"[min_weight={min_weight}, max_weight={max_weight}]"
                )
        self.step, self.min_weight, self.max_weight = step, min_weight, max_weight
        self.thresholds = diagnostics.Thresholds(**(thresholds or {}))
        self.epochs_seen = 0
        self.last_change = -1

    def update_weights(
        self, epoch: int, reading: diagnostics.Reading, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        self.epochs_seen += 1
        if self.epochs_seen - 1 - self.last_change < self.thresholds.window:
            return
        if reading.held < self.thresholds.patience:
            return
        proposed = diagnostics.suggested_weights(
            reading.regime, *self.effective_weights(), self.step, self.min_weight, self.max_weight
        )
        if proposed is None:
            return
        new = torch.tensor(proposed)
        log.info(
            "loss/balancer=rule after epoch %d (%s): focal_weight %.3f -> %.3f, "
            "contrastive_weight %.3f -> %.3f",
            epoch,
            reading.regime,
            self.weights[0],
            new[0],
            self.weights[1],
            new[1],
        )
        self.weights.copy_(new)
        self.last_change = self.epochs_seen - 1

    def get_extra_state(self) -> dict[str, Any]:
        return {
            **super().get_extra_state(),
            "epochs_seen": self.epochs_seen,
            "last_change": self.last_change,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.epochs_seen = int(state.get("epochs_seen", len(state.get("history", {}))))
        self.last_change = int(state["last_change"])


class UncertaintyWeights(LossBalancer):
    """Learned homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, 2018).

    objective = sum_k exp(-s_k) * L_k + s_k / 2, with s_k = log sigma_k^2 learned with the
    model; the effective weight of loss k is exp(-s_k). The s_k start at -log(configured
    weight), so training starts from the configured weights. At a fixed L_k the optimum is
    exp(-s_k) = 1 / (2 L_k): the weights drift towards the inverse of each loss's level.
    """

    def __init__(self, focal_weight: float, contrastive_weight: float):
        super().__init__(focal_weight, contrastive_weight)
        if focal_weight <= 0 or contrastive_weight <= 0:
            raise ValueError(
                "loss/balancer=uncertainty learns log-variances from the configured weights, "
                f"which must both be > 0: got {focal_weight} and {contrastive_weight}"
            )
        self.log_variances = nn.Parameter(-torch.log(self.weights.clone()))

    def forward(self, focal: torch.Tensor, contrastive: torch.Tensor) -> torch.Tensor:
        losses = torch.stack([focal, contrastive])
        return (torch.exp(-self.log_variances) * losses + 0.5 * self.log_variances).sum()

    def effective_weights(self) -> tuple[float, float]:
        weights = torch.exp(-self.log_variances.detach()).tolist()
        focal_weight, contrastive_weight = (round(w, 6) for w in weights)
        return focal_weight, contrastive_weight


class WarmStart(LossBalancer):
    """Classification first, then both losses (`loss/balancer=warm_start`): the contrastive
    weight is 0 for the first `epochs` epochs and the configured one after.

    The heads then start from an encoder that classification has shaped, and the contrastive
    term refines it rather than organising a space the heads have yet to use. The contrastive
    loss is still computed and logged in the first epochs, so its curve shows where it started.
    """

    reads_curves = True  # switches in `end_epoch`, which LossDynamics calls

    def __init__(self, focal_weight: float, contrastive_weight: float, epochs: int = 1):
        if not (isinstance(epochs, int) and epochs >= 0):
            raise ValueError(f"loss.balancer.epochs must be an integer >= 0, got {epochs!r}")
        super().__init__(focal_weight, contrastive_weight if epochs == 0 else 0.0)
        self.epochs = epochs
        self.register_buffer("configured", torch.tensor([focal_weight, contrastive_weight]))

    def update_weights(
        self, epoch: int, reading: diagnostics.Reading, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        if epoch + 1 >= self.epochs:
            self.weights.copy_(self.configured)


class DynamicWeightAverage(LossBalancer):
    """Dynamic weight averaging (Liu, Johns & Davison, 2019), around the configured weights.

    With r_k = L_k(t-1) / L_k(t-2), the descent rate of loss k over the last two epochs,
    weight_k(t) = configured_k * K * softmax(r / temperature)_k: a loss that stopped falling
    (r near 1) gains weight over one that still falls fast. Equal rates give the configured
    weights; the first two epochs use them.
    """

    reads_curves = True

    def __init__(self, focal_weight: float, contrastive_weight: float, temperature: float = 2.0):
        super().__init__(focal_weight, contrastive_weight)
        if not temperature > 0:
            raise ValueError(f"loss.balancer.temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.register_buffer("configured", self.weights.clone())

    def update_weights(
        self, epoch: int, reading: diagnostics.Reading, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        if len(rows) < 2:
            return
        previous = torch.tensor([rows[-2]["focal"], rows[-2]["contrastive"]]).clamp(min=1e-12)
        rates = torch.tensor([rows[-1]["focal"], rows[-1]["contrastive"]]) / previous
        share = torch.softmax(rates / self.temperature, dim=0) * len(rates)
        self.weights.copy_(self.configured * share)
