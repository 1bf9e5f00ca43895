"""Reading the two loss curves: which regime a run is in, and what to change.

A pure function of the per-epoch loss histories, so it can be tested on synthetic curves and
used both by the `LossDynamics` callback (to tell the user) and the `rule` balancer (to act).

| curves over the last `window` epochs    | regime               | change                       |
| --------------------------------------- | -------------------- | ---------------------------- |
| both fall, at comparable relative rates | healthy              | keep the weights             |
| focal falls, contrastive flat           | contrastive_lags     | raise contrastive_weight     |
| contrastive falls, focal flat           | focal_lags           | raise focal_weight           |
| neither falls                           | stalled              | check the lr, then the data  |
| both flat at a low level, val F1 flat   | converged            | stop, or lower the lr        |

(Both flat at a low level while val F1 still rises is healthy.)

A falling contrastive loss means that same-label embeddings are already closer together and
different labels further apart; it never means the loss "pushes" harder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

HEALTHY = "healthy"
CONTRASTIVE_LAGS = "contrastive_lags"
FOCAL_LAGS = "focal_lags"
STALLED = "stalled"
CONVERGED = "converged"
WARMING_UP = "warming_up"

ADVICE = {
    HEALTHY: "healthy: classification and representation both learn; keep the weights",
    CONTRASTIVE_LAGS: "focal falls, contrastive flat: the heads fit the labels but same-label "
    "embeddings are not getting closer; raise contrastive_weight",
    FOCAL_LAGS: "contrastive falls, focal flat: same-label embeddings are getting closer but "
    "the heads do not separate them yet; raise focal_weight",
    STALLED: "neither loss falls: an optimisation problem; check the learning rate, then the data",
    CONVERGED: "both losses flat at a low level and val pair F1 flat: converged; "
    "stop, or lower the learning rate",
    WARMING_UP: "not enough epochs yet to read the curves",
}


@dataclass(frozen=True)
class Thresholds:
    """How the curves are read. Slopes are least-squares fits over the last `window` epochs.

    window: epochs in the fit (>= 2).
    flat_threshold: a loss is flat when its slope, relative to its mean level in the window,
        is within +-flat_threshold per epoch (0.02 = changes by less than 2% of itself an epoch).
    rate_ratio: when both fall, one falling more than `rate_ratio` times faster (relative
        rates) than the other counts the slower one as flat.
    converged_drop: "a low level": a flat loss at most (1 - converged_drop) of its first epoch.
    f1_flat_threshold: val pair F1 is flat when its slope is within +-this, in F1 points
        (absolute, 0.005 = half a point) per epoch.
    """

    window: int = 3
    flat_threshold: float = 0.02
    rate_ratio: float = 4.0
    converged_drop: float = 0.3
    f1_flat_threshold: float = 0.005

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"diagnostics.window must be >= 2 epochs, got {self.window}")
        if not self.flat_threshold > 0:
            raise ValueError(f"diagnostics.flat_threshold must be > 0, got {self.flat_threshold}")
        if not self.rate_ratio >= 1:
            raise ValueError(f"diagnostics.rate_ratio must be >= 1, got {self.rate_ratio}")
        if not 0 <= self.converged_drop < 1:
            raise ValueError(
                f"diagnostics.converged_drop must be in [0, 1), got {self.converged_drop}"
            )


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


def classify(
    focal: Sequence[float],
    contrastive: Sequence[float],
    val_pair_f1: Sequence[float] | None = None,
    thresholds: Thresholds = Thresholds(),
) -> str:
    """The regime of the last `thresholds.window` epochs of the two (unweighted) loss curves.

    `focal`, `contrastive` and `val_pair_f1` are per-epoch values, oldest first, all of the
    run so far (the first epoch is the reference for "a low level").
    """
    if len(focal) != len(contrastive):
        raise ValueError(f"{len(focal)} focal values but {len(contrastive)} contrastive ones")
    w = thresholds.window
    if len(focal) < w:
        return WARMING_UP
    rates = relative_slope(focal[-w:]), relative_slope(contrastive[-w:])
    falls = [r < -thresholds.flat_threshold for r in rates]
    if all(falls):
        fast, slow = max(-rates[0], -rates[1]), min(-rates[0], -rates[1])
        if fast <= thresholds.rate_ratio * slow:
            return HEALTHY
        falls = [-r == fast for r in rates]
    if falls[0] and not falls[1]:
        return CONTRASTIVE_LAGS
    if falls[1] and not falls[0]:
        return FOCAL_LAGS

    flat = [abs(r) <= thresholds.flat_threshold for r in rates]
    low = [
        history[-1] <= (1 - thresholds.converged_drop) * history[0]
        for history in (focal, contrastive)
    ]
    f1_flat = (
        val_pair_f1 is None
        or len(val_pair_f1) < w
        or abs(slope(val_pair_f1[-w:])) <= thresholds.f1_flat_threshold
    )
    if all(flat) and all(low):
        return CONVERGED if f1_flat else HEALTHY  # losses settled, val F1 still rising
    return STALLED


def suggested_weights(
    regime: str,
    focal_weight: float,
    contrastive_weight: float,
    step: float = 0.1,
    min_weight: float = 0.0,
    max_weight: float = float("inf"),
) -> tuple[float, float] | None:
    """The table's change of weights for `regime`: up to `step` moves to the lagging loss.

    None when the regime asks for no change, or the bounds leave no room. The sum of the two
    weights is kept, and the move stops where either would leave [min_weight, max_weight].
    """
    if regime == CONTRASTIVE_LAGS:
        moved = min(step, focal_weight - min_weight, max_weight - contrastive_weight)
        return (focal_weight - moved, contrastive_weight + moved) if moved > 1e-9 else None
    if regime == FOCAL_LAGS:
        moved = min(step, contrastive_weight - min_weight, max_weight - focal_weight)
        return (focal_weight + moved, contrastive_weight - moved) if moved > 1e-9 else None
    return None


def override_line(weights: tuple[float, float] | None) -> str:
    """The Hydra overrides to paste, e.g. `loss.focal_weight=0.7 loss.contrastive_weight=0.3`."""
    if weights is None:
        return ""
    focal_weight, contrastive_weight = (round(w, 4) for w in weights)
    return f"loss.focal_weight={focal_weight:g} loss.contrastive_weight={contrastive_weight:g}"
