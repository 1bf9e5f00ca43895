"""Shared fixtures: the real config, composed with Hydra's compose API and shrunk for tests."""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterator
from pathlib import Path

# One thread a process, here and in the train.py subprocesses (set before torch loads): the
# tests' models are too small to gain from a second, and on a busy machine OpenMP threads
# waiting for each other made a tiny run several times slower. A value set outside wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from absa_lightning import config

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = Path(config.CONF_DIR)  # importing config registers conf/'s resolvers
DATA_DIR = Path(os.environ.get("ABSA_DATA_DIR", REPO.parent / "shared/data/uit-visfd"))
MAMS_DIR = Path(os.environ.get("ABSA_MAMS_DIR", REPO.parent / "shared/data/mams-acsa"))

needs_real_data = pytest.mark.skipif(
    not (DATA_DIR / "Train.csv").is_file(),
    reason=f"UIT-ViSFD not found in {DATA_DIR} (set ABSA_DATA_DIR)",
)

TINY = ["model=tiny"]  # width 32, one layer: seconds per run
QUIET = [
    "~callbacks.progress_bar",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]
# The callbacks that read and draw a run for its user (loss_dynamics.csv/.png every epoch, the
# embedding panels): most of a tiny run's time, left out where a test does not look at them.
NO_DIAGNOSTICS = ["~callbacks.loss_dynamics", "~callbacks.embedding_space"]


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """conf/train.yaml as `python train.py <overrides>` would see it, writing to `output_dir`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    return cfg


def write_visfd_subset(folder: Path, sizes: dict[str, int]) -> Path:
    """The first comments of each UIT-ViSFD split, in the same CSV format, for fast runs.

    Dev and test rows with an aspect that the training part lacks are left out.
    """
    folder.mkdir(parents=True, exist_ok=True)
    train_aspects: set[str] = set()
    for name, n in sizes.items():  # Train.csv first
        with open(DATA_DIR / name, encoding="utf-8", newline="") as src:
            rows = list(csv.DictReader(src))[:n]
        aspects = [{item.split("#")[0] for item in row["label"].split(";")} for row in rows]
        if name == "Train.csv":
            train_aspects = set().union(*aspects)
        rows = [row for row, a in zip(rows, aspects, strict=True) if a <= train_aspects]
        with open(folder / name, "w", encoding="utf-8", newline="") as dst:
            writer = csv.DictWriter(dst, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


# Synthetic comments in UIT-ViSFD's format: an aspect's word, then its polarity's word.
ASPECT_WORDS = {
    "BATTERY": ["pin", "dung lượng pin"],
    "CAMERA": ["camera", "chụp ảnh"],
    "DESIGN": ["thiết kế", "vỏ máy"],
    "FEATURES": ["vân tay", "wifi"],
    "GENERAL": ["máy", "điện thoại"],
    "PERFORMANCE": ["hiệu năng", "chơi game"],
    "PRICE": ["giá", "giá thành"],
    "SCREEN": ["màn hình", "cảm ứng"],
    "SER&ACC": ["nhân viên", "giao hàng"],
}
POLARITY_WORDS = {
    "Positive": ["rất tốt", "đẹp", "trâu", "tuyệt vời"],
    "Negative": ["kém", "tệ", "yếu", "hay lỗi"],
    "Neutral": ["bình thường", "tạm được"],
}
FILLERS = ["mới mua", "dùng được một tuần", "nói chung", "mọi người ạ", "shop"]


def synthetic_comments(n: int, rng: random.Random) -> Iterator[tuple[str, str]]:
    """`n` made-up (comment, UIT-ViSFD label string) pairs, 1-3 aspects each, every aspect and
    polarity said by its own words. Drawn one at a time from `rng`, which the caller may draw
    from in between."""
    for _ in range(n):
        aspects = rng.sample(sorted(ASPECT_WORDS), rng.randint(1, 3))
        polarities = [rng.choice(sorted(POLARITY_WORDS)) for _ in aspects]
        clauses = [
            f"{rng.choice(ASPECT_WORDS[a])} {rng.choice(POLARITY_WORDS[p])}"
            for a, p in zip(aspects, polarities, strict=True)
        ]
        text = ", ".join([rng.choice(FILLERS), *clauses])
        label = ";".join(f"{{{a}#{p}}}" for a, p in zip(aspects, polarities, strict=True))
        yield text, label


def write_synthetic_visfd(folder: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """UIT-ViSFD-format CSV files of made-up comments (`synthetic_comments`), learnable from
    their words; every aspect of dev and test also occurs in train."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in sizes.items():
        with open(folder / name, "w", encoding="utf-8", newline="") as dst:
            writer = csv.writer(dst)
            writer.writerow(["index", "comment", "n_star", "date_time", "label"])
            for i, (text, label) in enumerate(synthetic_comments(n, rng)):
                writer.writerow([i, text, rng.randint(1, 5), "1 tuần trước", label])
    return folder


@pytest.fixture(scope="session")
def small_visfd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 / 48 / 48 synthetic comments in UIT-ViSFD's format, over nine aspects: the tests' own
    data, the same with or without ../shared."""
    sizes = {"Train.csv": 128, "Dev.csv": 48, "Test.csv": 48}
    return write_synthetic_visfd(tmp_path_factory.mktemp("visfd_small"), sizes)


@pytest.fixture(scope="session")
def real_visfd_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 128 / 48 / 48 UIT-ViSFD comments, for the few tests that need real text;
    skipped without UIT-ViSFD."""
    if not (DATA_DIR / "Train.csv").is_file():
        pytest.skip(f"UIT-ViSFD not found in {DATA_DIR} (set ABSA_DATA_DIR)")
    sizes = {"Train.csv": 128, "Dev.csv": 48, "Test.csv": 48}
    return write_visfd_subset(tmp_path_factory.mktemp("visfd_real_small"), sizes)


@pytest.fixture(scope="session")
def tiny_run(small_visfd: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model trained once a session (a few seconds) for the prediction, export and serve
    tests: its `metrics.json`, whose `best_checkpoint` they load. Five epochs at a high learning
    rate and thresholds tuned on dev, so that it predicts some aspects (test aspect F1 ~0.35 on
    `small_visfd`), not none."""
    from absa_lightning.train import train

    overrides = [
        *TINY,
        *QUIET,
        *NO_DIAGNOSTICS,
        f"data.root={small_visfd}",
        "trainer.max_epochs=5",
        "optimizer.lr=1e-2",
        "model.encoder_lr=1e-2",
    ]
    metrics = train(compose_train(overrides, tmp_path_factory.mktemp("tiny_run")))
    assert metrics["test"]["test/aspect_f1"] > 0.2, "the tests below need a model that predicts"
    return metrics
