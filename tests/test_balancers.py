"""Loss balancers against their formulas, and the rule balancer against the table."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from absa_lightning import diagnostics as dx
from absa_lightning.balancers import (
    DynamicWeightAverage,
    RuleBalancer,
    StaticWeights,
    UncertaintyWeights,
    WarmStart,
)

# Focal falls 15% an epoch, contrastive flat: "raise contrastive_weight" once 3 epochs are in.
FOCAL_FALLS = [(0.7 * 0.85**t, 4.5, 0.5) for t in range(12)]
# Contrastive falls, focal flat: "raise focal_weight".
CONTRASTIVE_FALLS = [(0.4, 4.0 * 0.9**t, 0.5) for t in range(12)]
BOTH_FALL = [(0.7 * 0.85**t, 4.0 * 0.92**t, 0.5) for t in range(12)]


def as_rows(history, start=0):
    return [
        {"epoch": e, "focal": f, "contrastive": c, "contrastive_norm": c / 5, "val_pair_f1": f1}
        for e, (f, c, f1) in enumerate(history, start=start)
    ]


def feed(balancer, history, first=0, thresholds=None):
    """What LossDynamics does: read the rows so far, hand the reading to the balancer; from
    epoch `first` on (a resumed run: the callback's rows come back from the checkpoint)."""
    weights, rows = [], as_rows(history)
    for i, row in enumerate(rows[first:], start=first):
        recipe = dx.Recipe(*balancer.effective_weights())
        reading = dx.read_history(
            rows[: i + 1], recipe, thresholds or getattr(balancer, "thresholds", dx.Thresholds())
        )
        balancer.end_epoch(row["epoch"], reading, rows[: i + 1])
        weights.append(balancer.effective_weights())
    return weights


def test_static_is_the_weighted_sum():
    focal, contrastive = torch.tensor(0.3), torch.tensor(2.5)
    balancer = StaticWeights(0.8, 0.2)
    assert float(balancer(focal, contrastive)) == pytest.approx(0.8 * 0.3 + 0.2 * 2.5)
    assert feed(balancer, FOCAL_FALLS)[-1] == pytest.approx((0.8, 0.2))


def test_rule_moves_weight_to_the_lagging_loss_after_patience_and_a_full_window():
    balancer = RuleBalancer(0.8, 0.2, step=0.1)
    weights = feed(balancer, FOCAL_FALLS[:7])
    # Epochs 0-1 too few; epoch 2 reads "raise contrastive" once, epoch 3 twice (patience 2):
    # the rule acts; then it waits 3 epochs (window) before it acts again.
    assert weights[:3] == [pytest.approx((0.8, 0.2))] * 3
    assert weights[3] == pytest.approx((0.7, 0.3))
    assert weights[4] == weights[5] == pytest.approx((0.7, 0.3))
    assert weights[6] == pytest.approx((0.6, 0.4))


def test_rule_raises_focal_when_contrastive_falls_alone():
    weights = feed(RuleBalancer(0.8, 0.2, step=0.05), CONTRASTIVE_FALLS[:4])
    assert weights[-2] == pytest.approx((0.8, 0.2))
    assert weights[-1] == pytest.approx((0.85, 0.15))


def test_rule_keeps_healthy_weights():
    assert feed(RuleBalancer(0.8, 0.2), BOTH_FALL)[-1] == pytest.approx((0.8, 0.2))


def test_rule_stays_within_bounds_and_keeps_the_sum():
    balancer = RuleBalancer(0.6, 0.4, step=0.1, min_weight=0.1, max_weight=0.6)
    weights = feed(balancer, FOCAL_FALLS)
    assert weights[3] == pytest.approx((0.5, 0.5))
    assert weights[6] == pytest.approx((0.4, 0.6))
    assert weights[-1] == pytest.approx((0.4, 0.6))  # contrastive at max_weight: no more room
    balancer = RuleBalancer(0.5, 0.5, step=0.3, min_weight=0.3, max_weight=0.7)
    weights = feed(balancer, CONTRASTIVE_FALLS)
    assert weights[-1] == pytest.approx((0.7, 0.3))  # a partial step, up to the bounds
    assert all(sum(w) == pytest.approx(1.0) for w in weights)


def test_rule_refuses_weights_outside_its_bounds():
    with pytest.raises(ValueError, match=r"loss.focal_weight=0.8 is outside .*max_weight=0.4"):
        RuleBalancer(0.8, 0.2, min_weight=0.1, max_weight=0.4)


def test_rule_state_round_trips_through_state_dict():
    """A resumed run makes the same next decision as the uninterrupted one."""
    whole = RuleBalancer(0.8, 0.2)
    expected = feed(whole, FOCAL_FALLS[:8])

    first = RuleBalancer(0.8, 0.2)
    feed(first, FOCAL_FALLS[:4])
    resumed = RuleBalancer(0.8, 0.2)
    resumed.load_state_dict(first.state_dict())
    assert feed(resumed, FOCAL_FALLS[:8], first=4) == expected[4:]


def test_an_epoch_seen_twice_counts_once():
    balancer = RuleBalancer(0.8, 0.2)
    feed(balancer, FOCAL_FALLS[:3])
    before = balancer.effective_weights()
    lags = dx.Reading(dx.CONTRASTIVE_LAGS)
    balancer.end_epoch(2, lags, as_rows(FOCAL_FALLS[:3]))  # a resumed run re-running epoch 2
    assert balancer.effective_weights() == before
    assert balancer.epochs_seen == 3


@pytest.mark.parametrize("regime", [dx.OVER_FITTING, dx.COLLAPSE, dx.UNDER_TRAINING, dx.STALLED])
def test_rule_changes_no_weights_outside_the_lag_regimes(regime):
    balancer = RuleBalancer(0.8, 0.2, thresholds={"window": 2})
    rows = as_rows(FOCAL_FALLS[:4])
    for epoch in range(4):
        balancer.end_epoch(epoch, dx.Reading(regime), rows[: epoch + 1])
    assert balancer.effective_weights() == pytest.approx((0.8, 0.2))


def test_rule_leaves_an_untrained_contrastive_loss_alone():
    """Contrastive weight 0 is a recipe without that loss: never moved to it."""
    balancer = RuleBalancer(1.0, 0.0, max_weight=1.0)
    rows = as_rows(FOCAL_FALLS[:6])
    for epoch in range(6):
        reading = dx.Reading(dx.CONTRASTIVE_LAGS, held=epoch + 1)
        balancer.end_epoch(epoch, reading, rows[: epoch + 1])
    assert balancer.effective_weights() == pytest.approx((1.0, 0.0))


def test_rule_uses_the_configured_thresholds():
    slow = [(0.7 * 0.97**t, 4.5, 0.5) for t in range(4)]  # focal falls 3% an epoch
    assert feed(RuleBalancer(0.8, 0.2), slow)[-1] == pytest.approx((0.7, 0.3))
    strict = RuleBalancer(0.8, 0.2, thresholds={"flat_threshold": 0.05})
    assert feed(strict, slow)[-1] == pytest.approx((0.8, 0.2))


def test_uncertainty_matches_kendall_formula():
    balancer = UncertaintyWeights(0.8, 0.2)
    assert balancer.effective_weights() == pytest.approx((0.8, 0.2))
    with torch.no_grad():
        balancer.log_variances.copy_(torch.tensor([0.3, -1.2]))
    focal, contrastive = torch.tensor(0.4), torch.tensor(3.0)
    objective = balancer(focal, contrastive)
    expected = sum(
        math.exp(-s) * loss + 0.5 * s for s, loss in ((0.3, 0.4), (-1.2, 3.0))
    )  # 1/sigma^2 * L + log sigma, with s = log sigma^2
    assert objective.item() == pytest.approx(expected)
    objective.backward()
    grad = [-math.exp(-s) * loss + 0.5 for s, loss in ((0.3, 0.4), (-1.2, 3.0))]
    assert balancer.log_variances.grad.tolist() == pytest.approx(grad)
    assert balancer.effective_weights() == pytest.approx((math.exp(-0.3), math.exp(1.2)))


def test_uncertainty_needs_positive_weights():
    with pytest.raises(ValueError, match="must both be > 0"):
        UncertaintyWeights(1.0, 0.0)


def test_uncertainty_weights_are_learned_with_the_model():
    balancer = UncertaintyWeights(0.8, 0.2)
    optimizer = torch.optim.SGD(balancer.parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        balancer(torch.tensor(0.25), torch.tensor(2.0)).backward()
        optimizer.step()
    # The optimum of exp(-s) L + s/2 is exp(-s) = 1 / (2 L).
    assert balancer.effective_weights() == pytest.approx((2.0, 0.25), rel=1e-2)


def test_dwa_matches_liu_et_al():
    balancer = DynamicWeightAverage(0.8, 0.2, temperature=2.0)
    history = [(0.7, 4.0, None), (0.5, 3.9, None), (0.45, 3.5, None)]
    # feed()[t] is the weight set for epoch t + 1; epochs 0 and 1 use the configured ones.
    weights = [balancer.effective_weights(), *feed(balancer, history)]
    assert weights[0] == weights[1] == pytest.approx((0.8, 0.2))
    for epoch in (2, 3):
        # w_k(t) = K exp(r_k / T) / sum_i exp(r_i / T), r_k = L_k(t-1) / L_k(t-2), x configured
        r = [history[epoch - 1][k] / history[epoch - 2][k] for k in (0, 1)]
        e = [math.exp(x / 2.0) for x in r]
        expected = [0.8 * 2 * e[0] / sum(e), 0.2 * 2 * e[1] / sum(e)]
        assert weights[epoch] == pytest.approx(expected, rel=1e-5)


def test_dwa_gives_weight_to_the_loss_that_stopped_falling():
    balancer = DynamicWeightAverage(0.5, 0.5)
    feed(balancer, [(1.0, 4.0, None), (0.5, 4.0, None)])
    focal_weight, contrastive_weight = balancer.effective_weights()
    assert contrastive_weight > 0.5 > focal_weight
    assert focal_weight + contrastive_weight == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("epochs", [0, 1, 3])
def test_warm_start_trains_classification_alone_for_its_epochs(epochs):
    balancer = WarmStart(0.8, 0.2, epochs=epochs)
    # [the weights of epoch 0, then those set after each epoch for the next]
    weights = [balancer.effective_weights(), *feed(balancer, BOTH_FALL[:5])]
    assert weights[:epochs] == [pytest.approx((0.8, 0.0))] * epochs
    assert weights[epochs:] == [pytest.approx((0.8, 0.2))] * (6 - epochs)
    focal, contrastive = torch.tensor(0.3), torch.tensor(2.5)
    assert float(balancer(focal, contrastive)) == pytest.approx(0.8 * 0.3 + 0.2 * 2.5)


def test_warm_start_resumes_where_it_was():
    first = WarmStart(0.8, 0.2, epochs=2)
    feed(first, BOTH_FALL[:1])
    resumed = WarmStart(0.8, 0.2, epochs=2)
    resumed.load_state_dict(first.state_dict())
    assert resumed.effective_weights() == pytest.approx((0.8, 0.0))
    assert feed(resumed, BOTH_FALL[:3], first=1) == [pytest.approx((0.8, 0.2))] * 2


@pytest.mark.parametrize("epochs", [-1, 1.5])
def test_warm_start_needs_a_whole_number_of_epochs(epochs):
    with pytest.raises(ValueError, match="epochs must be an integer >= 0"):
        WarmStart(0.8, 0.2, epochs=epochs)


def test_the_reading_and_the_rule_agree():
    """The rule applies exactly the override the LossDynamics callback prints."""
    reading = dx.read_history(as_rows(FOCAL_FALLS[:4]))
    assert reading.held == 2
    balancer = RuleBalancer(0.8, 0.2)
    feed(balancer, FOCAL_FALLS[:4])
    assert reading.override == dx.weight_override(*balancer.effective_weights())


def noisy_lag_curves(seed: int, epochs: int = 16) -> list[tuple[float, float, float]]:
    """Focal falling about as fast as flat_threshold (2% an epoch), contrastive flat, both with
    2% noise: the single-epoch reading flips between "contrastive lags" and its neighbours."""
    g = torch.Generator().manual_seed(seed)
    noise = 1 + 0.02 * torch.randn(epochs, 2, generator=g)
    return [
        (0.7 * 0.975**t * float(noise[t, 0]), 4.5 * float(noise[t, 1]), 0.5) for t in range(epochs)
    ]


def test_rule_acts_only_on_a_regime_held_patience_epochs_on_noisy_curves():
    flips = changes_patience_1 = changes_patience_2 = 0
    for seed in range(20):
        history = noisy_lag_curves(seed)
        rows = as_rows(history)
        regimes = [dx.read(rows[: i + 1]).regime for i in range(len(rows))]
        flips += sum(a != b for a, b in itertools.pairwise(regimes[2:]))
        patient = feed(RuleBalancer(0.8, 0.2), history)
        for epoch in range(1, len(patient)):
            if patient[epoch] != patient[epoch - 1]:  # acted after `epoch`: on two readings
                assert regimes[epoch] == regimes[epoch - 1], seed
                assert regimes[epoch] in (dx.CONTRASTIVE_LAGS, dx.FOCAL_LAGS), seed
        hasty = feed(RuleBalancer(0.8, 0.2, thresholds={"patience": 1}), history)
        changes_patience_2 += sum(a != b for a, b in itertools.pairwise(patient))
        changes_patience_1 += sum(a != b for a, b in itertools.pairwise(hasty))
    assert flips > 0  # the curves do flip the reading: the test tests something
    assert changes_patience_2 < changes_patience_1


def test_held_counts_the_consecutive_epochs_of_the_last_regime():
    rows = as_rows(FOCAL_FALLS[:6])
    assert [dx.read_history(rows[: i + 1]).held for i in range(6)] == [1, 2, 1, 2, 3, 4]
    assert dx.read_history(rows).regime == dx.CONTRASTIVE_LAGS
