"""The reading on synthetic curves: every regime, clean and noisy, and its override."""

from __future__ import annotations

import math

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


def peaked(epochs: int = EPOCHS) -> list[float]:
    """Val pair F1 that peaks at epoch 3 and then slides."""
    return [0.3, 0.4, 0.5, 0.55, 0.54, 0.52, 0.5, 0.48][:epochs]


def rows(focal, contrastive, f1, val_focal=None, val_contrastive=None, weights=(0.8, 0.2)):
    """LossDynamics rows; validation curves default to the training ones."""
    val_focal = val_focal or focal
    val_contrastive = val_contrastive or contrastive
    return [
        {
            "epoch": t,
            "focal": focal[t],
            "contrastive_norm": contrastive[t],
            "val_focal": val_focal[t],
            "val_contrastive_norm": val_contrastive[t],
            "val_pair_f1": f1[t],
            "focal_weight": weights[0],
            "contrastive_weight": weights[1],
        }
        for t in range(len(focal))
    ]


MID_RUN = dx.Recipe(max_epochs=100)  # the curves so far of a run with epochs to come

# keyword arguments of rows(), the regime
CASES = {
    "both fall": (
        dict(focal=decay(0.7, 0.15), contrastive=decay(1.0, 0.08), f1=flat(0.5)),
        dx.HEALTHY,
    ),
    "focal falls, contrastive flat": (
        dict(focal=decay(0.7, 0.15), contrastive=flat(0.98), f1=flat(0.5)),
        dx.CONTRASTIVE_LAGS,
    ),
    "contrastive falls, focal flat": (
        dict(focal=flat(0.4), contrastive=decay(1.0, 0.10), f1=flat(0.5)),
        dx.FOCAL_LAGS,
    ),
    "neither falls": (dict(focal=flat(0.7), contrastive=flat(1.0), f1=flat(0.3)), dx.STALLED),
    "both rise": (
        dict(focal=decay(0.5, -0.15), contrastive=decay(0.9, -0.05), f1=flat(0.3)),
        dx.STALLED,
    ),
    "both flat at a low level, F1 flat": (
        dict(focal=settle(0.7, 0.1), contrastive=settle(1.0, 0.4), f1=settle(0.3, 0.72)),
        dx.CONVERGED,
    ),
    "focal falls 10x faster": (
        dict(focal=decay(0.7, 0.30), contrastive=decay(1.0, 0.03), f1=flat(0.5)),
        dx.CONTRASTIVE_LAGS,
    ),
    "contrastive falls 10x faster": (
        dict(focal=decay(0.7, 0.025), contrastive=decay(1.0, 0.25), f1=flat(0.5)),
        dx.FOCAL_LAGS,
    ),
    "val F1 still rising at the end": (
        dict(
            focal=decay(0.7, 0.15),
            contrastive=flat(0.98),
            f1=[0.3 + 0.03 * t for t in range(EPOCHS)],
        ),
        dx.UNDER_TRAINING,
    ),
    "train falls, val rises, F1 peaked": (
        dict(
            focal=decay(0.7, 0.15),
            contrastive=decay(1.0, 0.08),
            f1=peaked(),
            val_focal=[0.5, 0.45, 0.42, 0.41, 0.43, 0.45, 0.48, 0.5],
        ),
        dx.OVER_FITTING,
    ),
    "flat at the starting level": (
        dict(focal=flat(0.69), contrastive=flat(1.0), f1=flat(0.0)),
        dx.STALLED,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_every_regime(case):
    kwargs, expected = CASES[case]
    assert dx.read(rows(**kwargs), MID_RUN).regime == expected


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", range(10))
def test_every_regime_with_noisy_curves(case, seed):
    """2% multiplicative noise per epoch (more than epoch means of real runs show), window 5."""
    kwargs, expected = CASES[case]
    g = torch.Generator().manual_seed(seed)

    def noisy(values, scale=0.02):
        return (torch.tensor(values) * (1 + scale * torch.randn(len(values), generator=g))).tolist()

    noisy_kwargs = {k: noisy(v) if k != "f1" else v for k, v in kwargs.items()}
    noisy_kwargs["f1"] = [v + 0.002 * float(torch.randn(1, generator=g)) for v in kwargs["f1"]]
    reading = dx.read(rows(**noisy_kwargs), MID_RUN, dx.Thresholds(window=5))
    assert reading.regime == expected


def test_every_regime_has_words_and_a_test():
    regimes = {expected for _, expected in CASES.values()} | {dx.WARMING_UP, dx.COLLAPSE}
    assert regimes == set(dx.REGIMES) == set(dx.ADVICE)
    assert all("push" not in advice for advice in dx.ADVICE.values())


def test_a_run_that_used_every_epoch_with_val_loss_still_falling_is_under_trained():
    """Lagging contrastive mid-run; at the last epoch, with val focal falling, train longer."""
    kwargs = CASES["focal falls, contrastive flat"][0]
    assert dx.read(rows(**kwargs), dx.Recipe(max_epochs=8)).regime == dx.UNDER_TRAINING
    flat_val = rows(**kwargs, val_focal=flat(0.3))
    assert dx.read(flat_val, dx.Recipe(max_epochs=8)).regime == dx.CONTRASTIVE_LAGS


def test_overrides_are_runnable_hydra_overrides():
    recipe = dx.Recipe(lr=1e-3, encoder_lr=2e-3, max_epochs=60)
    lags = dx.read(rows(**CASES["focal falls, contrastive flat"][0]), recipe)
    assert lags.override == "loss.focal_weight=0.7 loss.contrastive_weight=0.3"
    under = dx.read(rows(**CASES["val F1 still rising at the end"][0]), recipe)
    assert under.override == "trainer.max_epochs=120"
    over = dx.read(rows(**CASES["train falls, val rises, F1 peaked"][0]), recipe)
    assert over.override == "optimizer.lr=0.0005 model.encoder_lr=0.001"
    # Stalled: a loss that jumped is an lr too high; one that never moved, too low.
    rose = dx.read(rows(**CASES["both rise"][0]), recipe)
    assert rose.override == "optimizer.lr=0.0001 model.encoder_lr=0.0002"
    still = dx.read(rows(**CASES["flat at the starting level"][0]), recipe)
    assert still.override == "optimizer.lr=0.003 model.encoder_lr=0.006"
    assert dx.read(rows(**CASES["both fall"][0]), recipe).override == ""


def test_evidence_gives_the_slopes():
    reading = dx.read(rows(**CASES["focal falls, contrastive flat"][0]), MID_RUN)
    assert reading.evidence["focal_slope"] == pytest.approx(
        dx.relative_slope(decay(0.7, 0.15)[-3:])
    )
    assert reading.evidence["contrastive_slope"] == pytest.approx(0.0)
    assert "focal_slope=-0.1" in reading.evidence_line()


def test_a_contrastive_loss_with_weight_0_has_no_regime():
    """Not trained, its flat curve asks for nothing: focal falling alone is healthy."""
    kwargs = CASES["focal falls, contrastive flat"][0]
    reading = dx.read(rows(**kwargs, weights=(1.0, 0.0)), MID_RUN)
    assert (reading.regime, reading.override) == (dx.HEALTHY, "")
    assert "contrastive_slope" not in reading.evidence
    flat_focal = rows(**CASES["contrastive falls, focal flat"][0], weights=(1.0, 0.0))
    assert dx.read(flat_focal, MID_RUN).regime == dx.STALLED  # not focal_lags
    assert dx.suggested_weights(dx.CONTRASTIVE_LAGS, 1.0, 0.0) is None


def test_collapse_comes_first_and_names_the_heads():
    healthy = rows(**CASES["both fall"][0])
    reading = dx.read(healthy, MID_RUN, troubled_aspects=["A", "B", "C", "D"], aspects_with_gold=5)
    assert reading.regime == dx.COLLAPSE
    assert reading.override == "loss.focal.alpha=inverse_frequency"
    assert reading.evidence["collapsed"] == "A;B;C;D"
    set_already = dx.Recipe(focal_alpha="inverse_frequency", lr=1e-3, encoder_lr=1e-3)
    lower_lr = dx.read(healthy, set_already, troubled_aspects=["A"], aspects_with_gold=1)
    assert lower_lr.override == "optimizer.lr=0.0005 model.encoder_lr=0.0005"
    # Three heads of four are below collapse_aspects (0.8): the curves decide.
    three = dx.read(healthy, MID_RUN, troubled_aspects=["A", "B", "C"], aspects_with_gold=4)
    assert three.regime == dx.HEALTHY
    # A rare aspect never predicted is named in the evidence all the same.
    one = dx.read(healthy, MID_RUN, troubled_aspects=["STORAGE"], aspects_with_gold=10)
    assert one.regime == dx.HEALTHY
    assert "collapsed_heads=1/10 collapsed=STORAGE" in one.evidence_line()


def test_a_jump_tells_a_learning_rate_too_high_from_one_too_low():
    """lr far too high: a loss jumps (> loss_jump, 10%, in an epoch); far too low: the curves
    move by their noise only (a few percent at chance level), which is not a jump."""
    recipe = dx.Recipe(lr=1e-3, encoder_lr=1e-3, max_epochs=60)
    too_low = rows(
        focal=[0.803, 0.8026, 0.8033, 0.7971],
        contrastive=[1.135, 1.186, 1.167, 1.187],  # +4.5%: noise around chance
        f1=flat(0.15, 4),
    )
    reading = dx.read(too_low, recipe)
    assert (reading.regime, reading.evidence["loss_jumped"]) == (dx.STALLED, False)
    assert reading.override == "optimizer.lr=0.003 model.encoder_lr=0.003"
    too_high = rows(focal=[11.7, 371.0, 127.8, 42.3], contrastive=flat(1.1, 4), f1=flat(0.0, 4))
    heads = [f"A{i}" for i in range(9)]
    collapsed = dx.read(too_high, recipe, troubled_aspects=heads, aspects_with_gold=9)
    assert (collapsed.regime, collapsed.evidence["loss_jumped"]) == (dx.COLLAPSE, True)
    assert collapsed.override == "optimizer.lr=0.0001 model.encoder_lr=0.0001"
    strict = dx.Thresholds(loss_jump=0.02)
    assert (
        dx.read(too_low, recipe, strict).override == "optimizer.lr=0.0001 model.encoder_lr=0.0001"
    )


def test_a_focal_loss_above_a_uniform_guess_is_a_learning_rate_too_high():
    """lr 1.0 on UIT-ViSFD (the advice benchmark): the focal loss blew up within the first
    epoch (14.0, then 10.9, 5.1, 2.5, 0.94): it only fell from there, nothing jumped between
    epochs, but a uniform guess scores 0.78."""
    uniform = dx.uniform_focal(4, 2.0)
    assert uniform == pytest.approx(0.75**2 * math.log(4))
    probs = torch.full((1, 4), 0.25)
    naive = -((1 - probs[0, 1]) ** 2) * torch.log(probs[0, 1])  # any target: every class 1/4
    assert uniform == pytest.approx(float(naive))
    blew_up = rows(
        focal=[13.96, 10.95, 5.13, 2.55, 0.94], contrastive=flat(1.0, 5), f1=flat(0.2, 5)
    )
    heads = [f"A{i}" for i in range(10)]
    recipe = dx.Recipe(lr=1.0, encoder_lr=1.0, max_epochs=5, focal_uniform=uniform)
    reading = dx.read(blew_up, recipe, troubled_aspects=heads, aspects_with_gold=10)
    assert reading.regime == dx.COLLAPSE and reading.evidence["focal_above_uniform_guess"]
    assert reading.override == "optimizer.lr=0.1 model.encoder_lr=0.1"
    unknown = dx.Recipe(lr=1.0, encoder_lr=1.0, max_epochs=5)  # class weights set, or no config
    assert dx.read(blew_up, unknown, troubled_aspects=heads, aspects_with_gold=10).override == (
        "loss.focal.alpha=inverse_frequency"
    )


def test_a_memorising_run_whose_training_loss_holds_is_over_fitting():
    """16 comments, many epochs: train focal barely moves (-1%/epoch, "flat") while val focal
    rises 7%/epoch; a val loss rising less than flat_threshold with training flat is noise."""
    memorising = rows(
        focal=[0.19, 0.182, 0.177, 0.179],
        contrastive=flat(1.0, 4),
        f1=[0.13, 0.12, 0.11, 0.115],
        val_focal=[0.47, 0.50, 0.53, 0.56],
        val_contrastive=flat(1.0, 4),
    )
    assert dx.read(memorising, MID_RUN).regime == dx.OVER_FITTING
    noise = [dict(r, val_focal=0.5 * (1 + 0.015 * i)) for i, r in enumerate(memorising)]
    assert dx.read(noise, MID_RUN).regime != dx.OVER_FITTING


def test_collapsed_heads_from_class_counts():
    # (A, C) counts, C = absent + 3 polarities, 100 cells an aspect.
    gold = torch.tensor([[90, 5, 5, 0], [50, 40, 10, 0], [100, 0, 0, 0], [60, 20, 20, 0]])
    predicted = torch.tensor([[100, 0, 0, 0], [0, 100, 0, 0], [100, 0, 0, 0], [55, 25, 20, 0]])
    # 0: "absent" everywhere, mentioned in gold; 1: Positive everywhere (40% of gold);
    # 2: never mentioned in gold (not counted); 3: a spread like gold's.
    assert dx.collapsed_aspects(gold, predicted, share=0.99) == [0, 1]


def test_contrastive_chance_is_supcon_at_uniform_similarity():
    """With every embedding equal, SupCon is exactly log(candidates): chance = the loss."""
    from absa_lightning.losses import SupConLoss

    labels = torch.tensor([[1, 0, 2], [1, 2, 0], [2, 1, 1], [0, 0, 3]])
    same = torch.nn.functional.normalize(torch.ones(4, 3, 8), dim=-1)
    for negatives in ("all", "same_aspect"):
        loss = SupConLoss(negatives=negatives)(same, labels)
        assert float(dx.contrastive_chance(labels, negatives)) == pytest.approx(
            float(loss), rel=1e-5
        )
    # Batch size drops out: a batch twice as big has chance log(2n - 1), not log(n - 1).
    assert float(dx.contrastive_chance(labels.repeat(2, 1))) == pytest.approx(math.log(15))
    assert float(dx.contrastive_chance(torch.zeros(2, 3, dtype=torch.long))) == 1.0


def test_the_regime_reads_only_the_last_window_of_epochs():
    focal = decay(0.7, 0.2, 4) + flat(0.7 * 0.8**3, 3)
    contrastive = flat(0.98, 4) + decay(0.98, 0.1, 3)
    f1 = flat(0.5, 7)
    assert dx.read(rows(focal[:4], contrastive[:4], f1[:4])).regime == dx.CONTRASTIVE_LAGS
    assert dx.read(rows(focal, contrastive, f1), MID_RUN).regime == dx.FOCAL_LAGS


def test_too_few_epochs_is_warming_up():
    two = rows([0.7, 0.5], [1.0, 0.9], [0.1, 0.1])
    assert dx.read(two).regime == dx.WARMING_UP
    assert dx.read(two, thresholds=dx.Thresholds(window=2)).regime != dx.WARMING_UP


def test_flat_threshold_is_relative_to_the_loss_level():
    """Falling 0.01 an epoch is flat for a loss near 4 (0.25%) and steep for one near 0.1 (10%)."""
    small = [0.1 - 0.01 * t for t in range(4)]
    large = [4.0 - 0.01 * t for t in range(4)]
    assert dx.relative_slope(small) < -0.02 < dx.relative_slope(large)
    assert dx.read(rows(small, large, flat(0.5, 4))).regime == dx.CONTRASTIVE_LAGS


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
    for regime in set(dx.REGIMES) - {dx.CONTRASTIVE_LAGS, dx.FOCAL_LAGS}:
        assert dx.suggested_weights(regime, 0.8, 0.2) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window", 1),
        ("flat_threshold", 0),
        ("rate_ratio", 0.5),
        ("converged_drop", 1.0),
        ("collapse_share", 0),
        ("collapse_aspects", 1.5),
        ("patience", 0),
        ("loss_jump", 0),
        ("patience", 1.5),
    ],
)
def test_bad_thresholds_name_the_key(field, value):
    with pytest.raises(ValueError, match=f"diagnostics.{field}"):
        dx.Thresholds(**{field: value})
