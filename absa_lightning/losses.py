"""Training losses for aspect-based sentiment analysis.

Plain ``torch.nn.Module`` losses, independent of Lightning and Hydra, so they can be
unit-tested and reused on their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from absa_lightning.collectives import all_gather_rows, all_reduce_sum, is_distributed

__all__ = ["FocalLoss", "SupConLoss"]

_REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    """Multi-class softmax focal loss (Lin et al., 2017).

    For each cell with logits ``z`` and target class ``t``::

        p_t  = softmax(z)[t]
        loss = -alpha[t] * (1 - p_t) ** gamma * log(p_t)

    The factor ``(1 - p_t) ** gamma`` shrinks the loss of cells the model already
    classifies confidently, so training focuses on hard cells; in this project that
    keeps the many "aspect absent" cells (class 0) from dominating. ``alpha[t]``
    re-weights classes (``alpha=None`` means weight 1 for every class). With
    ``gamma=0`` and ``alpha=None`` the loss equals ``F.cross_entropy``.

    ``reduction="mean"`` is the plain mean over all cells (as torchvision's
    ``sigmoid_focal_loss``), not the alpha-weighted mean ``F.cross_entropy`` uses
    with ``weight``.

    Args:
        gamma: focusing parameter, ``>= 0``.
        alpha: optional per-class weights, each ``>= 0``; one entry per class.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    alpha: torch.Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"FocalLoss: gamma must be >= 0, got {gamma!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"FocalLoss: reduction must be one of {_REDUCTIONS}, got {reduction!r}"
            )
        alpha_tensor = None
        if alpha is not None:
            alpha_tensor = torch.as_tensor(alpha, dtype=torch.get_default_dtype()).detach()
            if alpha_tensor.ndim != 1 or alpha_tensor.numel() == 0:
                raise ValueError(
                    "FocalLoss: alpha must be a non-empty 1-D sequence of per-class weights, "
                    f"got shape {tuple(alpha_tensor.shape)}"
                )
            if not bool((alpha_tensor >= 0).all()):
                raise ValueError(
                    f"FocalLoss: alpha entries must be >= 0, got {alpha_tensor.tolist()}"
                )
            alpha_tensor = alpha_tensor.clone()
        self.gamma = float(gamma)
        self.reduction = reduction
        # Non-persistent: a training hyper-parameter, kept out of checkpoints.
        self.register_buffer("alpha", alpha_tensor, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the focal loss of ``logits`` (..., C) against class indices ``target`` (...)."""
        if logits.ndim < 1 or logits.shape[:-1] != target.shape:
            raise ValueError(
                "FocalLoss: expected logits of shape (..., C) and target of shape (...), got "
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(
                f"FocalLoss: target must hold integer class indices, got dtype {target.dtype}"
            )
        num_classes = logits.shape[-1]
        if self.alpha is not None and self.alpha.numel() != num_classes:
            raise ValueError(
                f"FocalLoss: alpha has {self.alpha.numel()} entries but logits have "
                f"{num_classes} classes"
            )

        log_probs = F.log_softmax(logits, dim=-1)  # (..., C)
        log_pt = log_probs.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)  # (...)
        loss = -log_pt
        if self.gamma != 0:
            # -expm1(log p) is 1 - p without cancellation near p = 1. The clamp keeps the
            # gradient of x ** gamma finite at x = 0 when gamma < 1 (it would be inf * 0).
            one_minus_pt = (-torch.expm1(log_pt)).clamp(min=torch.finfo(log_pt.dtype).tiny)
            loss = one_minus_pt.pow(self.gamma) * loss
        if self.alpha is not None:
            loss = self.alpha.to(loss.dtype)[target.long()] * loss

        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        alpha = None if self.alpha is None else [float(f"{a:.6g}") for a in self.alpha.tolist()]
        return f"gamma={self.gamma}, alpha={alpha}, reduction={self.reduction!r}"


class SupConLoss(nn.Module):
    """Supervised contrastive loss over aspect embeddings (Khosla et al., 2020, L_out).

    Every mentioned cell (``labels > 0``) of the ``(B, A)`` grid is an anchor. Its
    positives ``P(i)`` are the *other* mentioned cells with the same aspect and the same
    polarity, in any comment of the batch; every other mentioned cell, including the
    other aspects of the same comment, is a negative. With ``s_ij = <z_i, z_j> / T``::

        l_i  = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{j != i} exp(s_ij) )
        loss = mean of l_i over the anchors with |P(i)| > 0

    where ``j`` runs over the mentioned cells. Anchors without a positive are left
    out of the mean: they carry no pull towards a positive, and counting them as zero
    would make the loss scale depend on how many singleton groups a batch happens to
    contain. (HobbitLong/SupContrast divided by ``|P(i)| = 0``, giving NaN, and later
    counted such anchors as zero.) When no anchor has a positive, including batches with
    fewer than two mentioned cells, the loss is a zero still attached to the graph, so
    ``backward()`` works and yields zero gradients. There is no ``base_temperature``
    factor.

    The embeddings are *not* normalised here: pass L2-normalised vectors so that
    ``s_ij`` is a cosine similarity scaled by ``1 / temperature``.

    Absent cells are masked out of the ``(B*A, B*A)`` similarity matrix rather than
    gathered with a boolean index, which avoids a device-to-host sync. Masked entries are
    filled with the dtype's most negative finite value rather than ``-inf``: the softmax is
    the same, but rows with no candidate (absent anchors) give ``min - min = 0`` instead
    of ``-inf - (-inf) = NaN``, so no intermediate is ever NaN.

    **Across DDP processes** (``gather=True``, in training mode, with a process group of
    ``W > 1`` processes): each process gathers every process's embeddings and labels, so its
    anchors (its own cells) meet the positives and negatives of the global batch, and the
    sums and anchor counts are added over processes. Every process then returns the loss
    ``L`` of the concatenated batch. Autograd runs back through the collectives, which sum
    over processes, so each process's embeddings receive ``W * dL/dz``; DDP's average of the
    parameter gradients over the ``W`` processes divides that back to exactly the
    single-process gradient ``dL/dtheta``. Each process computes ``(B*A, W*B*A)``
    similarities, not ``(W*B*A)**2``. Processes may hold different batch sizes: blocks are
    padded with absent cells. In eval mode (validation, test) the loss stays per process, so
    evaluation can shard the data without padding it, and a validation loss means the same
    batch size (``data.eval_batch_size``) whatever the number of processes. In one process
    ``gather`` changes nothing.

    **Which cells compete** (``negatives``): ``"all"`` is the above. With ``"same_aspect"`` the
    denominator keeps only the anchor's own aspect (``j`` of the same aspect), so the loss
    contrasts polarities within an aspect and leaves separating aspects to the aspect queries:
    with 32 UIT-ViSFD comments a batch, an anchor has ~100 candidates, of which only ~6.5 are
    same-aspect cells of another polarity, so under ``"all"`` most of the loss's pull goes into
    telling aspects apart.

    **A queue of recent cells** (``queue_comments=Q > 0``, training only): the cells of the last
    ``Q`` training comments (detached, as they were embedded then) join every batch's cells as
    candidates and positives, but not as anchors, so an anchor of a rare aspect and polarity
    meets more of its own than one batch holds. Each step then puts the batch's cells (the
    global batch's under ``gather``) at the queue's head. The queue starts empty (its cells
    count as absent) and is not saved: a resumed run refills it within ``Q`` comments.
    Evaluation neither reads nor fills it.

    Args:
        temperature: softmax temperature ``T > 0``.
        gather: in training, compute the loss over the batches of all DDP processes.
        negatives: ``"all"`` mentioned cells, or those of the anchor's ``"same_aspect"``.
        queue_comments: in training, how many recent comments' cells join each batch; 0: none.
    """

    NEGATIVES = ("all", "same_aspect")
    queue_embeddings: torch.Tensor | None
    queue_labels: torch.Tensor | None

    def __init__(
        self,
        temperature: float = 0.1,
        gather: bool = False,
        negatives: str = "all",
        queue_comments: int = 0,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"SupConLoss: temperature must be > 0, got {temperature!r}")
        if negatives not in self.NEGATIVES:
            raise ValueError(
                f"SupConLoss: negatives must be one of {self.NEGATIVES}, got {negatives!r}"
            )
        if not (isinstance(queue_comments, int) and queue_comments >= 0):
            raise ValueError(
                f"SupConLoss: queue_comments must be an integer >= 0, got {queue_comments!r}"
            )
        self.temperature = float(temperature)
        self.gather = bool(gather)
        self.negatives = negatives
        self.queue_comments = queue_comments
        # (Q, A, D) and (Q, A), made at the first training batch; not in the state_dict.
        self.register_buffer("queue_embeddings", None, persistent=False)
        self.register_buffer("queue_labels", None, persistent=False)

    def _queue_in_use(self) -> bool:
        return self.queue_comments > 0 and self.training

    def candidate_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels (rows of A) of every cell that a batch with ``labels`` (B, A) contrasts
        its anchors with: its own and, in training with a queue, the queued ones."""
        if not self._queue_in_use() or self.queue_labels is None:
            return labels
        return torch.cat([labels, self.queue_labels.to(labels.dtype)])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss for ``embeddings`` (B, A, D) and ``labels`` (B, A).

        ``labels`` holds 0 for an absent aspect and a polarity class ``> 0`` otherwise.
        """
        if embeddings.ndim != 3:
            raise ValueError(
                "SupConLoss: embeddings must have shape (batch, aspects, dim), got "
                f"{tuple(embeddings.shape)}"
            )
        if labels.shape != embeddings.shape[:2]:
            raise ValueError(
                "SupConLoss: labels must have shape (batch, aspects) matching embeddings, got "
                f"labels {tuple(labels.shape)} and embeddings {tuple(embeddings.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"SupConLoss: labels must be integer classes, got {labels.dtype}")

        batch, aspects, dim = embeddings.shape
        anchors = embeddings.reshape(batch * aspects, dim)  # (n, D), cell i = comment i // A
        anchor_labels = labels.reshape(batch * aspects)  # (n,)
        across_processes = self.gather and self.training and is_distributed()
        if across_processes:
            (cells, cell_labels), offset = all_gather_rows(anchors, anchor_labels)  # (N, D), (N,)
        else:
            cells, cell_labels, offset = anchors, anchor_labels, 0
        if cells.shape[0] == 0:  # the same on every process: N counts them all
            return embeddings.sum() * 0.0
        if self._queue_in_use():
            queued, queued_labels = self._queue(cells.detach(), cell_labels, aspects)
            cells = torch.cat([cells, queued.to(cells.dtype)])  # (N + Q*A, D)
            cell_labels = torch.cat([cell_labels, queued_labels.to(cell_labels.dtype)])
        device = embeddings.device
        # Every block of cells (each process's, the queue) is a whole number of comments, so
        # cell m is aspect m % A.
        cell_ids = torch.arange(cells.shape[0], device=device)  # (N,)
        anchor_ids = torch.arange(anchors.shape[0], device=device)  # (n,)
        same_aspect = (anchor_ids % aspects).unsqueeze(1) == (cell_ids % aspects).unsqueeze(0)
        not_self = (anchor_ids + offset).unsqueeze(1) != cell_ids.unsqueeze(0)  # (n, N)

        # Candidates j of the denominator: mentioned and not the anchor itself.
        candidates = (cell_labels > 0).unsqueeze(0) & not_self  # (n, N)
        if self.negatives == "same_aspect":
            candidates &= same_aspect
        positives = (
            same_aspect
            & (anchor_labels.unsqueeze(1) == cell_labels.unsqueeze(0))
            & (anchor_labels > 0).unsqueeze(1)
            & not_self
        )  # (n, N); same label > 0 implies the candidate is mentioned too

        sim = anchors @ cells.T / self.temperature  # (n, N)
        sim = sim - sim.amax(dim=1, keepdim=True).detach()
        sim = sim.masked_fill(~candidates, torch.finfo(sim.dtype).min)
        log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # (n, N)

        num_pos = positives.sum(dim=1)  # (n,)
        pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)  # (n,)
        mean_log_prob_pos = pos_log_prob / num_pos.clamp(min=1)  # (n,), 0 without positives
        dtype = torch.promote_types(sim.dtype, torch.float32)  # a bf16 count is inexact past 256
        total = torch.stack([-mean_log_prob_pos.sum().to(dtype), (num_pos > 0).sum().to(dtype)])
        if across_processes:
            total = all_reduce_sum(total)  # (loss sum, anchors with positives) of the global batch
        return total[0] / total[1].clamp(min=1)

    def _queue(
        self, cells: torch.Tensor, cell_labels: torch.Tensor, aspects: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The queued cells (Q*A, D) and labels (Q*A,) before this batch; then the batch's
        cells go in at the head."""
        dim = cells.shape[1]
        if self.queue_embeddings is None or self.queue_embeddings.shape[1:] != (aspects, dim):
            shape = (self.queue_comments, aspects)
            self.queue_embeddings = cells.new_zeros((*shape, dim))
            self.queue_labels = cell_labels.new_zeros(shape)  # all absent: no candidate
        queued = (self.queue_embeddings.reshape(-1, dim), self.queue_labels.reshape(-1))
        # New tensors, not in-place writes: autograd keeps the queue this step used.
        self.queue_embeddings = torch.cat(
            [cells.reshape(-1, aspects, dim).to(self.queue_embeddings.dtype), self.queue_embeddings]
        )[: self.queue_comments]
        self.queue_labels = torch.cat(
            [cell_labels.reshape(-1, aspects).to(self.queue_labels.dtype), self.queue_labels]
        )[: self.queue_comments]
        return queued

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, gather={self.gather}, "
            f"negatives={self.negatives!r}, queue_comments={self.queue_comments}"
        )
