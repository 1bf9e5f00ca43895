"""Tests for absa_lightning.losses against naive, independently written references."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from absa_lightning.losses import FocalLoss, SupConLoss

# ---------------------------------------------------------------------------
# FocalLoss
# ---------------------------------------------------------------------------


def focal_reference(logits, target, gamma, alpha, reduction):
    """Textbook per-element focal loss, built from differentiable torch ops."""
    rows = logits.reshape(-1, logits.shape[-1])
    flat_target = target.reshape(-1).tolist()
    terms = []
    for row, t in zip(rows, flat_target, strict=True):
        p = torch.softmax(row, dim=0)[t]
        a = 1.0 if alpha is None else alpha[t]
        terms.append(-a * (1 - p) ** gamma * torch.log(p))
    losses = torch.stack(terms).reshape(target.shape)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _focal_inputs(seed=0, shape=(4, 5), classes=4, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, classes, generator=gen, dtype=dtype) * 2).requires_grad_()
    target = torch.randint(0, classes, shape, generator=gen)
    return logits, target


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("alpha", [None, [0.25, 1.0, 2.0, 0.5]])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_loop_reference(gamma, alpha, reduction):
    logits, target = _focal_inputs()
    loss = FocalLoss(gamma=gamma, alpha=alpha, reduction=reduction).double()(logits, target)
    expected = focal_reference(logits, target, gamma, alpha, reduction)
    torch.testing.assert_close(loss, expected)

    weights = torch.rand(
        expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
    torch.testing.assert_close(grad, expected_grad)


def test_focal_gamma0_no_alpha_equals_cross_entropy():
    logits, target = _focal_inputs(seed=3, dtype=torch.float32)
    loss = FocalLoss(gamma=0.0)(logits, target)
    ce = F.cross_entropy(logits.reshape(-1, 4), target.reshape(-1))
    torch.testing.assert_close(loss, ce)
    (grad,) = torch.autograd.grad(loss, logits)
    (ce_grad,) = torch.autograd.grad(ce, logits)
    torch.testing.assert_close(grad, ce_grad)


def test_focal_alpha_is_per_class_weight_with_plain_mean():
    alpha = [0.1, 1.0, 3.0, 0.7]
    logits, target = _focal_inputs(seed=4)
    weighted_ce = F.cross_entropy(
        logits.reshape(-1, 4),
        target.reshape(-1),
        weight=torch.tensor(alpha, dtype=torch.float64),
        reduction="none",
    ).reshape(target.shape)

    per_cell = FocalLoss(gamma=0.0, alpha=alpha, reduction="none").double()(logits, target)
    torch.testing.assert_close(per_cell, weighted_ce)

    mean = FocalLoss(gamma=0.0, alpha=alpha).double()(logits, target)
    torch.testing.assert_close(mean, weighted_ce.mean())
    # Not cross_entropy's weight-normalised mean.
    assert not torch.allclose(mean, weighted_ce.sum() / torch.tensor(alpha)[target].sum().double())


def test_focal_down_weights_confident_cells():
    logits, target = _focal_inputs(seed=5)
    ce = FocalLoss(gamma=0.0, reduction="none")(logits, target)
    focal = FocalLoss(gamma=2.0, reduction="none")(logits, target)
    assert torch.all(focal < ce)
    p_t = torch.softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(focal / ce, (1 - p_t) ** 2)


def test_focal_saturated_logits_give_finite_gradient():
    logits = torch.tensor([[200.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 2])
    loss = FocalLoss(gamma=0.5)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad[0], torch.zeros(4))


def test_focal_general_leading_dims():
    logits, target = _focal_inputs(seed=6, shape=(2, 3, 2), classes=3)
    loss = FocalLoss(gamma=1.5, reduction="none")(logits, target)
    assert loss.shape == (2, 3, 2)
    torch.testing.assert_close(loss, focal_reference(logits, target, 1.5, None, "none"))


def test_focal_alpha_buffer_follows_module():
    loss_fn = FocalLoss(alpha=[0.5, 1.0, 1.0, 1.0])
    assert "alpha" in dict(loss_fn.named_buffers())
    assert loss_fn.double().alpha.dtype == torch.float64
    assert loss_fn.to("meta").alpha.device.type == "meta"
    assert FocalLoss().alpha is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reduction": "batchmean"}, r"reduction.*'batchmean'"),
        ({"gamma": -0.5}, r"gamma.*-0\.5"),
        ({"alpha": [1.0, -0.1, 1.0, 1.0]}, r"alpha.*-0\.1"),
        ({"alpha": [[1.0, 1.0]]}, r"alpha.*1-D"),
    ],
)
def test_focal_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocalLoss(**kwargs)


def test_focal_rejects_bad_inputs():
    logits, target = _focal_inputs()
    with pytest.raises(ValueError, match="shape"):
        FocalLoss()(logits, target[:, :3])
    with pytest.raises(ValueError, match="integer"):
        FocalLoss()(logits, target.double())
    with pytest.raises(ValueError, match=r"alpha has 3 entries.*4 classes"):
        FocalLoss(alpha=[1.0, 1.0, 1.0])(logits, target)


# ---------------------------------------------------------------------------
# SupConLoss
# ---------------------------------------------------------------------------


def supcon_reference(embeddings, labels, temperature, negatives="all", memory=None):
    """Explicit loop over anchors; anchors without positives are skipped. `memory`: more
    (embeddings, labels) whose mentioned cells are candidates and positives, never anchors."""
    batch, aspects, _ = embeddings.shape
    # (name, aspect, label, vector) of each mentioned cell
    cells = [
        (("batch", b, a), a, int(labels[b, a]), embeddings[b, a])
        for b in range(batch)
        for a in range(aspects)
        if labels[b, a] > 0
    ]
    pool = list(cells)
    if memory is not None:
        memory_embeddings, memory_labels = memory
        pool += [
            (("memory", q, a), a, int(memory_labels[q, a]), memory_embeddings[q, a])
            for q in range(memory_labels.shape[0])
            for a in range(aspects)
            if memory_labels[q, a] > 0
        ]
    anchor_losses = []
    for name, aspect, label, z in cells:
        others = [c for c in pool if c[0] != name and (negatives == "all" or c[1] == aspect)]
        positives = [c for c in others if (c[1], c[2]) == (aspect, label)]
        if not positives:
            continue
        denom = sum(torch.exp(z @ c[3] / temperature) for c in others)
        terms = [torch.log(torch.exp(z @ p[3] / temperature) / denom) for p in positives]
        anchor_losses.append(-sum(terms) / len(positives))
    if not anchor_losses:
        return embeddings.sum() * 0.0
    return sum(anchor_losses) / len(anchor_losses)


def _normalised(shape, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


@pytest.mark.parametrize("negatives", ["all", "same_aspect"])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_loop_reference(temperature, negatives):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (6, 4), generator=gen)
    embeddings = _normalised((6, 4, 8), seed=1).requires_grad_()

    # The case must exercise absent cells, anchors with and without positives.
    groups = [(a, int(labels[b, a])) for b in range(6) for a in range(4) if labels[b, a] > 0]
    counts = {g: groups.count(g) for g in groups}
    assert (labels == 0).any()
    assert any(c == 1 for c in counts.values()) and any(c > 1 for c in counts.values())

    loss = SupConLoss(temperature, negatives=negatives)(embeddings, labels)
    expected = supcon_reference(embeddings, labels, temperature, negatives)
    assert loss.shape == ()
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, embeddings)
    (expected_grad,) = torch.autograd.grad(expected, embeddings)
    torch.testing.assert_close(grad, expected_grad)


def _assert_connected_zero(embeddings, labels):
    embeddings = embeddings.clone().requires_grad_()
    loss = SupConLoss(0.1)(embeddings, labels)
    assert loss.requires_grad
    torch.testing.assert_close(loss, torch.zeros((), dtype=embeddings.dtype))
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    torch.testing.assert_close(embeddings.grad, torch.zeros_like(embeddings))


def test_supcon_all_groups_distinct_is_zero():
    # Same polarity on different aspects, different polarities on the same aspect.
    labels = torch.tensor([[1, 1, 2], [2, 3, 3], [3, 2, 1]])
    _assert_connected_zero(_normalised((3, 3, 5), seed=2), labels)


def test_supcon_no_mentioned_cells_is_zero():
    _assert_connected_zero(_normalised((3, 4, 5), seed=3), torch.zeros(3, 4, dtype=torch.long))


def test_supcon_single_mentioned_cell_is_zero():
    labels = torch.zeros(3, 4, dtype=torch.long)
    labels[1, 2] = 2
    _assert_connected_zero(_normalised((3, 4, 5), seed=4), labels)


def test_supcon_same_comment_other_aspect_is_negative():
    # One comment, two aspects with the same polarity: no positive pair at all.
    _assert_connected_zero(_normalised((1, 2, 4), seed=5), torch.tensor([[1, 1]]))


def test_supcon_empty_grid_is_zero():
    _assert_connected_zero(torch.zeros(0, 4, 5, dtype=torch.float64), torch.zeros(0, 4).long())


def test_supcon_anchors_without_positives_are_left_out():
    # Cells (comment, aspect): (0,0) and (1,0) share group (aspect 0, label 1);
    # (2,0) is alone in (aspect 0, label 2); aspect 1 is absent everywhere.
    labels = torch.tensor([[1, 0], [1, 0], [2, 0]])
    embeddings = torch.zeros(3, 2, 2, dtype=torch.float64)
    embeddings[0, 0] = embeddings[1, 0] = torch.tensor([1.0, 0.0])
    embeddings[2, 0] = torch.tensor([0.0, 1.0])
    embeddings[:, 1] = torch.tensor([-1.0, 0.0])

    loss = SupConLoss(temperature=1.0)(embeddings, labels)
    # Each of the two positive anchors: -log(e^1 / (e^1 + e^0)).
    expected = math.log(1 + math.e) - 1.0
    torch.testing.assert_close(loss.item(), expected)
    assert not math.isclose(loss.item(), 2 * expected / 3, rel_tol=1e-3)


def test_supcon_invariant_to_comment_order():
    gen = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 4, (6, 4), generator=gen)
    embeddings = _normalised((6, 4, 8), seed=8)
    perm = torch.randperm(6, generator=gen)
    assert not torch.equal(perm, torch.arange(6))
    loss_fn = SupConLoss(0.2)
    torch.testing.assert_close(loss_fn(embeddings[perm], labels[perm]), loss_fn(embeddings, labels))


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_supcon_backward_has_no_nan_under_anomaly_detection():
    labels = torch.tensor([[1, 0, 0], [1, 0, 2], [0, 0, 0]])
    embeddings = _normalised((3, 3, 4), seed=9).requires_grad_()
    with torch.autograd.detect_anomaly(check_nan=True):
        SupConLoss(0.1)(embeddings, labels).backward()
    assert torch.isfinite(embeddings.grad).all()
    assert embeddings.grad[labels > 0].abs().sum() > 0
    torch.testing.assert_close(
        embeddings.grad[labels == 0], torch.zeros_like(embeddings.grad[labels == 0])
    )


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan")])
def test_supcon_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature)


def test_supcon_rejects_bad_shapes():
    embeddings = _normalised((2, 3, 4), seed=10)
    with pytest.raises(ValueError, match="labels must have shape"):
        SupConLoss()(embeddings, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="embeddings must have shape"):
        SupConLoss()(embeddings.reshape(6, 4), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        SupConLoss()(embeddings, torch.ones(2, 3))


def test_supcon_same_aspect_decomposes_into_one_loss_per_aspect():
    """Under "same_aspect" each aspect is its own contrastive problem: the loss is the mean of
    the per-aspect losses weighted by their anchors with positives; under "all" it is not."""
    labels = torch.tensor([[1, 2, 0], [1, 1, 3], [2, 1, 3], [1, 0, 3]])
    embeddings = _normalised((4, 3, 8), seed=3)
    counted = [3, 2, 3]  # per aspect, anchors with a positive: 1,1,1 | 1,1 | 3,3,3
    per_aspect = [SupConLoss(0.1)(embeddings[:, a : a + 1], labels[:, a : a + 1]) for a in range(3)]
    weighted = sum(n * loss for n, loss in zip(counted, per_aspect, strict=True)) / sum(counted)
    same_aspect = SupConLoss(0.1, negatives="same_aspect")(embeddings, labels)
    torch.testing.assert_close(same_aspect, weighted)
    assert not torch.allclose(SupConLoss(0.1)(embeddings, labels), weighted)


@pytest.mark.parametrize("negatives", ["all", "same_aspect"])
def test_supcon_queue_adds_the_last_comments_as_candidates(negatives):
    """Training with a queue of 5 comments: the third batch (3 comments) meets its own cells
    and those of the 5 comments before it (2 of the first batch, 3 of the second)."""
    gen = torch.Generator().manual_seed(4)
    batches = [
        (_normalised((3, 4, 8), seed=10 + k), torch.randint(0, 4, (3, 4), generator=gen))
        for k in range(3)
    ]
    loss_fn = SupConLoss(0.2, negatives=negatives, queue_comments=5).train()
    for embeddings, labels in batches[:2]:
        loss_fn(embeddings, labels)
    embeddings, labels = batches[2]
    embeddings.requires_grad_()
    memory = (
        torch.cat([batches[1][0], batches[0][0][:2]]),
        torch.cat([batches[1][1], batches[0][1][:2]]),
    )
    torch.testing.assert_close(loss_fn.candidate_labels(labels), torch.cat([labels, memory[1]]))
    loss = loss_fn(embeddings, labels)
    expected = supcon_reference(embeddings, labels, 0.2, negatives, memory=memory)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, embeddings)
    (expected_grad,) = torch.autograd.grad(expected, embeddings)
    torch.testing.assert_close(grad, expected_grad)
    assert not torch.allclose(loss, supcon_reference(embeddings, labels, 0.2, negatives))


def test_supcon_queue_is_for_training_only():
    embeddings, labels = _normalised((4, 3, 8), seed=5), torch.tensor([[1, 2, 0]] * 4)
    loss_fn = SupConLoss(0.1, queue_comments=8).train()
    loss_fn(embeddings, labels)
    queued = loss_fn.queue_labels.clone()
    loss_fn.eval()
    other = _normalised((4, 3, 8), seed=6)
    torch.testing.assert_close(loss_fn(other, labels), SupConLoss(0.1)(other, labels))
    torch.testing.assert_close(loss_fn.queue_labels, queued)  # evaluation did not fill it
    assert loss_fn.candidate_labels(labels) is labels
    assert "queue_embeddings" not in loss_fn.state_dict()


def test_supcon_rejects_unknown_negatives():
    with pytest.raises(ValueError, match="negatives"):
        SupConLoss(0.1, negatives="others")


def test_the_losses_import_without_lightning_hydra_or_transformers() -> None:
    """`import absa_lightning.losses` loads torch alone: the package's names are lazy."""
    code = (
        "import sys, absa_lightning.losses; "
        "print(sorted(m for m in ('lightning', 'hydra', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
