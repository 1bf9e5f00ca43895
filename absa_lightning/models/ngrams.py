"""The wide n-gram branch: a comment's word and character n-grams hashed into ids
(`NgramHashing`, applied in the one tokenise path, `data.batching.tokenize`, as the tokenizer
is) and a linear model over them whose logits `AspectSentimentNet` adds to its own
(`HashedNgramBranch`): what the TF-IDF + SVM baseline sees, inside the network.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NGRAM_MODES = ("mean", "sum")

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class NgramHashing:
    """A text's word and character n-grams, hashed into ids 1..`buckets` (0 is padding): the
    features of a linear bag-of-n-grams model (fastText; the TF-IDF + SVM baseline's words and
    `char_wb` n-grams), for the n-gram branch (`models.network.HashedNgramBranch`).

    Words are the `\\w+` runs of the text, NFC-normalised and lower-cased. Word n-grams of each
    order in `word_orders` (joined by a space); character n-grams of each order in
    `char_orders`, taken inside each word with fastText's boundary markers (`<màn>`: `<m`,
    `mà`, ..., `n>`). The first `max_words` words are read (the encoder reads `max_length`
    tokens; a cap keeps a very long comment's batch, (B, n-grams, A*C), in memory). Each
    n-gram is hashed with CRC-32 of its UTF-8 bytes, a kind prefix (`w`/`c`) keeping a
    one-letter word apart from a character unigram: the same id in every process and on every
    machine (Python's `hash` of a str is salted per process). An n-gram that occurs twice
    counts twice.
    """

    buckets: int = 262144
    word_orders: tuple[int, ...] = (1, 2)
    char_orders: tuple[int, ...] = (2, 3, 4, 5)
    max_words: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "word_orders", tuple(self.word_orders))
        object.__setattr__(self, "char_orders", tuple(self.char_orders))
        if self.buckets < 1:
            raise ValueError(f"model.ngrams.buckets must be >= 1, got {self.buckets}")
        if self.max_words < 1:
            raise ValueError(f"model.ngrams.max_words must be >= 1, got {self.max_words}")
        orders = (*self.word_orders, *self.char_orders)
        if not orders or min(orders) < 1:
            raise ValueError(
                "model.ngrams.word_orders and char_orders: orders >= 1, at least one of them"
            )

    def spec(self) -> dict[str, Any]:
        """Plain data that rebuilds this hashing (checkpoints, exported models)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def ngrams(self, text: str) -> list[str]:
        """The text's n-grams as hashed: `w` + words joined by a space, `c` + characters."""
        words = _WORD.findall(unicodedata.normalize("NFC", text).lower())[: self.max_words]
        grams = [
            "w" + " ".join(words[i : i + n])
            for n in self.word_orders
            for i in range(len(words) - n + 1)
        ]
        for word in words:
            marked = f"<{word}>"
            grams.extend(
                "c" + marked[i : i + n]
                for n in self.char_orders
                for i in range(len(marked) - n + 1)
            )
        return grams

    def __call__(self, text: str) -> torch.Tensor:
        """(n,) the text's n-gram ids, in 1..buckets."""
        ids = [zlib.crc32(g.encode("utf-8")) % self.buckets + 1 for g in self.ngrams(text)]
        return torch.tensor(ids, dtype=torch.long)


class HashedNgramBranch(nn.Module):
    """A linear model over the comment's hashed word and character n-grams (fastText's bag of
    n-grams; the features the TF-IDF + SVM baseline has): (B, M) n-gram ids -> (B, A, C) logits,
    which `AspectSentimentNet` adds to its own. Zero-initialised, so it starts neutral.

    One row of A*C weights per bucket (`NgramHashing`, id 0 = padding, skipped): a comment's
    logits are the `mode` (mean or sum) of its n-grams' rows, `nn.EmbeddingBag`'s reduction
    written out as a lookup and a masked sum: ONNX has no bag operator, and the exporter
    turns `EmbeddingBag` into a Loop over the comments. The regularisers play the SVM's C:
    `dropout` drops each n-gram of a training comment with that probability, and the branch's
    weights train with their own `lr` and `weight_decay` (`parameter_group`).
    """

    def __init__(
        self,
        num_aspects: int,
        num_classes: int,
        buckets: int = 262144,
        word_orders: Sequence[int] = (1, 2),
        char_orders: Sequence[int] = (2, 3, 4, 5),
        max_words: int = 256,
        mode: str = "mean",
        dropout: float = 0.1,
        lr: float = 3.0e-2,
        weight_decay: float = 0.0,
    ):
        super().__init__()
        if mode not in NGRAM_MODES:
            raise ValueError(f"model.ngrams.mode must be one of {list(NGRAM_MODES)}, got {mode!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.ngrams.dropout must be in [0, 1), got {dropout}")
        self.hashing = NgramHashing(buckets, tuple(word_orders), tuple(char_orders), max_words)
        self.num_aspects, self.num_classes = num_aspects, num_classes
        self.mode, self.dropout = mode, dropout
        self.lr, self.weight_decay = lr, weight_decay
        self.weight = nn.Parameter(torch.zeros(buckets + 1, num_aspects * num_classes))

    @property
    def settings(self) -> dict:
        """Plain data that rebuilds the branch, with the aspects and classes (checkpoints)."""
        return {
            **self.hashing.spec(),
            "mode": self.mode,
            "dropout": self.dropout,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
        }

    def parameter_group(self) -> dict:
        return {"params": list(self.parameters()), "lr": self.lr, "weight_decay": self.weight_decay}

    def forward(self, ngram_ids: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            kept = torch.rand(ngram_ids.shape, device=ngram_ids.device) >= self.dropout
            ngram_ids = ngram_ids * kept  # a dropped n-gram becomes padding: out of the mean
        present = (ngram_ids != 0).unsqueeze(-1)  # (B, M, 1)
        bag = (F.embedding(ngram_ids, self.weight) * present).sum(dim=1)  # (B, A*C)
        if self.mode == "mean":  # over the comment's n-grams; none: zero logits
            bag = bag / present.sum(dim=1).clamp(min=1)
        return bag.view(-1, self.num_aspects, self.num_classes)


def valid_ngram_settings(settings: Any) -> bool:
    """Whether a model file's `ngrams` field is `HashedNgramBranch.settings`: exactly its keys,
    numbers, lists of integer orders, a known mode (checked before anything is built)."""
    integers, numbers = {"buckets", "max_words"}, {"dropout", "lr", "weight_decay"}
    orders = {"word_orders", "char_orders"}
    if not isinstance(settings, dict) or set(settings) != {*integers, *numbers, *orders, "mode"}:
        return False

    def integer(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    return (
        all(integer(settings[k]) for k in integers)
        and all(integer(settings[k]) or isinstance(settings[k], float) for k in numbers)
        and all(
            isinstance(settings[k], list) and all(integer(n) for n in settings[k]) for k in orders
        )
        and settings["mode"] in NGRAM_MODES
    )
