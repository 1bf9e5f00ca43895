from fractions import Fraction

import pytest
import torch

from absa_lightning.metrics import AspectConfusionMatrix

SCORES = ("aspect_f1", "pair_f1", "aspect_f1_macro", "pair_f1_macro", "polarity_acc")

# 2 comments x 3 aspects, classes {0 = absent, 1..3 = polarity}.
#   c0 a0: gold 1, pred 1 -> detected, polarity right
#   c0 a1: gold 2, pred 3 -> detected, polarity wrong
#   c0 a2: gold 0, pred 2 -> false positive
#   c1 a0: gold 3, pred 0 -> missed
#   c1 a1, c1 a2: gold 0, pred 0 -> true absent
# gold = 3, pred = 3, detected = 2, pair_tp = 1.
HAND_TARGET = torch.tensor([[1, 2, 0], [3, 0, 0]])
HAND_PREDS = torch.tensor([[1, 3, 2], [0, 0, 0]])
# Per aspect (gold, pred, detected, pair_tp):
#   a0 (2, 1, 1, 1): aspect P 1, R 1/2, F1 2/3; pair P 1, R 1/2, F1 2/3
#   a1 (1, 1, 1, 0): aspect P 1, R 1,   F1 1;   pair P 0, R 0,   F1 0
#   a2 (0, 1, 0, 0): aspect P 0, R 0/0 -> 0, F1 0; pair all 0
HAND_EXPECTED = {
    "aspect_f1": Fraction(2, 3),  # P = R = 2/3
    "pair_f1": Fraction(1, 3),  # P = R = 1/3
    "aspect_f1_macro": Fraction(5, 9),  # (2/3 + 1 + 0) / 3
    "pair_f1_macro": Fraction(2, 9),  # (2/3 + 0 + 0) / 3
    "polarity_acc": Fraction(1, 2),  # 1 right of 2 detected
}
HAND_PER_ASPECT = {
    "aspect_precision": [1, 1, 0],
    "aspect_recall": [Fraction(1, 2), 1, 0],
    "aspect_f1": [Fraction(2, 3), 1, 0],
    "pair_precision": [1, 0, 0],
    "pair_recall": [Fraction(1, 2), 0, 0],
    "pair_f1": [Fraction(2, 3), 0, 0],
}


def _scores(preds, target, num_aspects, num_polarities=3):
    metric = AspectConfusionMatrix(num_aspects, num_polarities)
    metric.update(preds, target)
    return metric.compute()


def _assert_scores(result, expected):
    assert set(result) == set(SCORES)
    for name, value in expected.items():
        assert result[name].ndim == 0, name
        assert result[name].item() == pytest.approx(float(value)), name


def _one_hot_logits(preds, num_classes):
    noise = torch.rand(*preds.shape, num_classes, generator=torch.Generator().manual_seed(0))
    return noise + 2 * torch.nn.functional.one_hot(preds, num_classes).float()


def test_hand_case():
    _assert_scores(_scores(HAND_PREDS, HAND_TARGET, 3), HAND_EXPECTED)


def test_is_one_confusion_matrix_over_all_aspects():
    metric = AspectConfusionMatrix(3)
    assert metric.num_classes == 3 * 4
    metric.update(HAND_PREDS, HAND_TARGET)
    assert metric.confmat.shape == (12, 12)
    assert metric.confmat.sum().item() == HAND_TARGET.numel()
    # c0 a1: gold 2, pred 3 lands in aspect 1's block at (4 + 2, 4 + 3).
    assert metric.confmat[6, 7].item() == 1


def test_macro_differs_from_micro_on_unbalanced_case():
    # 4 comments x 2 aspects. a0 is frequent (4 gold) and always detected, one polarity wrong;
    # a1 is rare (1 gold) and missed.
    target = torch.tensor([[1, 0], [2, 0], [1, 0], [3, 2]])
    preds = torch.tensor([[1, 0], [3, 0], [1, 0], [3, 0]])
    # a0: gold 4, pred 4, detected 4, pair_tp 3;  a1: gold 1, pred 0, detected 0.
    expected = {
        "aspect_f1": Fraction(8, 9),  # 2*4 / (4 + 5)
        "pair_f1": Fraction(2, 3),  # 2*3 / (4 + 5)
        "aspect_f1_macro": Fraction(1, 2),  # (1 + 0) / 2
        "pair_f1_macro": Fraction(3, 8),  # (2*3/8 + 0) / 2
        "polarity_acc": Fraction(3, 4),
    }
    _assert_scores(_scores(preds, target, 2), expected)


def test_macro_counts_aspects_without_gold_or_predictions_as_zero():
    # a2 never occurs and is never predicted: micro ignores it, macro averages its F1 of 0 in.
    target = torch.tensor([[1, 2, 0], [3, 1, 0]])
    result = _scores(target.clone(), target, 3)
    assert result["aspect_f1"].item() == 1.0
    assert result["pair_f1"].item() == 1.0
    assert result["aspect_f1_macro"].item() == pytest.approx(2 / 3)
    assert result["pair_f1_macro"].item() == pytest.approx(2 / 3)


def test_two_updates_equal_one_on_concatenation_and_reset():
    gen = torch.Generator().manual_seed(1)
    preds = torch.randint(0, 4, (20, 5), generator=gen)
    target = torch.randint(0, 4, (20, 5), generator=gen)
    full = _scores(preds, target, 5)

    metric = AspectConfusionMatrix(5)
    metric.update(preds[:7], target[:7])
    metric.update(preds[7:], target[7:])
    split = metric.compute()
    for name in SCORES:
        assert split[name].item() == pytest.approx(full[name].item()), name

    metric.reset()
    assert metric.confmat.sum().item() == 0
    metric.update(preds[7:], target[7:])
    after_reset, tail_only = metric.compute(), _scores(preds[7:], target[7:], 5)
    assert after_reset["pair_f1"].item() != pytest.approx(full["pair_f1"].item())
    for name in SCORES:
        assert after_reset[name].item() == pytest.approx(tail_only[name].item()), name


def test_merged_states_equal_single_metric():
    # merge_state sums `confmat` like the DDP reduction does.
    gen = torch.Generator().manual_seed(2)
    preds = torch.randint(0, 4, (30, 4), generator=gen)
    target = torch.randint(0, 4, (30, 4), generator=gen)
    first, second = AspectConfusionMatrix(4), AspectConfusionMatrix(4)
    first.update(preds[:10], target[:10])
    second.update(preds[10:], target[10:])
    first.merge_state(second)
    merged, full = first.compute(), _scores(preds, target, 4)
    for name in SCORES:
        assert merged[name].item() == pytest.approx(full[name].item()), name


def test_logits_match_argmax_preds():
    logits = _one_hot_logits(HAND_PREDS, 4)
    assert torch.equal(logits.argmax(-1), HAND_PREDS)
    _assert_scores(_scores(logits, HAND_TARGET, 3), HAND_EXPECTED)


def test_perfect_predictions_score_one():
    target = torch.tensor([[1, 2, 3], [0, 1, 2], [3, 0, 1]])
    result = _scores(target.clone(), target, 3)
    _assert_scores(result, {name: 1 for name in SCORES})
    table = AspectConfusionMatrix(3)
    table.update(target.clone(), target)
    for name, values in table.per_aspect().items():
        if name != "support":
            assert torch.equal(values, torch.ones(3)), name


def test_all_absent_predictions_score_zero_without_nan():
    result = _scores(torch.zeros_like(HAND_TARGET), HAND_TARGET, 3)
    _assert_scores(result, {name: 0 for name in SCORES})


def test_all_absent_everywhere_scores_zero_without_nan():
    metric = AspectConfusionMatrix(3)
    metric.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    _assert_scores(metric.compute(), {name: 0 for name in SCORES})
    for name, values in metric.per_aspect().items():
        assert not values.float().isnan().any(), name
        assert values.sum().item() == 0, name


def test_per_aspect_table_on_hand_case():
    metric = AspectConfusionMatrix(3)
    metric.update(HAND_PREDS, HAND_TARGET)
    table = metric.per_aspect()
    assert set(table) == {*HAND_PER_ASPECT, "support"}
    assert torch.equal(table["support"], torch.tensor([2, 1, 0]))
    for name, expected in HAND_PER_ASPECT.items():
        assert table[name].shape == (3,), name
        assert table[name].tolist() == pytest.approx([float(v) for v in expected]), name
    # Reading the table leaves the state alone.
    _assert_scores(metric.compute(), HAND_EXPECTED)


def test_forward_returns_batch_scores_and_accumulates():
    metric = AspectConfusionMatrix(3)
    batch = metric(HAND_PREDS, HAND_TARGET)
    _assert_scores(batch, HAND_EXPECTED)
    perfect = metric(HAND_TARGET.clone(), HAND_TARGET)
    assert perfect["pair_f1"].item() == 1.0
    # Accumulated: gold 6, pred 6, detected 5, pair_tp 4.
    total = metric.compute()
    assert total["aspect_f1"].item() == pytest.approx(5 / 6)
    assert total["pair_f1"].item() == pytest.approx(4 / 6)
    assert total["polarity_acc"].item() == pytest.approx(4 / 5)


@pytest.mark.parametrize(
    ("preds", "target"),
    [
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long)),  # batch
        (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)),  # aspects
        (torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long)),  # not 2-D
        (torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)),  # logits classes
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long)),  # float, no class dim
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)),  # float target
        (torch.full((2, 3), 4), torch.zeros(2, 3, dtype=torch.long)),  # pred id out of range
        (torch.zeros(2, 3, dtype=torch.long), torch.full((2, 3), -1)),  # target id < 0
    ],
)
def test_invalid_inputs_raise(preds, target):
    metric = AspectConfusionMatrix(3)
    with pytest.raises(ValueError):
        metric.update(preds, target)


@pytest.mark.parametrize("kwargs", [{"num_aspects": 0}, {"num_aspects": 3, "ignore_index": 0}])
def test_invalid_constructor_args_raise(kwargs):
    with pytest.raises(ValueError):
        AspectConfusionMatrix(**kwargs)


def _reference(preds, target, num_aspects):
    """Plain-Python VLSP-style counts over cells."""

    def f1(tp, n_pred, n_gold):
        return 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0

    gold = [0] * num_aspects
    pred = [0] * num_aspects
    detected = [0] * num_aspects
    pair_tp = [0] * num_aspects
    for row_p, row_t in zip(preds.tolist(), target.tolist(), strict=True):
        for a, (p, t) in enumerate(zip(row_p, row_t, strict=True)):
            gold[a] += t != 0
            pred[a] += p != 0
            detected[a] += p != 0 and t != 0
            pair_tp[a] += p != 0 and p == t
    n_det = sum(detected)
    return {
        "aspect_f1": f1(n_det, sum(pred), sum(gold)),
        "pair_f1": f1(sum(pair_tp), sum(pred), sum(gold)),
        "aspect_f1_macro": sum(map(f1, detected, pred, gold)) / num_aspects,
        "pair_f1_macro": sum(map(f1, pair_tp, pred, gold)) / num_aspects,
        "polarity_acc": sum(pair_tp) / n_det if n_det else 0.0,
    }


@pytest.mark.parametrize("seed", range(3))
def test_random_against_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    # Skewed towards absent, as in real data; aspect 4 kept rarer still.
    target = torch.randint(0, 4, (50, 5), generator=gen)
    target *= torch.rand(50, 5, generator=gen) < torch.tensor([0.6, 0.5, 0.4, 0.3, 0.05])
    preds = torch.randint(0, 4, (50, 5), generator=gen)
    preds *= torch.rand(50, 5, generator=gen) < 0.4
    result = _scores(preds, target, 5)
    expected = _reference(preds, target, 5)
    for name in SCORES:
        assert result[name].item() == pytest.approx(expected[name]), name
