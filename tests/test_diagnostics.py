"""The loss-dynamics classifier on synthetic curves: every row of the table, clean and noisy."""

from __future__ import annotations

import pytest
import torch

from absa_lightning import diagnostics as dx

EPOCHS = 8


def decay(start: float, rate: float, epochs: int = EPOCHS) -> list[float]:
    """start * (1 - rate)^t: falls `rate` of itself an epoch."""
    return [start * (1 - rate) ** t for t in range(epochs)]


def flat(level: float, epochs: int = EPOCHS) -> list[float]:
    return [level] * epochs


def settle(start: float, floor: float, epochs: int = EPOCHS) -> list[float]:
    """Falls fast to `floor` within three epochs, then stays there."""
    return [floor + (start - floor) * 0.05**t for t in range(epochs)]


# (focal, contrastive, val pair F1, regime): one case per row of the table, plus the edges.
CASES = {
    "both fall": (decay(0.7, 0.15), decay(4.0, 0.08), decay(0.5, -0.05), dx.HEALTHY),
    "focal falls, contrastive flat": (
        decay(0.7, 0.15),
        flat(4.5),
        decay(0.5, -0.05),
        dx.CONTRASTIVE_LAGS,
    ),
    "contrastive falls, focal flat": (
        flat(0.4),
        decay(4.0, 0.10),
        flat(0.5),
        dx.FOCAL_LAGS,
    ),
    "neither falls": (flat(0.7), flat(4.7), flat(0.3), dx.STALLED),
    "both rise": (decay(0.5, -0.1), decay(3.0, -0.05), flat(0.3), dx.STALLED),
    "both flat at a low level, F1 flat": (
        settle(0.7, 0.1),
        settle(4.5, 2.0),
        settle(0.3, 0.72),
        dx.CONVERGED,
    ),
    # Comparable relative rates, not equal: 10x faster focal means contrastive is flat.
    "focal falls 10x faster": (
        decay(0.7, 0.30),
        decay(4.0, 0.03),
        flat(0.5),
        dx.CONTRASTIVE_LAGS,
    ),
    "contrastive falls 10x faster": (
        decay(0.7, 0.025),
        decay(4.0, 0.25),
        flat(0.5),
        dx.FOCAL_LAGS,
    ),
    "low and flat, F1 still rising": (
        settle(0.7, 0.1),
        settle(4.5, 2.0),
        [0.3 + 0.03 * t for t in range(EPOCHS)],
        dx.HEALTHY,
    ),
    # Flat from the start: not converged (never fell), stalled.
    "flat at the starting level": (flat(0.69), flat(4.6), flat(0.0), dx.STALLED),
}


@pytest.mark.parametrize("case", CASES)
def test_every_row_of_the_table(case):
    focal, contrastive, f1, expected = CASES[case]
    assert dx.classify(focal, contrastive, f1) == expected


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", range(10))
def test_every_row_with_noisy_curves(case, seed):
    """2% multiplicative noise per epoch (more than epoch means of real runs show), window 5."""
    focal, contrastive, f1, expected = CASES[case]
    g = torch.Generator().manual_seed(seed)

    def noisy(values, scale=0.02):
        return (torch.tensor(values) * (1 + scale * torch.randn(len(values), generator=g))).tolist()

    f1_noisy = [v + 0.002 * float(torch.randn(1, generator=g)) for v in f1]
    thresholds = dx.Thresholds(window=5)
    assert dx.classify(noisy(focal), noisy(contrastive), f1_noisy, thresholds) == expected


def test_the_regime_reads_only_the_last_window_of_epochs():
    focal = decay(0.7, 0.2, 4) + flat(0.7 * 0.8**3, 3)
    contrastive = flat(4.5, 4) + decay(4.5, 0.1, 3)
    assert dx.classify(focal[:4], contrastive[:4]) == dx.CONTRASTIVE_LAGS
    assert dx.classify(focal, contrastive) == dx.FOCAL_LAGS


def test_too_few_epochs_is_warming_up():
    assert dx.classify([0.7, 0.5], [4.0, 3.0]) == dx.WARMING_UP
    assert dx.classify([0.7, 0.5], [4.0, 3.0], thresholds=dx.Thresholds(window=2)) != dx.WARMING_UP


def test_flat_threshold_is_relative_to_the_loss_level():
    """Falling 0.01 an epoch is flat for a loss near 4 (0.25%) and steep for one near 0.1 (10%)."""
    small = [0.1 - 0.01 * t for t in range(4)]
    large = [4.0 - 0.01 * t for t in range(4)]
    assert dx.relative_slope(small) < -0.02 < dx.relative_slope(large)
    assert dx.classify(small, large) == dx.CONTRASTIVE_LAGS


def test_slope_is_the_least_squares_fit():
    ys = [3.0, 1.0, 2.0, 0.5]
    n = len(ys)
    mean_x, mean_y = (n - 1) / 2, sum(ys) / n
    expected = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys)) / sum(
        (x - mean_x) ** 2 for x in range(n)
    )
    assert dx.slope(ys) == pytest.approx(expected)


def test_suggested_weights_follow_the_table():
    assert dx.suggested_weights(dx.CONTRASTIVE_LAGS, 0.8, 0.2) == pytest.approx((0.7, 0.3))
    assert dx.suggested_weights(dx.FOCAL_LAGS, 0.8, 0.2) == pytest.approx((0.9, 0.1))
    assert dx.suggested_weights(dx.FOCAL_LAGS, 0.95, 0.05) == pytest.approx((1.0, 0.0))
    for regime in (dx.HEALTHY, dx.STALLED, dx.CONVERGED, dx.WARMING_UP):
        assert dx.suggested_weights(regime, 0.8, 0.2) is None


def test_override_line_is_pasteable():
    line = dx.override_line(dx.suggested_weights(dx.CONTRASTIVE_LAGS, 0.8, 0.2))
    assert line == "loss.focal_weight=0.7 loss.contrastive_weight=0.3"
    assert dx.override_line(None) == ""


def test_words_never_say_the_loss_pushes():
    """A lower contrastive loss means the embeddings are already close, not a harder push."""
    assert all("push" not in advice for advice in dx.ADVICE.values())
    assert set(dx.ADVICE) == {
        dx.HEALTHY,
        dx.CONTRASTIVE_LAGS,
        dx.FOCAL_LAGS,
        dx.STALLED,
        dx.CONVERGED,
        dx.WARMING_UP,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [("window", 1), ("flat_threshold", 0), ("rate_ratio", 0.5), ("converged_drop", 1.0)],
)
def test_bad_thresholds_name_the_key(field, value):
    with pytest.raises(ValueError, match=f"diagnostics.{field}"):
        dx.Thresholds(**{field: value})


def test_histories_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="3 focal values but 2 contrastive"):
        dx.classify([1, 2, 3], [1, 2])
