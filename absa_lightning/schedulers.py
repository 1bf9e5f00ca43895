"""Learning-rate schedules, completed with the optimizer and the run's step count in the module."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_linear_schedule_with_warmup


def linear_warmup_decay(
    optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.1
) -> LambdaLR:
    """Linear warm-up over the first `warmup_ratio` of the steps, then linear decay to zero
    (transformers' schedule; this adds the ratio, as the step count is known only here)."""
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    warmup = max(1, round(warmup_ratio * total_steps))
    return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
