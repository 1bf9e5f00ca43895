"""Learning-rate schedules, completed with the optimizer and the run's step count in the module."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup_decay(
    optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.1
) -> LambdaLR:
    """Linear warm-up over the first `warmup_ratio` of the steps, then linear decay to zero."""
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    warmup = max(1, round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)
