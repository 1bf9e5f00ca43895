"""The benchmark harness: the SVM baseline, aggregation over seeds, targets, the results files,
and one tiny train.py run through the quality runner."""

from __future__ import annotations

import csv
import json
import random
import time
from pathlib import Path

import pytest
import yaml
from conftest import NO_DIAGNOSTICS, QUIET, TINY, compose_train
from omegaconf import OmegaConf

from absa_lightning.config import CONF_DIR
from absa_lightning.metrics import AspectConfusionMatrix
from benchmarks import bench, quality, svm_baseline
from benchmarks.results import MeanStd, Section, Target, environment, load_settings, write_results

PHRASES = {  # aspect -> polarity -> the words that say it
    "BATTERY": {"Positive": "pin trâu", "Negative": "pin yếu", "Neutral": "pin tạm"},
    "CAMERA": {"Positive": "camera nét", "Negative": "camera mờ", "Neutral": "camera ổn"},
}


def write_toy_split(path: Path, n: int, rng: random.Random) -> None:
    """Comments whose aspects and polarities are each said by their own words: separable."""
    rows = []
    for _ in range(n):
        words, labels = ["máy", "mua", "hôm", "qua"], []
        for aspect, by_polarity in PHRASES.items():
            polarity = rng.choice([None, *by_polarity])
            if polarity:
                words.append(by_polarity[polarity])
                labels.append(f"{{{aspect}#{polarity}}};")
        rng.shuffle(words)
        rows.append({"comment": " ".join(words), "label": "".join(labels) or "{OTHERS};"})
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["comment", "label"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def toy_visfd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("toy_visfd")
    rng = random.Random(0)
    for name, n in (("Train.csv", 120), ("Dev.csv", 60), ("Test.csv", 60)):
        write_toy_split(folder / name, n, rng)
    return folder


def test_svm_baseline_learns_a_separable_toy_with_C_and_weights_chosen_on_dev(
    toy_visfd: Path,
) -> None:
    splits = svm_baseline.read_splits([f"data.root={toy_visfd}"])
    grid = svm_baseline.search_grid([1.0, 0.01], [None, "balanced"])
    assert [str(setting) for setting in grid] == [
        "C=0.01",
        "C=0.01 balanced",
        "C=1",
        "C=1 balanced",
    ]
    result = svm_baseline.fit_and_score(splits, grid)

    assert splits.aspects == ["BATTERY", "CAMERA"]
    for aspect in splits.aspects:
        dev_f1 = result.dev_pair_f1[aspect]
        assert set(dev_f1) == set(grid)
        best = max(dev_f1.values())
        # the best on dev, and of equals the first in the grid's order
        assert result.chosen[aspect] == next(s for s in grid if dev_f1[s] == best)
    # Scored by the project's metric on the test label matrix, and far above chance.
    metric = AspectConfusionMatrix(num_aspects=2, num_polarities=3)
    metric.update(result.predictions, splits.test.labels)
    assert result.scores == {k: float(v) for k, v in metric.compute().items()}
    assert result.scores["pair_f1"] > 0.9
    assert result.fit_seconds > 0


def test_svm_section_has_a_row_per_dataset_and_the_chosen_settings(toy_visfd: Path) -> None:
    datasets = {"toy": [f"data.root={toy_visfd}"], "toy_again": [f"data.root={toy_visfd}"]}
    section = svm_baseline.run(datasets, quick=True)
    assert [(row["dataset"], row["row"]) for row in section.rows] == [
        ("toy", svm_baseline.ROW),
        ("toy_again", svm_baseline.ROW),
    ]
    row = section.row(dataset="toy", row=svm_baseline.ROW)
    assert set(section.columns) <= set(row)
    assert row["pair_f1"] > 0.9
    assert any(
        note.startswith("toy:") and "BATTERY C=" in note and "CAMERA C=" in note
        for note in section.notes
    )


def test_mean_and_sample_std_over_seeds() -> None:
    values = [0.70, 0.72, 0.77]
    mean = sum(values) / 3
    sample_std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5  # n - 1
    cell = MeanStd.of(values)
    assert cell.mean == pytest.approx(mean)
    assert cell.std == pytest.approx(sample_std)
    assert str(cell) == f"{mean:.4f} ± {sample_std:.4f}"
    assert MeanStd.of([0.5]).std is None
    assert str(MeanStd.of([0.5])) == "0.5000"
    with pytest.raises(ValueError, match="no values"):
        MeanStd.of([])


def outcome(pair_f1: float, aspect_f1: float, wall_min: float) -> quality.RunOutcome:
    test = {f"test/{m}": 0.5 for m in quality.METRICS}
    test.update({"test/pair_f1": pair_f1, "test/aspect_f1": aspect_f1})
    metrics = {"test": test, "fit_seconds": 60 * wall_min - 30, "epochs_trained": 6}
    return quality.RunOutcome(metrics, 60 * wall_min, reused=False)


def test_aggregated_rows_against_their_targets() -> None:
    settings = load_settings(quick=False)
    default = quality.aggregate(
        "visfd",
        "default",
        "d",
        [outcome(0.79, 0.86, 10), outcome(0.80, 0.86, 31), outcome(0.81, 0.86, 9)],
    )
    ce = quality.aggregate("visfd", "ce", "c", [outcome(0.785, 0.85, 9)] * 3)
    mams = [
        quality.aggregate("mams", "ce", "c", [outcome(0.60, 0.80, 5)]),
        quality.aggregate("mams", "default", "d", [outcome(0.58, 0.84, 6)]),
    ]
    subset = quality.aggregate("visfd_1k", "default", "d", [outcome(0.6, 0.7, 40)])  # no CE row
    section = Section("q", quality.COLUMNS, [ce, default, *mams, subset])
    assert default["pair_f1"].mean == pytest.approx(0.80)
    assert default["pair_f1"].std == pytest.approx(0.01)
    assert default["epochs"] == "6/6/6"

    targets = {t.name: t for t in quality.recipe_targets(section, settings, quick=False)}
    time_limit, gain, mams_time, mams_gain = (
        targets[name]
        for name in [
            "visfd: default recipe, train.py wall time of the slowest seed (min)",
            "visfd: default mean pair_f1 >= CE-only mean pair_f1 + 0.01",
            "mams: default recipe, train.py wall time of the slowest seed (min)",
            "mams: default mean pair_f1 >= CE-only mean pair_f1 + 0.01",
        ]
    )
    least = targets["mams: default mean pair_f1 >= 0.72"]
    assert (least.value, least.target, least.passed) == (pytest.approx(0.58), 0.72, False)
    assert not targets["visfd: default mean aspect_f1 >= 0.9"].passed  # 0.86
    assert len(targets) == 8
    assert not targets[
        "visfd_1k: default recipe, train.py wall time of the slowest seed (min)"
    ].passed
    assert time_limit.value == pytest.approx(31) and not time_limit.passed  # the slowest seed
    assert gain.target == pytest.approx(0.795) and gain.passed  # 0.80 >= 0.785 + 0.01
    assert mams_time.passed and not mams_gain.passed  # each dataset against its own CE row

    svm = Section(
        "svm",
        ["dataset", "row", "pair_f1", "aspect_f1"],
        [
            {"dataset": "visfd", "row": "tfidf_svm", "pair_f1": 0.75, "aspect_f1": 0.86},
            {"dataset": "other", "row": "tfidf_svm", "pair_f1": 0.5, "aspect_f1": 0.5},
            {"dataset": "mams", "row": "tfidf_svm", "pair_f1": 0.63, "aspect_f1": 0.83},
        ],
    )
    pair, aspect, mams_pair, mams_aspect = quality.baseline_targets(
        svm, section, settings, quick=False
    )  # "other" has no quality rows: no targets
    assert pair.passed  # 0.80 >= 0.75 + 0.05, at the bound
    assert not aspect.passed  # 0.86 is not > 0.86
    assert mams_pair.target == pytest.approx(0.68) and not mams_pair.passed
    assert mams_aspect.passed


def test_target_comparisons() -> None:
    assert Target("t", 1.0, "<=", 1.0).passed
    assert not Target("t", 1.0, ">", 1.0).passed
    assert Target("t", 2.0, ">=", 1.0).as_dict()["passed"] is True
    with pytest.raises(ValueError, match=r"'t'.*'=='"):
        Target("t", 1.0, "==", 1.0)


def test_results_files_hold_the_tables_targets_and_environment(tmp_path: Path) -> None:
    section = Section(
        "Quality",
        ["row", "pair_f1"],
        [{"row": "default", "pair_f1": MeanStd.of([0.7, 0.8])}, {"row": "svm"}],
        [Target("default pair_f1 >= 0.9", 0.75, ">=", 0.9)],
        ["a note"],
    )
    env = environment(seeds=[42, 43], quick=False)
    md_path, json_path = write_results([section], env, 125.0, "bench", folder=tmp_path)

    md = md_path.read_text(encoding="utf-8")
    assert "| default | 0.7500 ± 0.0707 |" in md
    assert "| svm | – |" in md
    assert "| default pair_f1 >= 0.9 | 0.75 | >= 0.9 | -0.150 | MISS |" in md
    assert env["git_revision"] in md and "total 2.1 min" in md
    content = json.loads(json_path.read_text(encoding="utf-8"))
    assert set(content["environment"]) >= {
        "cpu",
        "cpu_cores",
        "torch_threads",
        "ram_gib",
        "versions",
        "git_revision",
        "dirty",
        "date",
        "seeds",
    }
    assert set(content["environment"]["versions"]) >= {
        "python",
        "torch",
        "lightning",
        "scikit-learn",
    }
    assert content["sections"][0]["rows"][0]["pair_f1"]["values"] == [0.7, 0.8]
    assert content["sections"][0]["targets"][0]["passed"] is False


def test_quick_settings_merge_over_the_full_ones() -> None:
    full, quick = load_settings(quick=False), load_settings(quick=True)
    assert list(full.seeds) == [42, 43, 44] and list(quick.seeds) == [42]
    assert (
        list(full.quality.rows)
        == list(quick.quality.rows)
        == [
            "ce",
            "focal",
            "focal_contrastive",
            "default",
            "balancer",
            "warm_start",
            "e5_12",
            "small",
        ]
    )
    assert "trainer.max_epochs=2" in quick.quality.extra_overrides
    assert "quick" not in full
    assert list(full.svm.class_weight) == list(quick.svm.class_weight) == [None, "balanced"]
    assert (
        dict(full.datasets)
        == dict(quick.datasets)
        == {
            "visfd": ["data=visfd"],
            "mams": ["data=mams"],
            "visfd_1k": ["data=visfd", "data.train_subset=1000"],
            "visfd_3k": ["data=visfd", "data.train_subset=3000"],
        }
    )


def test_rows_run_on_the_datasets_they_name(tmp_path: Path) -> None:
    settings = OmegaConf.create(
        {
            "seeds": [1, 2],
            "quality": {
                "rows": {
                    "default": {"label": "d", "overrides": []},
                    "ce": {"label": "c", "overrides": ["x=1"], "datasets": ["big"]},
                },
                "common_overrides": [],
                "extra_overrides": [],
            },
        }
    )
    runs = quality.planned_runs(settings, {"big": [], "small": ["s=1"]}, "m", tmp_path)
    assert [(r.dataset, r.row, r.seed) for r in runs] == [
        ("big", "default", 1),
        ("big", "default", 2),
        ("big", "ce", 1),
        ("big", "ce", 2),
        ("small", "default", 1),
        ("small", "default", 2),
    ]
    assert list(quality.rows_on(settings.quality.rows, "small")) == ["default"]


def test_extra_overrides_go_last_into_their_own_runs_folder(tmp_path: Path) -> None:
    settings = load_settings(quick=False)
    quality.chosen_rows(settings, ["ce", "default"])
    assert list(settings.quality.rows) == ["ce", "default"]  # bench.yaml's order
    folder = quality.runs_folder(False, ["trainer=gpu", "loss/balancer=rule"])
    assert folder == "full_trainer_gpu_loss_balancer_rule"
    assert quality.runs_folder(True, []) == "quick"
    mams = {"mams": ["data=mams"]}
    runs = quality.planned_runs(settings, mams, folder, tmp_path, extra=["trainer=gpu"])
    assert [r.row for r in runs] == ["ce"] * 3 + ["default"] * 3
    assert all(r.run_dir.is_relative_to(tmp_path / folder) for r in runs)
    assert all(r.overrides[-3] == "trainer=gpu" for r in runs)  # before seed and run folder
    cfg = compose_train([o for o in runs[0].overrides if not o.startswith("hydra.")], tmp_path)
    assert cfg.trainer.accelerator == "gpu"
    with pytest.raises(SystemExit, match="defualt"):
        quality.chosen_rows(settings, ["defualt"])


def test_runs_at_once_keep_the_planned_order_and_a_failure_stops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [quality.TrainingRun("d", "r", seed, (), tmp_path / str(seed)) for seed in range(6)]
    started: list[int] = []

    def fake_execute(run: quality.TrainingRun, code: dict, reuse: bool) -> quality.RunOutcome:
        started.append(run.seed)
        time.sleep(0.05 * (6 - run.seed))  # the later runs end first
        return quality.RunOutcome({"seed": run.seed}, float(run.seed), reused=False)

    monkeypatch.setattr(quality, "execute", fake_execute)
    outcomes = quality.execute_all(runs, {}, reuse=False, jobs=3)
    assert [o.metrics["seed"] for o in outcomes] == list(range(6))

    def failing_execute(run: quality.TrainingRun, code: dict, reuse: bool) -> quality.RunOutcome:
        started.append(run.seed)
        time.sleep(0.2)  # long enough that the main thread cancels before the queue drains
        raise RuntimeError(f"seed {run.seed} failed")

    started.clear()
    monkeypatch.setattr(quality, "execute", failing_execute)
    with pytest.raises(RuntimeError, match="failed"):
        quality.execute_all(runs, {}, reuse=False, jobs=2)
    assert len(started) < len(runs)  # the runs not yet started were cancelled


def test_sections_run_in_the_bench_order_whatever_the_order_asked() -> None:
    assert bench.section_names("speed, svm") == ["svm", "speed"]
    with pytest.raises(SystemExit, match="svn"):
        bench.section_names("svn")


def test_datasets_chosen_by_name_in_the_settings_order() -> None:
    settings = load_settings(quick=True)
    assert list(bench.chosen_datasets(settings, None)) == ["visfd", "mams", "visfd_1k", "visfd_3k"]
    assert bench.chosen_datasets(settings, "mams, visfd") == {
        "visfd": ["data=visfd"],
        "mams": ["data=mams"],
    }
    with pytest.raises(SystemExit, match="mam'"):
        bench.chosen_datasets(settings, "mam")


@pytest.mark.slow
def test_quality_runner_trains_once_and_reuses_only_the_same_code_and_overrides(
    small_visfd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = OmegaConf.create(
        {
            "seeds": [7],
            "quality": {
                "rows": {"tiny": {"label": "tiny", "overrides": [*TINY, "trainer.max_epochs=1"]}},
                "common_overrides": QUIET,
                "extra_overrides": NO_DIAGNOSTICS,
            },
        }
    )
    datasets = {"small": [f"data.root={small_visfd}"]}
    (run,) = quality.planned_runs(settings, datasets, "quick", output_root=tmp_path)
    assert run.run_dir == tmp_path / "quick" / "small" / "tiny" / "seed_7"
    assert run.overrides[0] == f"data.root={small_visfd}"
    assert "seed=7" in run.overrides and f"hydra.run.dir={run.run_dir}" in run.overrides
    code = {"git_revision": "abc", "dirty": False, "diff_sha256": None}

    trained = quality.execute(run, code, reuse=True)  # nothing to reuse yet
    assert not trained.reused and trained.wall_seconds > trained.metrics["fit_seconds"] > 0
    assert trained.metrics["epochs_trained"] == 1
    assert 0 <= trained.metrics["test"]["test/pair_f1"] <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("train.py ran again")

    monkeypatch.setattr(quality.subprocess, "run", no_training)
    reused = quality.execute(run, code, reuse=True)
    assert reused.reused and reused.metrics == trained.metrics
    assert reused.wall_seconds == trained.wall_seconds
    with pytest.raises(AssertionError, match="ran again"):  # other code: trained afresh
        quality.execute(run, {**code, "git_revision": "def"}, reuse=True)
    assert not (run.run_dir / "metrics.json").exists()  # the stale run was cleared first


@pytest.mark.parametrize("quick", [False, True])
def test_every_row_of_the_bench_composes_with_train_yaml(quick: bool, tmp_path: Path) -> None:
    """The overrides the bench hands train.py are valid for conf/ (a typo fails here, not an
    hour into `make bench`)."""
    settings = load_settings(quick)
    runs = quality.planned_runs(settings, settings.datasets, "check", tmp_path)
    assert {(r.dataset, r.row) for r in runs} >= {("visfd_1k", "default"), ("mams", "ce")}
    for run in runs:
        cfg = compose_train([o for o in run.overrides if not o.startswith("hydra.")], tmp_path)
        assert cfg.seed == run.seed
        assert cfg.data.files.train == ("train.xml" if run.dataset == "mams" else "Train.csv")
        assert cfg.data.train_subset == {"visfd_1k": 1000, "visfd_3k": 3000}.get(run.dataset)
        row = settings.quality.rows[run.row]
        for override in row.overrides:  # each row's change reaches the config train.py gets
            key, value = override.split("=")
            if (Path(CONF_DIR) / key).is_dir():  # a config group: as that option alone composes it
                alone = compose_train([override], tmp_path)
                path = key.replace("/", ".")
                assert OmegaConf.select(cfg, path) == OmegaConf.select(alone, path), override
                assert OmegaConf.select(alone, path) != OmegaConf.select(
                    compose_train([], tmp_path), path
                ), f"{override} is the default already"
            else:
                assert OmegaConf.select(cfg, key) == yaml.safe_load(value), override
    if quick:
        assert cfg.trainer.limit_train_batches == 0.25
