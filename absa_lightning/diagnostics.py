"""Reading a run's curves: which regime it is in, the evidence, and the override to run next.

A pure function of the per-epoch rows that `LossDynamics` records (training epoch means, the
validation losses and pair F1, the validation heads' per-class prediction counts), so it can be
tested on synthetic curves and used by the callback (to tell), `absa-advise` (to tell and check)
and `loss/balancer=rule` (to act). Slopes are least-squares fits over the last `window` epochs;
a loss's slope is relative to its mean level in the window (-0.05 = falls 5% of itself an epoch),
val pair F1's is absolute (F1 points an epoch). The first regime whose test holds is the reading:

| regime           | test (last `window` epochs)                  | override                      |
| ---------------- | -------------------------------------------- | ----------------------------- |
| warming_up       | fewer than `window` epochs                   | none                          |
| collapse         | >= collapse_aspects of the aspects with gold | lr / 10 if a loss jumped;     |
|                  | mentions have a collapsed head (see below)   | else focal.alpha=inverse_freq |
|                  |                                              | (lr / 2 if already set)       |
| over_fitting     | a val loss rises while train focal falls     | lr / 2 (heads and encoder)    |
|                  | (rise > overfit_rise) or holds (rise > flat);|                               |
|                  | best val F1 before the last epoch            |                               |
| under_training   | val pair F1 rises > f1_flat_threshold, its   | trainer.max_epochs x 2        |
|                  | best is the last epoch; or every epoch used  |                               |
|                  | and val focal still falls                    |                               |
| healthy          | both train losses fall at comparable rates   | none                          |
| contrastive_lags | focal falls, contrastive flat                | weight step to contrastive    |
| focal_lags       | contrastive falls, focal flat                | weight step to focal          |
| converged        | both flat at a low level, val F1 flat        | none                          |
| stalled          | neither falls                                | lr / 10 if a loss jumped,     |
|                  |                                              | else lr x 3                   |

A loss *jumped* when a trained loss's epoch mean ever rose more than `loss_jump` (10%) of itself
from one epoch to the next, or the training focal loss's epoch mean was ever above twice what
a uniform guess scores (`uniform_focal`; it blew up within an epoch): the marks of a learning
rate too high (a learning rate too low moves the losses by less than their noise).

A head is collapsed when it predicts one class for >= collapse_share of the validation cells
while that class is rarer than that in the gold labels (e.g. "absent" for every cell of an
aspect that is mentioned).

Readings flip near a threshold from one epoch to the next: `read_history` reads every epoch
and counts the consecutive epochs the last regime has held, and `loss/balancer=rule` acts only
on a regime held `patience` epochs.

A loss whose weight is 0 is not trained: it has no regime (the lag regimes need both weights
> 0). The contrastive loss is read as a fraction of its chance level (`contrastive_chance`),
so a training batch of 32 comments and a validation batch of 64 give comparable levels.

A falling contrastive loss means that same-label embeddings are already closer together and
different labels further apart; it never means the loss "pushes" harder.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

HEALTHY = "healthy"
CONTRASTIVE_LAGS = "contrastive_lags"
FOCAL_LAGS = "focal_lags"
STALLED = "stalled"
CONVERGED = "converged"
WARMING_UP = "warming_up"
OVER_FITTING = "over_fitting"
UNDER_TRAINING = "under_training"
COLLAPSE = "collapse"
REGIMES = (
    WARMING_UP,
    COLLAPSE,
    OVER_FITTING,
    UNDER_TRAINING,
    HEALTHY,
    CONTRASTIVE_LAGS,
    FOCAL_LAGS,
    CONVERGED,
    STALLED,
)

ADVICE = {
    # Not "both learn": a run with contrastive_weight 0 trains (and is read on) focal only.
    HEALTHY: "healthy: every trained loss falls or has settled, validation with it; keep the "
    "recipe",
    CONTRASTIVE_LAGS: "focal falls, contrastive flat: the heads fit the labels but same-label "
    "embeddings are not getting closer; raise contrastive_weight",
    FOCAL_LAGS: "contrastive falls, focal flat: same-label embeddings are getting closer but "
    "the heads do not separate them yet; raise focal_weight",
    STALLED: "neither loss falls: an optimisation problem; change the learning rate (lower if "
    "a loss jumped, else higher), then check the data",
    CONVERGED: "both losses flat at a low level and val pair F1 flat: converged; stop here",
    WARMING_UP: "not enough epochs yet to read the curves",
    OVER_FITTING: "training loss falls or holds while validation loss rises and val pair F1 "
    "peaked earlier: over-fitting; lower the learning rate (or stop earlier, regularise)",
    UNDER_TRAINING: "val pair F1 still rising, or val loss still falling, at the last epoch: "
    "under-trained; train longer",
    COLLAPSE: "most aspect heads predict one class for nearly every cell: collapsed; if a loss "
    "jumped, lower the learning rate, else weight the rare classes up "
    "(loss.focal.alpha=inverse_frequency)",
}


@dataclass(frozen=True)
class Thresholds:
    """How the curves are read (`diagnostics.*` in conf/train.yaml).

    window: epochs in each slope fit (>= 2).
    flat_threshold: a loss is flat when its relative slope is within +-this per epoch.
    rate_ratio: both falling, one > rate_ratio times faster (relative): the slower is flat.
    converged_drop: "a low level": a flat loss at most (1 - converged_drop) of its first epoch.
    f1_flat_threshold: val pair F1 is flat within +-this (absolute F1) per epoch.
    overfit_rise: a validation loss rising more than this (relative, per epoch) while the
        training focal loss falls reads as over-fitting.
    collapse_share: a head is collapsed when one class takes >= this share of its predictions
        on validation while that class's share of the gold labels is below it.
    collapse_aspects: collapse when >= this share of the aspects with gold mentions are.
    loss_jump: a trained loss whose epoch mean rises more than this (relative) from one epoch
        to the next jumped: the learning rate is too high (stalled and collapse advice).
    patience: `loss/balancer=rule` acts on a regime only once it has been read in this many
        consecutive epochs (>= 1): one epoch's noise near a threshold does not move weights.
    """

    window: int = 3
    flat_threshold: float = 0.02
    rate_ratio: float = 4.0
    converged_drop: float = 0.3
    f1_flat_threshold: float = 0.005
    overfit_rise: float = 0.01
    collapse_share: float = 0.99
    collapse_aspects: float = 0.8
    loss_jump: float = 0.1
    patience: int = 2

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"diagnostics.window must be >= 2 epochs, got {self.window}")
        if not (isinstance(self.patience, int) and self.patience >= 1):
            raise ValueError(f"diagnostics.patience must be an integer >= 1, got {self.patience}")
        if not self.flat_threshold > 0:
            raise ValueError(f"diagnostics.flat_threshold must be > 0, got {self.flat_threshold}")
        if not self.rate_ratio >= 1:
            raise ValueError(f"diagnostics.rate_ratio must be >= 1, got {self.rate_ratio}")
        if not 0 <= self.converged_drop < 1:
            raise ValueError(
                f"diagnostics.converged_drop must be in [0, 1), got {self.converged_drop}"
            )
        if not self.loss_jump > 0:
            raise ValueError(f"diagnostics.loss_jump must be > 0, got {self.loss_jump}")
        for name in ("collapse_share", "collapse_aspects"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"diagnostics.{name} must be in (0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Recipe:
    """The knobs the overrides change, as the run had them (Hydra keys)."""

    focal_weight: float = 0.8
    contrastive_weight: float = 0.2
    lr: float = 1e-3
    encoder_lr: float = 1e-3
    max_epochs: int = 8
    focal_alpha: Any = None
    weight_step: float = 0.1
    # The focal loss of a uniform guess (`uniform_focal`); None: unknown, or class weights set.
    focal_uniform: float | None = None

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], weight_step: float = 0.1, max_epochs: int | None = None
    ) -> Recipe:
        """From a train.yaml config (a dict or DictConfig), as `.hydra/config.yaml` holds it.
        `max_epochs`: the epochs the run was given, where the config's is null (the default:
        `training_length` sets it from the data when training starts)."""
        alpha = cfg["loss"]["focal"].get("alpha")
        configured = cfg["trainer"].get("max_epochs")
        epochs = int(configured) if configured is not None else max_epochs
        if epochs is None:
            raise ValueError("trainer.max_epochs is null and the epochs given are not known")
        polarities = cfg["data"].get("polarities")
        return cls(
            focal_weight=float(cfg["loss"]["focal_weight"]),
            contrastive_weight=float(cfg["loss"]["contrastive_weight"]),
            lr=float(cfg["optimizer"]["lr"]),
            encoder_lr=float(cfg["model"]["encoder_lr"]),
            max_epochs=epochs,
            focal_alpha=alpha,
            weight_step=weight_step,
            focal_uniform=None
            if alpha is not None or not polarities
            else uniform_focal(len(polarities) + 1, float(cfg["loss"]["focal"].get("gamma", 2.0))),
        )


def uniform_focal(classes: int, gamma: float) -> float:
    """The focal loss (no class weights) of a model that gives every class 1 / classes: a
    training mean of twice that is far worse than guessing, a learning rate too high."""
    return (1 - 1 / classes) ** gamma * math.log(classes)


@dataclass
class Reading:
    """A regime, its evidence (slopes, troubled aspects) and the Hydra override to run.

    held: the consecutive epochs, up to this one, read as this regime (`read_history`).
    """

    regime: str
    override: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    held: int = 1

    @property
    def advice(self) -> str:
        return ADVICE[self.regime]

    def evidence_line(self) -> str:
        return " ".join(
            f"{k}={v:+.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in self.evidence.items()
        )


def held_words(held: int) -> str:
    """How long a reading has held, in words: "held 3 consecutive epochs"."""
    return f"held {held} consecutive epochs" if held != 1 else "held 1 epoch"


def slope(values: Sequence[float]) -> float:
    """Least-squares slope per step of `values` (at least two)."""
    y = torch.as_tensor(values, dtype=torch.float64)
    x = torch.arange(len(y), dtype=torch.float64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def relative_slope(values: Sequence[float]) -> float:
    """Slope per step as a fraction of the mean level: -0.1 = falling 10% of itself a step."""
    level = abs(sum(values) / len(values))
    return slope(values) / level if level > 0 else 0.0


def contrastive_chance(labels: torch.Tensor, negatives: str = "all") -> torch.Tensor:
    """SupCon's value when every candidate is equally similar: the mean over anchors with a
    positive of log(their candidates). Dividing by it makes batches of any size comparable
    (1 = chance, 0 = perfect). `labels` (B, A), 0 = absent; one when no anchor has a positive.
    """
    mentioned = labels > 0
    classes = int(labels.max()) + 1 if labels.numel() else 1
    per_class = torch.nn.functional.one_hot(labels, classes).sum(dim=0)  # (A, C)
    positives = per_class.gather(1, labels.T).T - 1  # (B, A): same aspect, same class, not self
    if negatives == "same_aspect":
        candidates = per_class[:, 1:].sum(dim=1).expand_as(labels) - 1
    else:
        candidates = mentioned.sum().expand_as(labels) - 1
    anchors = mentioned & (positives > 0) & (candidates > 1)
    if not bool(anchors.any()):
        return torch.ones((), dtype=torch.float32, device=labels.device)
    return candidates[anchors].float().log().mean()


def collapsed_aspects(gold: torch.Tensor, predicted: torch.Tensor, share: float) -> list[int]:
    """The aspects (with gold mentions) whose head predicts one class for >= `share` of the
    cells while that class is rarer than `share` in the gold labels. `gold`, `predicted`:
    (A, C) per-class cell counts on validation (class 0 = absent)."""
    cells = predicted.sum(dim=1).clamp(min=1)
    top_share, top = (predicted / cells[:, None]).max(dim=1)
    gold_share = gold.gather(1, top[:, None]).squeeze(1) / gold.sum(dim=1).clamp(min=1)
    troubled = (gold[:, 1:].sum(dim=1) > 0) & (top_share >= share) & (gold_share < share)
    return troubled.nonzero().flatten().tolist()


def _column(rows: Sequence[Mapping[str, Any]], *keys: str) -> list[float] | None:
    """The first of `keys` every row has as a finite number, as floats; None if none does."""
    for key in keys:
        values = [_number(r.get(key)) for r in rows]
        if values and all(v is not None and math.isfinite(v) for v in values):
            return values  # type: ignore[return-value]
    return None


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _lr_override(recipe: Recipe, factor: float) -> str:
    lr, encoder_lr = recipe.lr * factor, recipe.encoder_lr * factor
    return f"optimizer.lr={lr:.3g} model.encoder_lr={encoder_lr:.3g}"


def weight_override(focal_weight: float, contrastive_weight: float) -> str:
    """`loss.focal_weight=0.7 loss.contrastive_weight=0.3` (rounded, as a user would type)."""
    focal_weight, contrastive_weight = round(focal_weight, 4), round(contrastive_weight, 4)
    return f"loss.focal_weight={focal_weight:g} loss.contrastive_weight={contrastive_weight:g}"


def suggested_weights(
    regime: str,
    focal_weight: float,
    contrastive_weight: float,
    step: float = 0.1,
    min_weight: float = 0.0,
    max_weight: float = float("inf"),
) -> tuple[float, float] | None:
    """The lag regimes' change of weights: up to `step` moves to the lagging loss.

    None when the regime asks for no change of weights, or the bounds leave no room. The sum of
    the two weights is kept, and the move stops where either would leave [min_weight,
    max_weight]. A loss with weight 0 is not trained: no weight moves to or from it.
    """
    if focal_weight <= 0 or contrastive_weight <= 0:
        return None
    if regime == CONTRASTIVE_LAGS:
        moved = min(step, focal_weight - min_weight, max_weight - contrastive_weight)
        return (focal_weight - moved, contrastive_weight + moved) if moved > 1e-9 else None
    if regime == FOCAL_LAGS:
        moved = min(step, contrastive_weight - min_weight, max_weight - focal_weight)
        return (focal_weight + moved, contrastive_weight - moved) if moved > 1e-9 else None
    return None


def read(
    rows: Sequence[Mapping[str, Any]],
    recipe: Recipe = Recipe(),
    thresholds: Thresholds = Thresholds(),
    troubled_aspects: Sequence[str] = (),
    aspects_with_gold: int = 0,
) -> Reading:
    """The reading of `rows` (per-epoch dicts, oldest first, the whole run so far).

    Columns read: focal, contrastive(_norm), val_focal, val_contrastive(_norm), val_pair_f1;
    the weights come from the last row when it has them, else from `recipe`.
    `troubled_aspects` are the last epoch's collapsed heads (`collapsed_aspects`), of
    `aspects_with_gold` aspects with gold mentions on validation.
    """
    w = thresholds.window
    if len(rows) < w:
        return Reading(WARMING_UP)
    last = rows[-1]
    focal_weight = _number(last.get("focal_weight"))
    focal_weight = recipe.focal_weight if focal_weight is None else focal_weight
    contrastive_weight = _number(last.get("contrastive_weight"))
    if contrastive_weight is None:
        contrastive_weight = recipe.contrastive_weight

    evidence: dict[str, Any] = {}
    trained = {
        "focal": (focal_weight > 0, ("focal",), ("val_focal",)),
        "contrastive": (
            contrastive_weight > 0,
            ("contrastive_norm", "contrastive"),
            ("val_contrastive_norm", "val_contrastive"),
        ),
    }
    train_rate: dict[str, float] = {}
    val_rate: dict[str, float] = {}
    history: dict[str, list[float]] = {}
    for name, (is_trained, train_keys, val_keys) in trained.items():
        if not is_trained:
            continue  # a loss with weight 0 has no regime
        curve = _column(rows, *train_keys)
        if curve is not None:
            history[name] = curve
            train_rate[name] = evidence[f"{name}_slope"] = relative_slope(curve[-w:])
        val_curve = _column(rows[-w:], *val_keys)
        if val_curve is not None:
            val_rate[name] = evidence[f"val_{name}_slope"] = relative_slope(val_curve)
    f1 = _column(rows, "val_pair_f1")
    if f1 is not None:
        evidence["val_pair_f1_slope"] = slope(f1[-w:])
        best = max(range(len(f1)), key=f1.__getitem__)
        evidence["best_epoch"] = int(_number(rows[best].get("epoch")) or best)

    jumped = any(
        b > a * (1 + thresholds.loss_jump)
        for h in history.values()
        for a, b in itertools.pairwise(h)
    )
    # A focal epoch mean twice a uniform guess's: it blew up within an epoch (an untrained
    # model starts near the uniform level, a little above it from its random logits).
    uniform = recipe.focal_uniform
    if uniform is not None and "focal" in history and max(history["focal"]) > 2 * uniform:
        evidence["focal_above_uniform_guess"] = True
        jumped = True

    # Collapse: the heads, whatever the curves say.
    if troubled_aspects and aspects_with_gold:
        evidence["collapsed_heads"] = f"{len(troubled_aspects)}/{aspects_with_gold}"
        # Named even when too few for the collapse regime: a rare aspect never predicted.
        evidence["collapsed"] = ";".join(troubled_aspects)
        if len(troubled_aspects) >= thresholds.collapse_aspects * aspects_with_gold:
            evidence["loss_jumped"] = jumped
            if jumped:  # the heads gave up under a learning rate too high
                override = _lr_override(recipe, 0.1)
            elif recipe.focal_alpha != "inverse_frequency":
                override = "loss.focal.alpha=inverse_frequency"
            else:
                override = _lr_override(recipe, 0.5)
            return Reading(COLLAPSE, override, evidence)

    flat = thresholds.flat_threshold
    best_is_last = f1 is not None and f1[-1] >= max(f1)
    # Validation worsening while training improves, or holds while validation clearly (more
    # than flat) worsens: memorising (measured: 16 comments, train focal -1%/epoch, val +7%).
    train_rate_read = train_rate.get("focal", train_rate.get("contrastive", 0.0))
    rise = (
        thresholds.overfit_rise if train_rate_read < -flat else max(thresholds.overfit_rise, flat)
    )
    val_rises = any(r > rise for r in val_rate.values())
    if train_rate_read <= flat and val_rises and f1 is not None and not best_is_last:
        return Reading(OVER_FITTING, _lr_override(recipe, 0.5), evidence)
    # Still improving: val F1 at its best and rising, or, having used every epoch it was
    # given, val focal loss still falling (the model still generalises better each epoch).
    f1_rises = best_is_last and f1 is not None and slope(f1[-w:]) > thresholds.f1_flat_threshold
    ran_out = len(rows) >= recipe.max_epochs
    if f1 is not None and (f1_rises or (ran_out and val_rate.get("focal", 0.0) < -flat)):
        return Reading(UNDER_TRAINING, f"trainer.max_epochs={2 * recipe.max_epochs}", evidence)

    if not train_rate:
        return Reading(STALLED, _lr_override(recipe, 3.0), evidence)
    falls = {name: r < -flat for name, r in train_rate.items()}
    if len(train_rate) == 2 and all(falls.values()):
        fast = max(-r for r in train_rate.values())
        slow = min(-r for r in train_rate.values())
        if fast > thresholds.rate_ratio * slow:
            falls = {name: -r == fast for name, r in train_rate.items()}
    if all(falls.values()):
        return Reading(HEALTHY, "", evidence)
    if any(falls.values()):
        regime = CONTRASTIVE_LAGS if falls["focal"] else FOCAL_LAGS
        weights = suggested_weights(regime, focal_weight, contrastive_weight, recipe.weight_step)
        return Reading(regime, weight_override(*weights) if weights else "", evidence)

    settled = all(abs(r) <= flat for r in train_rate.values()) and all(
        h[-1] <= (1 - thresholds.converged_drop) * h[0] for h in history.values()
    )
    if settled and (f1 is None or abs(slope(f1[-w:])) <= thresholds.f1_flat_threshold):
        return Reading(CONVERGED, "", evidence)
    if settled:
        return Reading(HEALTHY, "", evidence)  # losses settled, val F1 still moving
    evidence["loss_jumped"] = jumped
    return Reading(STALLED, _lr_override(recipe, 0.1 if jumped else 3.0), evidence)


def read_history(
    rows: Sequence[Mapping[str, Any]],
    recipe: Recipe = Recipe(),
    thresholds: Thresholds = Thresholds(),
) -> Reading:
    """The reading of the last of `rows`, with `held`: how many consecutive epochs up to it
    read the same regime. Every epoch is read again from its own rows so far (a run's
    `collapsed` and `aspects_with_gold` columns give its collapsed heads), so an old
    `loss_dynamics.csv` gets this version's readings."""
    reading, held = Reading(WARMING_UP, held=0), 0
    for end, row in enumerate(rows, start=1):
        troubled = [a for a in str(row.get("collapsed") or "").split(";") if a]
        with_gold = int(_number(row.get("aspects_with_gold")) or 0)
        previous = reading.regime
        reading = read(rows[:end], recipe, thresholds, troubled, with_gold)
        held = held + 1 if reading.regime == previous else 1
    reading.held = held
    return reading
