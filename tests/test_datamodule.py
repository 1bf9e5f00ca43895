"""AspectSentimentDataModule: the real UIT-ViSFD splits, small files, errors and collation."""

from __future__ import annotations

import csv
import functools
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, DATA_DIR, needs_real_data
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from absa_lightning.data import AspectSentimentDataModule, DataError, read_csv, read_jsonl
from absa_lightning.data.download import DatasetNotFoundError
from absa_lightning.data.formats import split_label_string
from absa_lightning.data.preprocess import PREPROCESSORS
from absa_lightning.errors import AbsaUserError
from absa_lightning.models import scratch_bert

FILES = {"train": "Train.csv", "dev": "Dev.csv", "test": "Test.csv"}
VISFD_ASPECTS = [
    "BATTERY",
    "CAMERA",
    "DESIGN",
    "FEATURES",
    "GENERAL",
    "PERFORMANCE",
    "PRICE",
    "SCREEN",
    "SER&ACC",
    "STORAGE",
]
visfd_reader = functools.partial(read_csv, text_column="comment", label_column="label")


def datamodule(root: Path, **kwargs) -> AspectSentimentDataModule:
    """Built as conf/data/visfd.yaml builds it, without download."""
    kwargs = {"files": FILES, "reader": visfd_reader, "download": None, **kwargs}
    return AspectSentimentDataModule(root=root, **kwargs)


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "comment", "label"])
        writer.writerows((i, text, label) for i, (text, label) in enumerate(rows))
    return path


TRAIN = [
    ("pin trâu", "{BATTERY#Positive};"),
    ("màn hình đẹp, camera tệ", "{SCREEN#Positive};{CAMERA#Negative};"),
    ("giá ổn", "{BATTERY#neutral};{OTHERS};"),
    ("không nói gì", "{OTHERS};"),
]
DEV = [("camera ổn", "{CAMERA#Neutral};"), ("pin yếu", "{BATTERY#Negative};")]
TEST = [("màn hình tệ", "{SCREEN#Negative};")]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    write_csv(tmp_path / "Train.csv", TRAIN)
    write_csv(tmp_path / "Dev.csv", DEV)
    write_csv(tmp_path / "Test.csv", TEST)
    return tmp_path


# --- the real data ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def visfd() -> AspectSentimentDataModule:
    dm = datamodule(DATA_DIR)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


@needs_real_data
def test_visfd_splits_and_aspects(visfd: AspectSentimentDataModule) -> None:
    sizes = {split: len(visfd.datasets[split]) for split in ("train", "dev", "test")}
    assert sizes == {"train": 7786, "dev": 1112, "test": 2224}
    assert visfd.aspects == VISFD_ASPECTS
    for split, n in sizes.items():
        labels = visfd.datasets[split].labels
        assert labels.shape == (n, 10)
        assert labels.dtype == torch.long
        assert labels.min() >= 0 and labels.max() <= 3
    counts = visfd.class_counts()
    assert counts.shape == (4,)
    assert int(counts.sum()) == 7786 * 10
    assert (counts > 0).all()


@needs_real_data
def test_visfd_first_rows(visfd: AspectSentimentDataModule) -> None:
    # 0: {CAMERA#Positive};{FEATURES#Positive};{BATTERY#Positive};{PRICE#Positive};
    #    {GENERAL#Positive};{SER&ACC#Positive};   1: {BATTERY#Negative};{GENERAL#Positive};{OTHERS};
    train = visfd.datasets["train"]
    assert train.texts[0].startswith("Mới mua máy này")
    assert train.labels[0].tolist() == [1, 1, 0, 1, 1, 0, 1, 0, 1, 0]
    assert train.labels[1].tolist() == [2, 0, 0, 0, 1, 0, 0, 0, 0, 0]


@needs_real_data
def test_visfd_yaml_builds_the_same_datamodule() -> None:
    cfg = OmegaConf.load(CONF_DIR / "data" / "visfd.yaml")
    cfg.root, cfg.download = str(DATA_DIR), None
    dm = instantiate(cfg)
    assert isinstance(dm, AspectSentimentDataModule)
    dm.prepare_data()
    dm.setup("validate")
    assert dm.aspects == VISFD_ASPECTS
    assert len(dm.datasets["dev"]) == 1112


# --- small files --------------------------------------------------------------------------


def test_aspects_default_to_sorted_training_aspects(small: Path) -> None:
    dm = datamodule(small)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.aspects == ["BATTERY", "CAMERA", "SCREEN"]
    assert dm.datasets["train"].texts == [text for text, _ in TRAIN]
    assert dm.datasets["train"].labels.tolist() == [
        [1, 0, 0],
        [0, 2, 1],
        [3, 0, 0],
        [0, 0, 0],
    ]
    assert dm.datasets["dev"].labels.tolist() == [[0, 3, 0], [2, 0, 0]]
    assert "test" not in dm.datasets
    # 12 cells: 8 absent, 2 positive, 1 negative, 1 neutral.
    assert dm.class_counts().tolist() == [8, 2, 1, 1]


def test_configured_aspects_are_used_in_their_order(small: Path) -> None:
    dm = datamodule(small, aspects=["SCREEN", "BATTERY", "CAMERA", "PRICE"])
    dm.setup("fit")
    assert dm.aspects == ["SCREEN", "BATTERY", "CAMERA", "PRICE"]
    assert dm.datasets["train"].labels.tolist() == [
        [0, 1, 0, 0],
        [1, 0, 2, 0],
        [0, 3, 0, 0],
        [0, 0, 0, 0],
    ]
    assert dm.datasets["dev"].labels.tolist() == [[0, 0, 3, 0], [0, 2, 0, 0]]
    assert dm.class_counts().tolist() == [12, 2, 1, 1]


def test_configured_polarities_set_the_label_values(small: Path) -> None:
    dm = datamodule(small, polarities=["Negative", "Neutral", "Positive"])
    dm.setup("fit")
    assert dm.datasets["train"].labels.tolist() == [
        [3, 0, 0],
        [0, 1, 3],
        [2, 0, 0],
        [0, 0, 0],
    ]


def test_training_aspect_outside_configured_list_is_located(small: Path) -> None:
    dm = datamodule(small, aspects=["BATTERY", "CAMERA"])
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert f"{small / 'Train.csv'}:3:" in message
    assert "'SCREEN'" in message and repr("màn hình đẹp, camera tệ") in message
    assert info.value.line == 3


def dev_with_new_aspect(root: Path) -> None:
    """Dev.csv whose row on line 6 (after a comment over lines 3-5) has an aspect train lacks."""
    (root / "Dev.csv").write_text(
        "index,comment,label\n"
        "0,camera ổn,{CAMERA#Neutral};\n"
        '1,"pin\nyếu\nlắm",{BATTERY#Negative};\n'
        "2,giá rẻ,{PRICE#Positive};{BATTERY#Positive};\n"
        "3,màn hình tệ,{SCREEN#Negative};\n",
        encoding="utf-8",
    )


def test_dev_aspect_missing_from_train_is_located(small: Path) -> None:
    dev_with_new_aspect(small)
    dm = datamodule(small)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    err = info.value
    assert err.line == 6
    assert f"{small / 'Dev.csv'}:6:" in str(err)
    assert "'PRICE'" in str(err) and "not in the aspect list (the train split's)" in str(err)
    assert repr("giá rẻ") in str(err)
    # ... and says how to fix it, quoted for Hydra and the shell
    assert """'data.aspects=["BATTERY","CAMERA","SCREEN","PRICE"]'""" in str(err)
    assert "data.aspects_file=FILE" in str(err) and "data.on_error=skip" in str(err)


def test_aspects_from_a_file_one_a_line(small: Path) -> None:
    dev_with_new_aspect(small)
    aspects = small / "aspects.txt"
    aspects.write_text("BATTERY\nCAMERA\n\nSCREEN\nPRICE\nROOM#PRICES\nFOOD&DRINKS\n")
    dm = datamodule(small, aspects_file=str(aspects))
    dm.setup("fit")
    assert dm.aspects == ["BATTERY", "CAMERA", "SCREEN", "PRICE", "ROOM#PRICES", "FOOD&DRINKS"]
    assert dm.datasets["dev"].labels[2].tolist() == [1, 0, 0, 1, 0, 0]

    aspects.write_text("BATTERY\nBATTERY\n")
    with pytest.raises(AbsaUserError, match=r"data.aspects_file=.*aspects.txt: no aspects, or one"):
        datamodule(small, aspects_file=str(aspects))
    with pytest.raises(AbsaUserError, match=r"data.aspects_file=.*nope.txt: no such file"):
        datamodule(small, aspects_file=str(small / "nope.txt"))


def test_hydra_reads_quoted_aspect_names() -> None:
    """What the fix in the message tells a user to type."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", ['data.aspects=["ROOM#PRICES","FOOD&DRINKS"]'])
    assert list(cfg.data.aspects) == ["ROOM#PRICES", "FOOD&DRINKS"]


def test_dev_aspect_missing_from_train_is_skipped(
    small: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dev_with_new_aspect(small)
    dm = datamodule(small, on_error="skip")
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.aspects == ["BATTERY", "CAMERA", "SCREEN"]
    dev = dm.datasets["dev"]
    assert dev.texts == ["camera ổn", "pin\nyếu\nlắm", "màn hình tệ"]
    assert dev.labels.tolist() == [[0, 3, 0], [2, 0, 0], [0, 0, 2]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(small / "Dev.csv") in warnings[0]
    assert (
        "skipped 1 rows" in warnings[0] and "aspect 'PRICE' not in the aspect list" in warnings[0]
    )


def test_bad_row_in_a_split_file_is_located(small: Path) -> None:
    write_csv(small / "Test.csv", [*TEST, ("ok", "{SCREEN#Great};")])
    dm = datamodule(small)
    dm.setup("fit")  # train and dev are fine
    with pytest.raises(DataError) as info:
        dm.setup("test")
    assert f"{small / 'Test.csv'}:3:" in str(info.value) and "{SCREEN#Great};" in str(info.value)


def test_split_dev_makes_testing_serve_dev(small: Path) -> None:
    dm = datamodule(small, test_split="dev", eval_batch_size=8)
    dm.set_tokenizer(tiny_tokenizer())
    dm.setup("test")
    assert "test" not in dm.datasets
    (batch,) = list(dm.test_dataloader())
    assert batch["labels"][batch["index"].argsort()].tolist() == [[0, 3, 0], [2, 0, 0]]


def test_split_test_serves_test(small: Path) -> None:
    dm = datamodule(small, eval_batch_size=8)
    dm.set_tokenizer(tiny_tokenizer())
    dm.setup("test")
    (batch,) = list(dm.test_dataloader())
    assert batch["labels"].tolist() == [[0, 0, 2]]


def test_missing_files_without_download(tmp_path: Path) -> None:
    write_csv(tmp_path / "Train.csv", TRAIN)
    dm = datamodule(tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path.resolve()) in message
    assert "missing: Dev.csv, Test.csv" in message
    assert "ABSA_DATA_DIR" in message


@pytest.mark.parametrize(
    "files",
    [
        {"train": "Train.csv", "dev": "Dev.csv"},
        {"train": "Train.csv", "validation": "Dev.csv", "test": "Test.csv"},
        {**FILES, "extra": "Extra.csv"},
    ],
)
def test_files_must_name_the_three_splits(tmp_path: Path, files: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"data\.files must name exactly"):
        datamodule(tmp_path, files=files)


@pytest.mark.parametrize("split", ["validation", "Test", ""])
def test_split_must_be_a_known_split(tmp_path: Path, split: str) -> None:
    with pytest.raises(ValueError, match=r"data\.test_split must be one of") as info:
        datamodule(tmp_path, test_split=split)
    assert repr(split) in str(info.value)


def test_jsonl_reader_and_preprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, rows in {"train": TRAIN, "dev": DEV, "test": TEST}.items():
        with open(tmp_path / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for text, label in rows:
                pairs = [{"aspect": a, "polarity": p} for a, p in split_label_string(label)]
                f.write(json.dumps({"text": text, "labels": pairs}, ensure_ascii=False) + "\n")
    files = {name: f"{name}.jsonl" for name in FILES}
    monkeypatch.setitem(PREPROCESSORS, "upper", str.upper)
    dm = datamodule(tmp_path, files=files, reader=read_jsonl, preprocess="upper")
    assert dm.preprocess_spec == {"name": "upper"}  # what the checkpoint keeps
    dm.setup("fit")
    assert dm.aspects == ["BATTERY", "CAMERA", "SCREEN"]
    assert dm.datasets["train"].texts == [text.upper() for text, _ in TRAIN]
    assert dm.datasets["dev"].labels.tolist() == [[0, 3, 0], [2, 0, 0]]


# --- collation ----------------------------------------------------------------------------

SHORT, MEDIUM = "pin tốt", "màn hình đẹp camera hơi tệ"
LONG = " ".join(["pin trâu màn hình đẹp camera tệ giá ổn"] * 6)


@functools.cache
def tiny_tokenizer():
    texts = [text for text, _ in TRAIN + DEV + TEST] + [SHORT, MEDIUM, LONG]
    tok, _ = scratch_bert(
        texts, vocab_size=200, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
    )
    return tok


def collation_module(root: Path, **kwargs) -> AspectSentimentDataModule:
    rows = [
        (SHORT, "{BATTERY#Positive};"),
        (MEDIUM, "{SCREEN#Positive};{CAMERA#Negative};"),
        (LONG, "{BATTERY#Positive};{CAMERA#Negative};"),
        (SHORT, "{OTHERS};"),
    ]
    for name in FILES.values():
        write_csv(root / name, rows)
    dm = datamodule(root, **kwargs)
    dm.setup("fit")
    return dm


def test_batches_pad_to_longest_in_batch_and_truncate(tmp_path: Path) -> None:
    max_length = 12
    dm = collation_module(tmp_path, max_length=max_length, eval_batch_size=3)
    tok = tiny_tokenizer()
    dm.set_tokenizer(tok)
    n_tokens = [len(tok(text)["input_ids"]) for text in (SHORT, MEDIUM, LONG, SHORT)]
    assert n_tokens[0] < n_tokens[1] < max_length < n_tokens[2]

    first, second = list(dm.val_dataloader())
    # evaluation goes shortest first: SHORT, SHORT, MEDIUM -> padded to MEDIUM's length
    assert first["index"].tolist() == [0, 3, 1]
    assert first["input_ids"].shape == (3, n_tokens[1])
    assert first["attention_mask"].sum(dim=1).tolist() == [n_tokens[0], n_tokens[3], n_tokens[1]]
    assert first["input_ids"][0, n_tokens[0] :].eq(tok.pad_token_id).all()
    assert first["input_ids"][0, 0] == tok.cls_token_id
    # then LONG, truncated at max_length, keeping [SEP] last
    assert second["index"].tolist() == [2]
    assert second["input_ids"].shape == (1, max_length)
    assert second["attention_mask"].sum(dim=1).tolist() == [max_length]
    assert second["input_ids"][0, -1] == tok.sep_token_id
    # threshold tuning's pass over the split goes shortest first too
    assert [i for b in dm.split_dataloader("dev") for i in b["index"].tolist()] == [0, 3, 1, 2]

    for batch in (first, second):
        assert set(batch) >= {"input_ids", "attention_mask", "labels", "index"}
        assert "token_type_ids" not in batch
        assert batch["labels"].shape == (len(batch["index"]), 3)
        assert torch.equal(batch["labels"], dm.datasets["dev"].labels[batch["index"]])
        assert batch["input_ids"].dtype == torch.long


def test_the_predictor_encodes_comments_as_the_training_batches_do(tmp_path: Path) -> None:
    """One tokenise-and-pad (data.batching): same ids, mask and padding for the same comments."""
    from absa_lightning.predictor import AspectSentimentPredictor

    max_length = 12
    dm = collation_module(tmp_path, max_length=max_length, eval_batch_size=2)
    tok = tiny_tokenizer()
    dm.set_tokenizer(tok)
    predictor = AspectSentimentPredictor(
        torch.nn.Identity(), tok, ["A"], ["Positive"], max_length=max_length, device="cpu"
    )
    truncated_seen = []
    for batch in dm.val_dataloader():
        texts = [dm.datasets["dev"].texts[i] for i in batch["index"].tolist()]
        encoded, truncated = predictor.encode(texts)
        assert torch.equal(encoded["input_ids"], batch["input_ids"])
        assert torch.equal(encoded["attention_mask"], batch["attention_mask"])
        assert truncated.tolist() == [text == LONG for text in texts]
        truncated_seen += truncated.tolist()
    assert sum(truncated_seen) == 1 and len(truncated_seen) == 4


def test_shuffled_training_batches_keep_labels_with_their_index(tmp_path: Path) -> None:
    dm = collation_module(tmp_path, batch_size=3)
    dm.set_tokenizer(tiny_tokenizer())
    torch.manual_seed(0)
    batches = list(dm.train_dataloader())
    assert sorted(len(b["index"]) for b in batches) == [1, 3]
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == [0, 1, 2, 3]
    labels = dm.datasets["train"].labels
    for batch in batches:
        assert torch.equal(batch["labels"], labels[batch["index"]])
        lengths = batch["attention_mask"].sum(dim=1)
        assert batch["input_ids"].shape[1] == int(lengths.max()) <= dm.max_length


@pytest.mark.parametrize("loader", ["train_dataloader", "val_dataloader", "test_dataloader"])
def test_dataloader_before_set_tokenizer_is_a_clear_error(small: Path, loader: str) -> None:
    dm = datamodule(small)
    dm.setup("fit")
    dm.setup("test")
    with pytest.raises(RuntimeError, match=r"set_tokenizer"):
        getattr(dm, loader)()


def test_training_batches_group_comments_of_similar_length(tmp_path: Path) -> None:
    """Pools of 2 batches sorted by length: the two SHORT comments share a batch, padded short."""
    dm = collation_module(tmp_path, batch_size=2, bucket_batches=2)
    tok = tiny_tokenizer()
    dm.set_tokenizer(tok)
    short = len(tok(SHORT)["input_ids"])
    for seed in range(5):
        torch.manual_seed(seed)
        batches = {tuple(sorted(b["index"].tolist())): b for b in dm.train_dataloader()}
        assert set(batches) == {(0, 3), (1, 2)}
        assert batches[(0, 3)]["input_ids"].shape == (2, short)


def test_pad_to_max_length_pads_every_batch_to_max_length(tmp_path: Path) -> None:
    dm = collation_module(tmp_path, max_length=12, eval_batch_size=2, pad_to_max_length=True)
    tok = tiny_tokenizer()
    dm.set_tokenizer(tok)
    first, second = list(dm.val_dataloader())
    assert first["input_ids"].shape == second["input_ids"].shape == (2, 12)
    lengths = [len(tok(t)["input_ids"]) for t in (SHORT, SHORT)]  # shortest first
    assert first["attention_mask"].sum(dim=1).tolist() == lengths
    assert first["input_ids"][0, lengths[0] :].eq(tok.pad_token_id).all()


def test_a_new_tokenizer_encodes_the_comments_again(tmp_path: Path) -> None:
    dm = collation_module(tmp_path, eval_batch_size=4)
    dm.set_tokenizer(tiny_tokenizer())
    before = next(iter(dm.val_dataloader()))["input_ids"]
    other = scratch_bert(
        ["màn hình camera"],
        vocab_size=50,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
    )[0]
    dm.set_tokenizer(other)
    after = next(iter(dm.val_dataloader()))["input_ids"]
    assert after.max() < len(other) <= before.max()


def test_train_subset_is_seeded_and_keeps_the_whole_file_s_aspects(small_visfd: Path) -> None:
    def subset(seed: int, n: int = 50) -> AspectSentimentDataModule:
        dm = datamodule(small_visfd, train_subset=n, train_subset_seed=seed)
        dm.setup("fit")
        return dm

    whole = datamodule(small_visfd)
    whole.setup("fit")
    first, again, other = subset(0), subset(0), subset(1)
    assert len(first.datasets["train"]) == 50 == len(first.train_texts())
    assert set(first.datasets["train"].texts) < set(whole.datasets["train"].texts)
    assert first.datasets["train"].texts == again.datasets["train"].texts
    assert first.datasets["train"].texts != other.datasets["train"].texts
    # Two comments say at most six of the nine aspects: the list is still the whole file's.
    two = subset(0, n=2)
    assert int((two.datasets["train"].labels > 0).any(dim=0).sum()) <= 6
    assert two.aspects == first.aspects == whole.aspects == VISFD_ASPECTS[:9]
    with pytest.raises(ValueError, match=r"data\.train_subset must be >= 1"):
        datamodule(small_visfd, train_subset=0)
