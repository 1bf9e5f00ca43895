"""Aspect-based sentiment scores on top of torchmetrics' confusion matrix.

Each (comment, aspect) cell holds a class in ``{0 = absent, 1..P = polarity}``. Offsetting aspect
``a``'s classes by ``a * C`` (``C = P + 1``) lets a single ``MulticlassConfusionMatrix`` count every
aspect at once; its ``confmat`` state is summed across processes, so DDP needs nothing extra.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = ["AspectConfusionMatrix", "embedding_space_scores"]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``0 / 0 -> 0`` (torchmetrics' ``zero_division=0`` convention)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def _f1(tp: Tensor, n_pred: Tensor, n_gold: Tensor) -> Tensor:
    """F1 as ``2 tp / (n_pred + n_gold)``: equals ``2PR / (P + R)``, and 0 when tp = 0."""
    return _safe_div(2 * tp, n_pred + n_gold)


class AspectConfusionMatrix(MulticlassConfusionMatrix):
    """A confusion matrix per aspect, read as VLSP 2018-style aspect detection and
    (aspect, polarity) F1 scores.

    ``update(preds, target)`` takes ``target`` of shape ``(B, A)`` and ``preds`` of shape ``(B, A)``
    (class ids) or ``(B, A, C)`` (logits/probabilities, argmax over the last dim).

    ``compute()`` returns scalar tensors:

    - ``aspect_f1``: micro F1 of aspect detection; a cell counts as detected when gold and
      prediction are both non-absent, whatever the polarity.
    - ``pair_f1``: micro F1 of (aspect, polarity) pairs; predicted = non-absent predictions,
      gold = non-absent gold, correct = same non-absent class.
    - ``aspect_f1_macro`` / ``pair_f1_macro``: the per-aspect F1s averaged over *all* aspects. An
      aspect with neither gold nor predicted mentions scores 0 (like torchmetrics'
      ``zero_division=0``), so it lowers the macro average rather than being skipped.
    - ``polarity_acc``: polarity accuracy over the correctly detected cells.

    Every ``0 / 0`` is 0, never NaN. ``per_aspect()`` gives the per-aspect table.
    """

    higher_is_better: bool = True
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    def __init__(self, num_aspects: int, num_polarities: int = 3, **kwargs: Any) -> None:
        if num_aspects < 1 or num_polarities < 1:
            raise ValueError(
                f"num_aspects and num_polarities must be >= 1, got {num_aspects}, {num_polarities}"
            )
        # These would act on the flattened (aspect-offset) classes, where they make no sense.
        for name in ("num_classes", "ignore_index", "normalize"):
            if name in kwargs:
                raise ValueError(f"AspectConfusionMatrix does not support `{name}`")
        self.num_aspects = num_aspects
        self.num_polarities = num_polarities
        self.num_aspect_classes = num_polarities + 1
        super().__init__(num_classes=num_aspects * self.num_aspect_classes, **kwargs)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Offset each aspect's classes by ``aspect * C``, flatten, and count in the parent."""
        num_a, num_c = self.num_aspects, self.num_aspect_classes
        if preds.is_floating_point():
            if preds.ndim != 3 or preds.shape[-1] != num_c:
                raise ValueError(
                    f"Expected float preds (logits) of shape (batch, {num_a}, {num_c}), "
                    f"got {tuple(preds.shape)}"
                )
            preds = preds.argmax(dim=-1)
        if target.is_floating_point():
            raise ValueError(f"Expected integer target, got dtype {target.dtype}")
        if target.ndim != 2 or target.shape[1] != num_a or preds.shape != target.shape:
            raise ValueError(
                f"Expected preds and target of shape (batch, {num_a}), "
                f"got preds {tuple(preds.shape)} and target {tuple(target.shape)}"
            )
        if self.validate_args:
            # Out-of-range ids would silently land in a neighbouring aspect's block.
            for name, t in (("preds", preds), ("target", target)):
                if t.numel() and (t.min() < 0 or t.max() >= num_c):
                    raise ValueError(f"`{name}` values must be in [0, {num_c}), got {t.unique()}")
        offset = torch.arange(num_a, device=target.device) * num_c  # (A,)
        super().update((preds + offset).flatten(), (target + offset).flatten())

    def _aspect_counts(self) -> dict[str, Tensor]:
        """Per-aspect counts, each ``(A,)``, from the blocks on the confusion matrix diagonal."""
        num_a, num_c = self.num_aspects, self.num_aspect_classes
        # (A*C, A*C) -> (A, C, C): rows = gold class, cols = predicted class.
        blocks = self.confmat.view(num_a, num_c, num_a, num_c).diagonal(dim1=0, dim2=2)
        blocks = blocks.permute(2, 0, 1).float()
        present = blocks[:, 1:, 1:]  # (A, P, P): gold and predicted both non-absent
        return {
            "gold": blocks[:, 1:, :].sum(dim=(1, 2)),
            "pred": blocks[:, :, 1:].sum(dim=(1, 2)),
            "detected": present.sum(dim=(1, 2)),
            "pair_tp": present.diagonal(dim1=1, dim2=2).sum(dim=1),
        }

    def _class_counts(self) -> tuple[Tensor, Tensor]:
        num_a, num_c = self.num_aspects, self.num_aspect_classes
        blocks = self.confmat.view(num_a, num_c, num_a, num_c).diagonal(dim1=0, dim2=2)
        blocks = blocks.permute(2, 0, 1)  # (A, gold C, predicted C)
        return blocks.sum(dim=2), blocks.sum(dim=1)

    def class_counts(self) -> tuple[Tensor, Tensor]:
        """Gold and predicted cells of each class, each ``(A, C)`` (class 0 = absent), summed
        across processes like ``compute()`` (after ``compute()`` the states are local again)."""
        return self._synced(self._class_counts)

    def _synced(self, read: Any) -> Any:
        """``read()`` on the states summed across processes (unless already synced)."""
        already_synced = self._is_synced
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self.sync_on_compute and not already_synced,
            should_unsync=not already_synced,
        ):
            return read()

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """Micro and macro aspect / pair F1 and polarity accuracy, as scalar tensors."""
        n = self._aspect_counts()
        total = {k: v.sum() for k, v in n.items()}
        return {
            "aspect_f1": _f1(total["detected"], total["pred"], total["gold"]),
            "pair_f1": _f1(total["pair_tp"], total["pred"], total["gold"]),
            "aspect_f1_macro": _f1(n["detected"], n["pred"], n["gold"]).mean(),
            "pair_f1_macro": _f1(n["pair_tp"], n["pred"], n["gold"]).mean(),
            "polarity_acc": _safe_div(total["pair_tp"], total["detected"]),
        }

    def per_aspect(self) -> dict[str, Tensor]:
        """Per-aspect precision / recall / F1 and gold support, each ``(A,)``, for a report table.

        Synced across processes like ``compute()`` (unless the states are already synced).
        """
        n = self._synced(self._aspect_counts)
        return {
            "aspect_precision": _safe_div(n["detected"], n["pred"]),
            "aspect_recall": _safe_div(n["detected"], n["gold"]),
            "aspect_f1": _f1(n["detected"], n["pred"], n["gold"]),
            "pair_precision": _safe_div(n["pair_tp"], n["pred"]),
            "pair_recall": _safe_div(n["pair_tp"], n["gold"]),
            "pair_f1": _f1(n["pair_tp"], n["pred"], n["gold"]),
            "support": n["gold"].long(),
        }


def embedding_space_scores(embeddings: Tensor, aspects: Tensor, polarities: Tensor) -> dict:
    """How well (aspect, polarity) groups separate: one embedding per mentioned cell.

    ``embeddings`` (N, D), ``aspects`` and ``polarities`` (N,) integer ids; the embeddings are
    L2-normalised here, so every score is about directions (cosine geometry):

    - ``silhouette``: mean silhouette over the (aspect, polarity) groups with cosine distance
      ``1 - cos`` (as scikit-learn's ``metric="cosine"``), in [-1, 1]; a cell alone in its
      group scores 0; NaN with fewer than two groups.
    - ``cos_within``: mean cosine similarity of two cells of the same group.
    - ``cos_across_polarity``: mean cosine similarity of two cells of the same aspect with
      different polarities. ``cos_within`` well above it means polarities are separated.
    - ``alignment``: mean squared distance ``||z_i - z_j||^2`` of same-group pairs (Wang &
      Isola, 2020, alpha = 2); lower is tighter.
    - ``uniformity``: ``log mean exp(-2 ||z_i - z_j||^2)`` over all pairs (t = 2); lower is
      more evenly spread on the sphere.

    Pairs are distinct cells (i != j). Memory is O(N^2): subsample very large sets.
    """
    n = embeddings.shape[0]
    z = F.normalize(embeddings.double(), dim=-1)
    cos = z @ z.T  # (N, N)
    sq_dist = (2 - 2 * cos).clamp(min=0)
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    same_aspect = aspects.unsqueeze(0) == aspects.unsqueeze(1)
    same_polarity = polarities.unsqueeze(0) == polarities.unsqueeze(1)
    same_group = same_aspect & same_polarity & not_self
    across = same_aspect & ~same_polarity

    _, group = torch.unique(aspects * (int(polarities.max()) + 1) + polarities, return_inverse=True)
    members = F.one_hot(group).double()  # (N, G)
    size = members.sum(dim=0)  # (G,)
    distance = (1 - cos).clamp(min=0).masked_fill(~not_self, 0.0)
    mean_to = distance @ members  # (N, G): summed distance to each group
    own_size = size[group]
    within = mean_to.gather(1, group.unsqueeze(1)).squeeze(1) / (own_size - 1).clamp(min=1)
    to_other = (mean_to / size).scatter(1, group.unsqueeze(1), float("inf"))
    nearest = to_other.min(dim=1).values
    silhouette = torch.where(
        own_size > 1,
        (nearest - within) / torch.maximum(within, nearest).clamp(min=1e-12),
        torch.zeros_like(within),
    )

    def mean(values: Tensor, mask: Tensor) -> float:
        return float(values[mask].mean()) if mask.any() else float("nan")

    return {
        "silhouette": float(silhouette.mean()) if len(size) > 1 else float("nan"),
        "cos_within": mean(cos, same_group),
        "cos_across_polarity": mean(cos, across),
        "alignment": mean(sq_dist, same_group),
        "uniformity": float(torch.log(torch.exp(-2 * sq_dist)[not_self].mean()))
        if n > 1
        else float("nan"),
    }
