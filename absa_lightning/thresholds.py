"""Decision thresholds on P(mentioned): decoding with them, and tuning them per aspect on dev.

Argmax decoding calls an aspect mentioned when P(mentioned) = 1 - softmax[absent] beats every
single class; with three polarities sharing P(mentioned) that takes more than 0.5, and a rare
aspect whose probabilities the training pushed towards "absent" may never get there. A threshold
per aspect, chosen on dev where it maximises the dev pair F1 (`tune`), moves each aspect's cut
to where its precision and recall balance. Thresholds are plain floats kept with the model
(checkpoint, `metrics.json`, the exported `absa_config.json`); an aspect without one keeps argmax.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from absa_lightning.checkpointing import AtomicCheckpointIO

Threshold = float | Mapping[str, float] | None


def aspect_thresholds(threshold: Threshold, aspects: Sequence[str]) -> torch.Tensor:
    """(A,) detection thresholds; NaN where the aspect keeps argmax decoding."""
    if threshold is None:
        return torch.full((len(aspects),), math.nan)
    if isinstance(threshold, Mapping):
        unknown = sorted(set(threshold) - set(aspects))
        if unknown:
            raise ValueError(f"threshold for unknown aspect(s) {unknown}; the model's: {aspects}")
        values = [threshold.get(a, math.nan) for a in aspects]
    else:
        values = [threshold] * len(aspects)
    for aspect, value in zip(aspects, values, strict=True):
        if not isinstance(value, int | float) or not (math.isnan(value) or 0 <= value <= 1):
            raise ValueError(f"threshold for {aspect} must be a number in [0, 1], got {value!r}")
    return torch.tensor(values, dtype=torch.float)


def decode(probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(N, A, C) probabilities -> (N, A) classes, 0 = absent: mentioned iff P(mentioned) >=
    the aspect's threshold (argmax where it is NaN), then the most probable polarity."""
    mentioned_p = 1.0 - probs[..., 0]  # (N, A)
    by_argmax = probs.argmax(dim=-1) != 0
    by_threshold = mentioned_p >= thresholds.nan_to_num(nan=0.0)
    mentioned = torch.where(thresholds.isnan(), by_argmax, by_threshold)  # (N, A)
    # With argmax decoding a mentioned aspect's class is its most probable polarity too.
    polarity = probs[..., 1:].argmax(dim=-1) + 1  # (N, A)
    return torch.where(mentioned, polarity, torch.zeros_like(polarity))


OBJECTIVES = ("pair_f1", "pair_f1_per_aspect")


def tune(
    probs: torch.Tensor,
    labels: torch.Tensor,
    grid: torch.Tensor,
    objective: str = "pair_f1",
    max_passes: int = 5,
) -> torch.Tensor:
    """(A,) per aspect, the candidate of `grid` (thresholds on P(mentioned)) or argmax (NaN)
    chosen on (N, A, C) `probs` against (N, A) gold `labels`:

    - `pair_f1`: the micro pair F1 over all aspects, the score checkpoints are chosen on, by
      coordinate ascent from argmax (each aspect in turn takes the candidate that raises it
      most, given the others', until none does; it never ends below argmax);
    - `pair_f1_per_aspect`: each aspect's own pair F1 (rare aspects gain, which lifts the macro
      F1s; the micro F1 can fall).

    Argmax is the first candidate and a threshold replaces it only when it does strictly better.
    """
    if objective not in OBJECTIVES:
        raise ValueError(
            f"threshold_objective must be one of {list(OBJECTIVES)}, got {objective!r}"
        )
    mentioned_p = 1.0 - probs[..., 0]  # (N, A)
    by_threshold = mentioned_p.unsqueeze(0) >= grid.view(-1, 1, 1)  # (T, N, A)
    mentioned = torch.cat([(probs.argmax(dim=-1) != 0).unsqueeze(0), by_threshold])  # (T+1, N, A)
    gold = labels != 0  # (N, A)
    right_polarity = gold & (probs[..., 1:].argmax(dim=-1) + 1 == labels)  # (N, A)
    pair_tp = (mentioned & right_polarity).sum(dim=1).double()  # (T+1, A)
    predicted = mentioned.sum(dim=1).double()  # (T+1, A)
    gold_counts = gold.sum(dim=0).double()  # (A,)
    candidates = torch.cat([torch.tensor([math.nan]), grid.float()])
    if objective == "pair_f1_per_aspect":
        f1 = 2 * pair_tp / (predicted + gold_counts).clamp(min=1)  # (T+1, A); 0/0 -> 0
        return candidates[f1.argmax(dim=0)]  # the first best: argmax on ties

    num_aspects = probs.shape[1]
    choice = torch.zeros(num_aspects, dtype=torch.long)  # 0: argmax
    aspects = torch.arange(num_aspects)
    for _ in range(max_passes):
        changed = False
        for a in range(num_aspects):  # the aspects in turn; all candidates of one at once
            others = aspects != a
            tp_rest = pair_tp[choice, aspects][others].sum()
            pred_rest = predicted[choice, aspects][others].sum()
            f1 = 2 * (tp_rest + pair_tp[:, a]) / (pred_rest + predicted[:, a] + gold_counts.sum())
            best = int(f1.argmax())
            if f1[best] > f1[choice[a]]:
                choice[a], changed = best, True
        if not changed:
            break
    return candidates[choice]


def threshold_grid(step: float) -> torch.Tensor:
    """Thresholds step, 2 * step, ... below 1."""
    if not 0 < step < 1:
        raise ValueError(f"threshold_grid_step must be in (0, 1), got {step}")
    return torch.arange(1, math.ceil(1 / step)) * step


def by_aspect(thresholds: torch.Tensor, aspects: Sequence[str]) -> dict[str, float]:
    """(A,) thresholds -> {aspect: threshold} for the aspects that have one (not NaN)."""
    return {
        a: round(float(t), 6)
        for a, t in zip(aspects, thresholds.tolist(), strict=True)
        if not math.isnan(t)
    }


@torch.no_grad()
def probabilities(net: torch.nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, A, C) softmax of `net` over every batch of `loader`, and the (N, A) gold labels."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    probs, labels = [], []
    for batch in loader:
        inputs = [
            batch[k].to(device) for k in ("input_ids", "attention_mask", "ngram_ids") if k in batch
        ]
        logits = net(*inputs).logits
        probs.append(logits.float().softmax(dim=-1).cpu())
        labels.append(batch["labels"])
    net.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def tune_on_dev(
    module: torch.nn.Module,
    datamodule,
    grid_step: float,
    checkpoint: str | Path | None,
    objective: str = "pair_f1",
    write: bool = True,
) -> dict[str, float]:
    """Thresholds tuned on the whole dev split with `module`'s current weights, set on the module
    and, when `checkpoint` names a file and `write`, written into it (atomically) so that
    evaluation and prediction from it use them."""
    probs, labels = probabilities(module.net, datamodule.split_dataloader("dev"))
    tuned = tune(probs, labels, threshold_grid(grid_step), objective)
    tuned = by_aspect(tuned, module.hparams.aspects)
    module.thresholds = tuned
    if checkpoint and write:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state["thresholds"] = tuned
        AtomicCheckpointIO().save_checkpoint(state, checkpoint)
    return tuned
