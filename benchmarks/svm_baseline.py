"""The classical baseline: TF-IDF n-grams + a linear SVM, one 4-class classifier per aspect.

    python -m benchmarks.bench --only svm [--quick]      # this section alone

Each aspect's classifier predicts its column of the label matrix (0 = absent, 1.. = the
polarities), so the splits are read by the project's own data module and the predictions scored
by `AspectConfusionMatrix`, exactly as the neural rows are. Features, fitted on the training
split: word 1-2-grams and character 2-5-grams (`char_wb`), both with sublinear TF. `char_wb`
rather than `char`: Vietnamese writes a word as space-separated syllables, and the word bigrams
already see syllable pairs; n-grams kept inside a syllable add what the words miss (misspelt
syllables, missing diacritics, "k"/"ko" for "không") with fewer, less redundant features.

C is chosen per aspect, from `svm.C_grid` (benchmarks/bench.yaml), by that aspect's pair F1 on
dev: one classifier per aspect, each tuned on the score it contributes to, and aspects differ
(frequent BATTERY, rare PRICE Neutral) in how much regularisation they want.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, make_union
from sklearn.svm import LinearSVC

from absa_lightning.data import AspectSentimentDataset
from absa_lightning.metrics import AspectConfusionMatrix
from benchmarks.results import METRICS, REPO, Section, load_settings

ROW = "tfidf_svm"


@dataclass(frozen=True)
class Splits:
    aspects: list[str]
    polarities: list[str]
    train: AspectSentimentDataset
    dev: AspectSentimentDataset
    test: AspectSentimentDataset


@dataclass(frozen=True)
class SvmResult:
    C: dict[str, float]  # aspect -> the C chosen on dev
    dev_pair_f1: dict[str, dict[float, float]]  # aspect -> C -> that aspect's dev pair F1
    predictions: torch.Tensor  # (N_test, A) class ids
    scores: dict[str, float]  # AspectConfusionMatrix on the test split
    fit_seconds: float  # features + every classifier of the C search
    num_features: int


def read_splits(data_dir: Path) -> Splits:
    """Train, dev and test as training reads them: conf/data (UIT-ViSFD's CSV) at data_dir."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data.root={data_dir}"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    sets = datamodule.datasets
    return Splits(
        datamodule.aspects, datamodule.polarities, sets["train"], sets["dev"], sets["test"]
    )


def tfidf_features() -> FeatureUnion:
    return make_union(
        # \w+ keeps one-letter tokens, which sklearn's default pattern drops ("k" = "không")
        TfidfVectorizer(
            analyzer="word", ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"
        ),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    )


def scores(predictions: torch.Tensor, gold: torch.Tensor, num_polarities: int) -> dict[str, float]:
    """The project's metrics of class-id predictions (N, A) against the gold label matrix."""
    metric = AspectConfusionMatrix(num_aspects=gold.shape[1], num_polarities=num_polarities)
    metric.update(predictions, gold)
    return {name: float(value) for name, value in metric.compute().items()}


def fit_and_score(splits: Splits, C_grid: Sequence[float]) -> SvmResult:
    """Per aspect: a LinearSVC for each C, the best on dev kept; then the test split scored."""
    grid = sorted(C_grid)  # ties go to the smaller C, the stronger regularisation
    num_polarities = len(splits.polarities)
    start = time.perf_counter()
    features = tfidf_features()
    x_train = features.fit_transform(splits.train.texts)
    x_dev = features.transform(splits.dev.texts)
    chosen, dev_pair_f1, classifiers = {}, {}, []
    for a, aspect in enumerate(splits.aspects):
        by_C = {C: LinearSVC(C=C).fit(x_train, splits.train.labels[:, a].numpy()) for C in grid}
        dev_gold = splits.dev.labels[:, a : a + 1]
        dev_pair_f1[aspect] = {
            C: scores(torch.as_tensor(clf.predict(x_dev)).unsqueeze(1), dev_gold, num_polarities)[
                "pair_f1"
            ]
            for C, clf in by_C.items()
        }
        chosen[aspect] = max(grid, key=dev_pair_f1[aspect].__getitem__)
        classifiers.append(by_C[chosen[aspect]])
    fit_seconds = time.perf_counter() - start

    x_test = features.transform(splits.test.texts)
    predictions = torch.stack([torch.as_tensor(clf.predict(x_test)) for clf in classifiers], dim=1)
    return SvmResult(
        C=chosen,
        dev_pair_f1=dev_pair_f1,
        predictions=predictions,
        scores=scores(predictions, splits.test.labels, num_polarities),
        fit_seconds=fit_seconds,
        num_features=x_train.shape[1],
    )


def run(data_dir: Path, quick: bool) -> Section:
    settings = load_settings(quick).svm
    splits = read_splits(data_dir)
    result = fit_and_score(splits, list(settings.C_grid))
    return Section(
        title="Quality: TF-IDF + linear SVM baseline (test split)",
        columns=["row", *METRICS, "fit_s"],
        rows=[{"row": ROW, **result.scores, "fit_s": round(result.fit_seconds, 1)}],
        notes=[
            f"word 1-2-grams + char_wb 2-5-grams, sublinear TF: {result.num_features} features; "
            f"one LinearSVC per aspect over {len(splits.aspects)} aspects",
            "C per aspect by dev pair F1 from "
            f"{list(settings.C_grid)}: "
            + ", ".join(f"{aspect} {C:g}" for aspect, C in result.C.items()),
            "fit_s: the features and every classifier of the C search, one process; "
            "deterministic (no seeds)",
        ],
    )
