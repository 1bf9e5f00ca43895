"""The Python API: AspectSentimentPredictor on a tiny checkpoint trained in the session."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from absa_lightning import AspectSentimentPredictor
from absa_lightning.data.preprocess import PREPROCESSORS
from absa_lightning.errors import AbsaUserError
from absa_lightning.models import scratch_bert
from absa_lightning.predictor import aspect_thresholds, decode, load_predictor

COMMENTS = [
    "Pin trâu, camera hơi mờ",
    "Máy đẹp, giá rẻ, pin tốt 😍👍",
    "Màn hình đẹp. 画面很好. Экран хороший!",  # mixed scripts: unknown words, not errors
    "ok",
    "Nhân viên tư vấn nhiệt tình, giao hàng nhanh",
]


@pytest.fixture(scope="module")
def predictor(tiny_run: dict) -> AspectSentimentPredictor:
    return AspectSentimentPredictor.from_checkpoint(tiny_run["best_checkpoint"])


def test_predicts_aspects_with_consistent_probabilities(
    predictor: AspectSentimentPredictor, tiny_run: dict
) -> None:
    assert predictor.aspects == tiny_run["aspects"]
    assert predictor.max_length == 128  # conf/data: max_length, kept in the checkpoint
    probs, truncated = predictor.predict_proba(COMMENTS)
    assert probs.shape == (len(COMMENTS), len(predictor.aspects), 4)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(probs.shape[:2]))
    assert not truncated.any()

    predictions = predictor.predict(COMMENTS)
    assert [p.text for p in predictions] == COMMENTS
    assert sum(len(p.aspects) for p in predictions) > 0  # the model says something
    for i, prediction in enumerate(predictions):
        for a in prediction.aspects:
            col = predictor.aspects.index(a.aspect)
            cls = 1 + predictor.polarities.index(a.polarity)
            assert a.mentioned_probability == pytest.approx(1 - probs[i, col, 0].item(), abs=1e-6)
            joint = a.mentioned_probability * a.polarity_probability
            assert joint == pytest.approx(probs[i, col, cls].item(), abs=1e-6)
        # Default decoding is the metrics': the checkpoint's thresholds tuned on dev
        # (tune_thresholds), argmax over {absent, polarities} for the aspects without one.
        classes = decode(
            probs[i : i + 1], aspect_thresholds(tiny_run["thresholds"], predictor.aspects)
        )
        mentioned = {predictor.aspects[c] for c in classes[0].nonzero().flatten().tolist()}
        assert {a.aspect for a in prediction.aspects} == mentioned


def test_batch_size_and_order_do_not_change_predictions(
    predictor: AspectSentimentPredictor, tiny_run: dict
) -> None:
    one_by_one = AspectSentimentPredictor.from_checkpoint(tiny_run["best_checkpoint"], batch_size=1)
    reversed_probs, _ = one_by_one.predict_proba(COMMENTS[::-1])
    probs, _ = predictor.predict_proba(COMMENTS)
    torch.testing.assert_close(reversed_probs.flip(0), probs, atol=1e-5, rtol=0)


def test_predictions_come_back_in_the_callers_order() -> None:
    """Batches run shortest first; each comment's row is its own. A net whose logit is the
    comment's token count shows which comment a row came from."""

    class CountingNet(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(len(input_ids), 1, 2)
            logits[:, 0, 1] = attention_mask.sum(dim=1).float()
            return SimpleNamespace(logits=logits)

    texts = [*COMMENTS, "  ", "pin"]
    tokenizer, _ = scratch_bert(
        texts, vocab_size=100, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=16
    )
    counting = AspectSentimentPredictor(
        CountingNet(), tokenizer, ["A"], ["Positive"], batch_size=2, device="cpu"
    )
    probs, truncated = counting.predict_proba(texts)
    counts = [len(tokenizer(t)["input_ids"]) for t in texts]
    expected = torch.tensor([[0.0, float(n)] for n in counts]).softmax(dim=-1)
    expected[5] = torch.tensor([1.0, 0.0])  # blank: not run
    torch.testing.assert_close(probs[:, 0], expected)
    assert not truncated.any()


def test_blank_long_and_odd_comments(predictor: AspectSentimentPredictor) -> None:
    long = "Pin trâu, camera hơi mờ, " * 200
    predictions = predictor.predict(["", "   \n", long, "😀😀😀", "ok"])
    assert predictions[0].aspects == [] and predictions[1].aspects == []
    assert [p.truncated for p in predictions] == [False, False, True, False, False]
    probs, _ = predictor.predict_proba([""])
    assert probs[0, :, 0].eq(1).all()  # a blank comment is not run: certainly absent
    with pytest.raises(TypeError, match="comment 1 is a int"):
        predictor.predict(["ok", 3])


def test_threshold_global_and_per_aspect(tiny_run: dict) -> None:
    path = tiny_run["best_checkpoint"]
    everything = AspectSentimentPredictor.from_checkpoint(path, threshold=0.0).predict(COMMENTS)
    assert all(len(p.aspects) == len(tiny_run["aspects"]) for p in everything)
    nothing = AspectSentimentPredictor.from_checkpoint(path, threshold=1.0).predict(COMMENTS)
    assert all(p.aspects == [] for p in nothing)

    # threshold=None: argmax for all, in place of the checkpoint's tuned thresholds.
    default = AspectSentimentPredictor.from_checkpoint(path, threshold=None).predict(COMMENTS)
    first = tiny_run["aspects"][0]
    only_first = AspectSentimentPredictor.from_checkpoint(path, threshold={first: 0.0})
    for got, base in zip(only_first.predict(COMMENTS), default, strict=True):
        assert first in {a.aspect for a in got.aspects}  # forced on
        others = [a for a in got.aspects if a.aspect != first]
        assert others == [a for a in base.aspects if a.aspect != first]  # argmax, as before


def test_decode_by_hand() -> None:
    # (1, 3, 4): [absent, Positive, Negative, Neutral]
    probs = torch.tensor(
        [[[0.40, 0.20, 0.20, 0.20], [0.30, 0.10, 0.45, 0.15], [0.60, 0.30, 0.05, 0.05]]]
    )
    argmax = aspect_thresholds(None, ["A", "B", "C"])
    assert decode(probs, argmax).tolist() == [[0, 2, 0]]  # A: mentioned at 0.6, but no polarity
    assert decode(probs, aspect_thresholds(0.5, ["A", "B", "C"])).tolist() == [[1, 2, 0]]
    mixed = aspect_thresholds({"C": 0.35}, ["A", "B", "C"])
    assert decode(probs, mixed).tolist() == [[0, 2, 1]]


@pytest.mark.parametrize(
    ("threshold", "message"),
    [
        ({"NOPE": 0.5}, r"unknown aspect\(s\) \['NOPE'\]"),
        (1.5, "must be a number in \\[0, 1\\], got 1.5"),
        ({"A": "high"}, "threshold for A must be a number"),
    ],
)
def test_bad_thresholds_are_refused(threshold, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        aspect_thresholds(threshold, ["A", "B"])


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AbsaUserError, match="no such checkpoint file or exported folder"):
        load_predictor(tmp_path / "nope.ckpt")
    with pytest.raises(AbsaUserError, match="not an exported model"):
        load_predictor(tmp_path)  # a folder without absa_config.json


def test_checkpoint_from_before_max_length_was_kept(tiny_run: dict, tmp_path: Path) -> None:
    checkpoint = torch.load(tiny_run["best_checkpoint"], weights_only=True)
    for key in ("max_length", "preprocess"):
        del checkpoint["hyper_parameters"][key]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    predictor = AspectSentimentPredictor.from_checkpoint(tmp_path / "old.ckpt")
    assert predictor.max_length == 128
    assert predictor.preprocess_config is None


def test_checkpoint_keeps_max_length_and_preprocessing(
    tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Comments are cut and prepared as the training data was (PhoBERT: segmented words)."""
    checkpoint = torch.load(tiny_run["best_checkpoint"], weights_only=True)
    checkpoint["hyper_parameters"]["max_length"] = 4
    torch.save(checkpoint, tmp_path / "short.ckpt")
    short = AspectSentimentPredictor.from_checkpoint(tmp_path / "short.ckpt")
    batch, truncated = short.encode(["pin trâu", "pin trâu camera mờ"])
    assert batch["input_ids"].shape == (2, 4)  # [CLS] pin trâu [SEP]; [CLS] pin trâu [SEP], cut
    assert truncated.tolist() == [False, True]

    monkeypatch.setitem(PREPROCESSORS, "first_words", lambda text, n: " ".join(text.split()[:n]))
    checkpoint["hyper_parameters"]["preprocess"] = {"name": "first_words", "n": 1}
    torch.save(checkpoint, tmp_path / "prepared.ckpt")
    prepared = AspectSentimentPredictor.from_checkpoint(tmp_path / "prepared.ckpt")
    batch, truncated = prepared.encode(["pin trâu camera mờ"])
    assert batch["input_ids"].tolist() == [prepared.tokenizer("pin")["input_ids"]]
    assert truncated.tolist() == [False]
    probs, _ = prepared.predict_proba(["pin trâu camera mờ", "pin"])
    torch.testing.assert_close(probs[0], probs[1])
