"""The classical baseline: TF-IDF n-grams + a linear SVM, one 4-class classifier per aspect.

    python -m benchmarks.bench --only svm [--quick] [--datasets mams]   # this section alone

Each aspect's classifier predicts its column of the label matrix (0 = absent, 1.. = the
polarities), so the splits are read by the project's own data module (the dataset's conf/data
preset) and the predictions scored by `AspectConfusionMatrix`, exactly as the neural rows are.
Features, fitted on the training split: word 1-2-grams and character 2-5-grams (`char_wb`), both
with sublinear TF. `char_wb` rather than `char`: Vietnamese writes a word as space-separated
syllables, and the word bigrams already see syllable pairs; n-grams kept inside a syllable add
what the words miss (misspelt syllables, missing diacritics, "k"/"ko" for "không") with fewer,
less redundant features.

C and the class weighting (`svm.C_grid` x `svm.class_weight` in benchmarks/bench.yaml: none, or
"balanced", each class weighted by the inverse of its frequency) are chosen per aspect by that
aspect's pair F1 on dev: one classifier per aspect, each tuned on the score it contributes to,
and aspects differ (frequent BATTERY, rare PRICE Neutral) in how much regularisation and how
much help for their rare polarities they want. Without the weighting choice the baseline is
weaker than a user's first try with scikit-learn, and a yardstick should be the strong one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True, order=True)
class SvmSetting:
    C: float
    class_weight: str | None  # None or "balanced"

    def __str__(self) -> str:
        return f"C={self.C:g}" + (f" {self.class_weight}" if self.class_weight else "")


@dataclass(frozen=True)
class SvmResult:
    chosen: dict[str, SvmSetting]  # aspect -> the setting chosen on dev
    dev_pair_f1: dict[str, dict[SvmSetting, float]]  # aspect -> setting -> its dev pair F1
    predictions: torch.Tensor  # (N_test, A) class ids
    scores: dict[str, float]  # AspectConfusionMatrix on the test split
    fit_seconds: float  # features + every classifier of the search
    num_features: int


def read_splits(data_overrides: Sequence[str]) -> Splits:
    """Train, dev and test as training reads them, with these train.py overrides (`data=mams`)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(data_overrides))
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


def search_grid(
    C_grid: Sequence[float], class_weights: Sequence[str | None] = (None,)
) -> list[SvmSetting]:
    """Every (C, class weight), in the order that wins ties: the smaller C (the stronger
    regularisation), then the weighting listed first."""
    return [SvmSetting(C, weight) for C in sorted(C_grid) for weight in class_weights]


def fit_and_score(splits: Splits, grid: Sequence[SvmSetting]) -> SvmResult:
    """Per aspect: a LinearSVC for each setting, the best on dev kept; then test scored."""
    num_polarities = len(splits.polarities)
    start = time.perf_counter()
    features = tfidf_features()
    x_train = features.fit_transform(splits.train.texts)
    x_dev = features.transform(splits.dev.texts)
    chosen, dev_pair_f1, classifiers = {}, {}, []
    for a, aspect in enumerate(splits.aspects):
        y_train = splits.train.labels[:, a].numpy()
        fitted = {
            setting: LinearSVC(C=setting.C, class_weight=setting.class_weight).fit(x_train, y_train)
            for setting in grid
        }
        dev_gold = splits.dev.labels[:, a : a + 1]
        dev_pair_f1[aspect] = {
            setting: scores(
                torch.as_tensor(clf.predict(x_dev)).unsqueeze(1), dev_gold, num_polarities
            )["pair_f1"]
            for setting, clf in fitted.items()
        }
        chosen[aspect] = max(grid, key=dev_pair_f1[aspect].__getitem__)  # first of equals
        classifiers.append(fitted[chosen[aspect]])
    fit_seconds = time.perf_counter() - start

    x_test = features.transform(splits.test.texts)
    predictions = torch.stack([torch.as_tensor(clf.predict(x_test)) for clf in classifiers], dim=1)
    return SvmResult(
        chosen=chosen,
        dev_pair_f1=dev_pair_f1,
        predictions=predictions,
        scores=scores(predictions, splits.test.labels, num_polarities),
        fit_seconds=fit_seconds,
        num_features=x_train.shape[1],
    )


def run(datasets: Mapping[str, Sequence[str]], quick: bool) -> Section:
    """One row per dataset: {dataset name: the train.py overrides that select it}."""
    settings = load_settings(quick).svm
    grid = search_grid(settings.C_grid, settings.class_weight)
    rows, notes = [], []
    for dataset, overrides in datasets.items():
        splits = read_splits(overrides)
        result = fit_and_score(splits, grid)
        rows.append(
            {
                "dataset": dataset,
                "row": ROW,
                **result.scores,
                "fit_s": round(result.fit_seconds, 1),
            }
        )
        notes.append(
            f"{dataset}: {result.num_features} features, {len(splits.aspects)} aspects; "
            "chosen on dev: " + ", ".join(f"{a} {s}" for a, s in result.chosen.items())
        )
    return Section(
        title="Quality: TF-IDF + linear SVM baseline (test split)",
        columns=["dataset", "row", *METRICS, "fit_s"],
        rows=rows,
        notes=[
            "word 1-2-grams + char_wb 2-5-grams, sublinear TF; one LinearSVC per aspect",
            f"C from {list(settings.C_grid)} and class_weight from "
            f"{list(settings.class_weight)} per aspect by its dev pair F1",
            *notes,
            "fit_s: the features and every classifier of the search, one process; "
            "deterministic (no seeds)",
        ],
    )
