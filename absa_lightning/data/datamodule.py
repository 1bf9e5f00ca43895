"""LightningDataModule for aspect-category sentiment data with train / dev / test splits."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from transformers import PreTrainedTokenizerBase

from absa_lightning.data.batching import (
    LengthBucketBatchSampler,
    pad_batch,
    pad_ngram_ids,
    tokenize,
)
from absa_lightning.data.download import ensure_dataset
from absa_lightning.data.formats import Example, OnError, RowErrors
from absa_lightning.data.preprocess import build_preprocess, preprocess_spec
from absa_lightning.errors import AbsaUserError

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
Reader = Callable[..., list[Example]]  # (path, polarities, on_error) -> examples
NgramIds = Callable[[str], torch.Tensor]  # a text's hashed n-gram ids (models.ngrams.NgramHashing)


class AspectSentimentDataset(Dataset):
    """Comments with a label matrix: labels[i, a] = 0 if aspect a is absent, else 1 + polarity.

    `token_ids` holds each comment tokenised once (`encode`), not once per epoch; `ngram_ids`
    its hashed n-grams, when the network has an n-gram branch.
    """

    def __init__(self, texts: list[str], labels: torch.Tensor):
        self.texts, self.labels = texts, labels  # labels: (N, A) long
        self.token_ids: list[torch.Tensor] | None = None
        self.ngram_ids: list[torch.Tensor] | None = None

    def encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        ngrams: NgramIds | None = None,
    ) -> None:
        tokenized = tokenize(tokenizer, self.texts, max_length, ngrams=ngrams)
        self.token_ids, self.ngram_ids = tokenized.token_ids, tokenized.ngram_ids

    def lengths(self) -> list[int]:
        assert self.token_ids is not None, "encode() first"
        return [len(ids) for ids in self.token_ids]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        assert self.token_ids is not None, "encode() first"
        ngram_ids = self.ngram_ids[i] if self.ngram_ids is not None else None
        return i, self.token_ids[i], self.labels[i], ngram_ids


def read_aspects_file(path: str | Path | None) -> list[str] | None:
    """`data.aspects_file`: one aspect a line (names may hold `#`, `&`, spaces); blank lines
    are ignored."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        raise AbsaUserError("no such file", f"data.aspects_file={path}", "check the path")
    aspects = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    aspects = [a for a in aspects if a]
    if not aspects or len(set(aspects)) != len(aspects):
        raise AbsaUserError(
            "no aspects, or one twice", f"data.aspects_file={path}", "write one aspect a line"
        )
    return aspects


def label_matrix(
    examples: Sequence[Example], aspects: Sequence[str], polarities: Sequence[str]
) -> tuple[torch.Tensor, dict[int, str]]:
    """(N, A) classes, 0 = absent, 1 + polarity index, and {row: its first aspect outside
    `aspects`} for the rows that cannot be written (their row of the matrix is all absent)."""
    column = {a: i for i, a in enumerate(aspects)}
    polarity = {p: 1 + i for i, p in enumerate(polarities)}
    labels = torch.zeros(len(examples), len(aspects), dtype=torch.long)
    outside: dict[int, str] = {}
    for row, ex in enumerate(examples):
        if unknown := sorted(set(ex.labels) - set(column)):
            outside[row] = unknown[0]
            continue
        for aspect, pol in ex.labels.items():
            labels[row, column[aspect]] = polarity[pol]
    return labels, outside


class AspectSentimentDataModule(L.LightningDataModule):
    """Reads the splits, fixes the aspect list, and batches comments with the encoder's tokenizer.

    The aspect list is `aspects` when given (eval always passes the checkpoint's), else the sorted
    aspects of the training split, so that runs agree. The tokenizer comes from the encoder and is
    set with `set_tokenizer` before the first dataloader is built, with the n-gram hashing of
    the network's n-gram branch when it has one (batches then carry `ngram_ids`).

    Training batches are cut from length-sorted pools of `bucket_batches` batches (see
    `LengthBucketBatchSampler`); every batch is padded to its longest comment, or to
    `max_length` with `pad_to_max_length` (which only measures what padding costs).

    `train_subset` trains on that many training comments drawn at random (`train_subset_seed`),
    to see how a recipe fares on a small dataset; the aspect list still comes from the whole file.
    """

    def __init__(
        self,
        root: str | Path,
        files: dict[str, str],
        reader: Reader,
        polarities: Sequence[str] = ("Positive", "Negative", "Neutral"),
        aspects: Sequence[str] | None = None,
        aspects_file: str | Path | None = None,
        download: dict | None = None,
        preprocess: str | Mapping[str, Any] | None = None,
        on_error: OnError = "raise",
        test_split: str = "test",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        bucket_batches: int = 50,
        pad_to_max_length: bool = False,
        train_subset: int | None = None,
        train_subset_seed: int = 0,
    ):
        super().__init__()
        if set(files) != set(SPLITS):
            raise AbsaUserError(f"data.files must name exactly {list(SPLITS)}, got {sorted(files)}")
        if test_split not in SPLITS:
            raise AbsaUserError(
                f"data.test_split must be one of {list(SPLITS)}, got {test_split!r}"
            )
        self.root = Path(root).expanduser()
        self.files = dict(files)  # relative to root, or absolute
        self.paths = {name: self.root / file for name, file in files.items()}
        self.reader, self.download = reader, download
        self.preprocess_spec = preprocess_spec(preprocess)  # what checkpoints keep: plain data
        self.preprocess = build_preprocess(self.preprocess_spec)
        self.polarities = list(polarities)
        self.aspects = list(aspects) if aspects else read_aspects_file(aspects_file)
        self.aspects_from = (
            "data.aspects"
            if aspects
            else "data.aspects_file"
            if aspects_file
            else "the train split's"
        )
        self.on_error, self.test_split = on_error, test_split
        self.max_length = max_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.bucket_batches, self.pad_to_max_length = bucket_batches, pad_to_max_length
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"data.train_subset must be >= 1 or null, got {train_subset}")
        self.train_subset, self.train_subset_seed = train_subset, train_subset_seed
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.ngrams: NgramIds | None = None
        self._examples: dict[str, list[Example]] = {}
        self.datasets: dict[str, AspectSentimentDataset] = {}

    def prepare_data(self) -> None:
        ensure_dataset(self.root, list(self.files.values()), **(self.download or {}))

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ["train", "dev"], "validate": ["dev"]}.get(
            stage or "fit", [self.test_split]
        )
        if self.aspects is None:
            self.aspects = sorted({a for ex in self._read("train") for a in ex.labels})
            log.info("aspects from %s: %s", self.paths["train"], self.aspects)
        for split in needed:
            if split not in self.datasets:
                self.datasets[split] = self._to_dataset(split, self._split_examples(split))

    def set_tokenizer(
        self, tokenizer: PreTrainedTokenizerBase, ngrams: NgramIds | None = None
    ) -> None:
        self.tokenizer, self.ngrams = tokenizer, ngrams
        for dataset in self.datasets.values():
            dataset.token_ids = None  # encoded again, with this tokenizer, when next loaded

    def class_counts(self) -> torch.Tensor:
        """(1 + polarities,) counts of each class over the training cells, for focal alpha."""
        labels = self.datasets["train"].labels
        return torch.bincount(labels.flatten(), minlength=1 + len(self.polarities))

    def train_texts(self) -> list[str]:
        return [ex.text for ex in self._split_examples("train")]

    def _split_examples(self, split: str) -> list[Example]:
        """The split's examples; for train, the `train_subset` drawn from them when set."""
        examples = self._read(split)
        if split != "train" or self.train_subset is None or self.train_subset >= len(examples):
            return examples
        keep = sorted(
            random.Random(self.train_subset_seed).sample(range(len(examples)), self.train_subset)
        )
        return [examples[i] for i in keep]

    def train_dataloader(self) -> DataLoader:
        dataset = self._encoded("train")
        batches = LengthBucketBatchSampler(
            RandomSampler(dataset),
            self.batch_size,
            drop_last=False,
            lengths=dataset.lengths(),
            pool_batches=self.bucket_batches,
        )
        return self._loader("train", batch_sampler=batches)

    def val_dataloader(self) -> DataLoader:
        return self._loader(
            "dev", batch_size=self.eval_batch_size, sampler=self._eval_sampler("dev")
        )

    def test_dataloader(self) -> DataLoader:
        return self._loader(
            self.test_split,
            batch_size=self.eval_batch_size,
            sampler=self._eval_sampler(self.test_split),
        )

    def split_dataloader(self, split: str) -> DataLoader:
        """The whole split, shortest first, in this process (under DDP too): for tuning on dev."""
        return self._loader(
            split, batch_size=self.eval_batch_size, sampler=self._shortest_first(split)
        )

    def _shortest_first(self, split: str) -> list[int]:
        """The split's indices by token count: a batch then pads to about its own length
        (UIT-ViSFD's dev split scores ~2x faster than in file order)."""
        lengths = self._encoded(split).lengths()
        return sorted(range(len(lengths)), key=lengths.__getitem__)

    def _eval_sampler(self, split: str) -> Sampler | list[int]:
        """In one process, shortest comments first (`_shortest_first`). The scores do not depend
        on the order; a batch's contrastive loss does, a little.

        Under DDP, each process scores its share of the split and every comment exactly once.

        Lightning's own DistributedSampler would pad the split with repeated comments to even
        out the processes, and the metrics (confusion counts summed over processes) would count
        those twice. Processes may then run one batch more than another, which evaluation
        allows: nothing synchronises per batch (the contrastive loss gathers in training only).
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return self._shortest_first(split)
        return UnrepeatedDistributedSampler(
            self.datasets[split],
            num_replicas=trainer.world_size,
            rank=trainer.global_rank,
            shuffle=False,
        )

    def _read(self, split: str) -> list[Example]:
        if split not in self._examples:
            examples = self.reader(self.paths[split], self.polarities, on_error=self.on_error)
            if self.preprocess is not None:
                examples = [
                    Example(self.preprocess(ex.text), ex.labels, ex.line) for ex in examples
                ]
            self._examples[split] = examples
        return self._examples[split]

    def _to_dataset(self, split: str, examples: list[Example]) -> AspectSentimentDataset:
        """Label matrix over the fixed aspect list; an aspect outside it is a located error."""
        assert self.aspects is not None
        labels, outside = label_matrix(examples, self.aspects, self.polarities)
        errors = RowErrors(self.paths[split], self.on_error)
        fix = self._unknown_aspect_fix(sorted(set(outside.values())))
        for row, aspect in outside.items():
            ex = examples[row]
            problem = f"aspect {aspect!r} not in the aspect list ({self.aspects_from})"
            errors.bad_row(ex.line, problem, ex.text, fix)
        errors.report()
        kept = [row for row in range(len(examples)) if row not in outside]
        if not kept:
            raise AbsaUserError("no usable comments", str(self.paths[split]))
        return AspectSentimentDataset([examples[row].text for row in kept], labels[kept])

    def _unknown_aspect_fix(self, unknown: list[str]) -> str:
        every = ",".join(f'"{a}"' for a in [*(self.aspects or []), *unknown])
        return (
            f"list every aspect in the config, 'data.aspects=[{every}]' (quoted so that Hydra "
            "keeps # and &), or give data.aspects_file=FILE, one aspect a line; or leave such "
            "rows out with data.on_error=skip"
        )

    def _encoded(self, split: str) -> AspectSentimentDataset:
        if self.tokenizer is None:
            raise RuntimeError("call set_tokenizer(...) with the encoder's tokenizer first")
        dataset = self.datasets[split]
        if dataset.token_ids is None:
            dataset.encode(self.tokenizer, self.max_length, self.ngrams)
        return dataset

    def _loader(self, split: str, **batching) -> DataLoader:
        return DataLoader(
            self._encoded(split),
            num_workers=self.num_workers,
            collate_fn=self._collate,
            persistent_workers=self.num_workers > 0,
            **batching,
        )

    def _collate(
        self, items: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]]
    ) -> dict[str, torch.Tensor]:
        index, token_ids, labels, ngram_ids = zip(*items, strict=True)
        input_ids, attention_mask = pad_batch(
            token_ids,
            pad_id=self.tokenizer.pad_token_id,
            pad_to=self.max_length if self.pad_to_max_length else None,
        )
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.stack(labels),
            "index": torch.tensor(index),
        }
        if self.ngrams is not None:
            batch["ngram_ids"] = pad_ngram_ids(ngram_ids)
        return batch
