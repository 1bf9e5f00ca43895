"""Tokenising and batching, the one source for training, prediction and pre-training: texts to
token ids cut to `max_length` (`tokenize`), with the hashed n-gram ids of the n-gram branch when
asked (`models.ngrams.NgramHashing`, handed in as the tokenizer is), comments of similar length
together (`LengthBucketBatchSampler` in training, `length_sorted_batches` in prediction), and
padding a batch of token ids (`pad_batch`) or of n-gram ids (`pad_ngram_ids`).

A batch is padded to its longest comment, so its cost follows that comment. UIT-ViSFD's
comments run from a few tokens to `max_length`; random batches of 32 almost always hold one
long comment (pad to ~112 tokens for ~43 real ones on average), whereas batches cut from
length-sorted pools pad little. `benchmarks/speed.py` measures the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import BatchSampler, Sampler

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenizedTexts:
    token_ids: list[torch.Tensor]  # per text, with the special tokens, at most max_length
    truncated: torch.Tensor  # (N,) bool: longer than max_length tokens, only the start kept
    special_tokens_mask: list[list[int]] | None  # per text, 1 at a special token; when asked
    ngram_ids: list[torch.Tensor] | None = None  # per text, its hashed n-grams; when asked


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    special_tokens_mask: bool = False,
    ngrams: Callable[[str], torch.Tensor] | None = None,
) -> TokenizedTexts:
    """Each text's token ids, cut to `max_length` as the tokenizer cuts (keeping its closing
    special token), and which texts were cut; with `ngrams`, each text's hashed n-gram ids."""
    ngram_ids = [ngrams(text) for text in texts] if ngrams is not None else None
    if not texts:
        return TokenizedTexts(
            [], torch.zeros(0, dtype=torch.bool), [] if special_tokens_mask else None, ngram_ids
        )
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        return_token_type_ids=False,
        return_attention_mask=False,
        return_special_tokens_mask=special_tokens_mask,
    )
    token_ids = [torch.tensor(ids, dtype=torch.long) for ids in encoded["input_ids"]]
    # Only a text that fills max_length can have been cut: tokenise those again, uncut.
    full = [i for i, ids in enumerate(token_ids) if len(ids) == max_length]
    truncated = torch.zeros(len(texts), dtype=torch.bool)
    if full:
        uncut = tokenizer([texts[i] for i in full], return_length=True, verbose=False)
        truncated[full] = torch.tensor(uncut["length"]) > max_length
    masks = encoded["special_tokens_mask"] if special_tokens_mask else None
    return TokenizedTexts(token_ids, truncated, masks, ngram_ids)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices, shortest first (ties in index order), `batch_size` at a time: similar lengths
    share a batch, so little of it is padding. For prediction; training shuffles
    (`LengthBucketBatchSampler`)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class LengthBucketBatchSampler(BatchSampler):
    """Batches of comments of similar length, in random order.

    The `sampler`'s indices (a random permutation in training; under DDP, this process's share)
    are taken `pool_batches` batches at a time; each pool is sorted by length and cut into
    batches, and the batches of the epoch are then shuffled. Bigger pools pad less but make
    batches less random: a batch holds comments of one length band, which also shapes the
    contrastive loss's negatives. `pool_batches=1` gives the sampler's own batches.

    Shuffling draws from torch's global generator, as `shuffle=True` does, so a run resumed from
    a checkpoint with its random states draws the same batches.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        drop_last: bool,
        lengths: Sequence[int] | torch.Tensor,
        pool_batches: int = 50,
    ):
        super().__init__(sampler, batch_size, drop_last)
        if pool_batches < 1:
            raise ValueError(f"data.bucket_batches must be >= 1, got {pool_batches}")
        self.lengths = torch.as_tensor(lengths)
        self.pool_batches = pool_batches

    def __iter__(self) -> Iterator[list[int]]:
        indices = torch.as_tensor(list(self.sampler), dtype=torch.long)
        if self.drop_last:
            indices = indices[: len(indices) - len(indices) % self.batch_size]
        batches: list[torch.Tensor] = []
        for pool in indices.split(self.batch_size * self.pool_batches):
            # stable: equal lengths keep the sampler's (random) order
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            batches.extend(pool.split(self.batch_size))
        for i in torch.randperm(len(batches)).tolist():
            yield batches[i].tolist()


def pad_batch(
    token_ids: Sequence[torch.Tensor], pad_id: int, pad_to: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, L): L = the longest comment, or `pad_to`."""
    lengths = torch.tensor([len(ids) for ids in token_ids])
    input_ids = pad_sequence(list(token_ids), batch_first=True, padding_value=pad_id)
    if pad_to is not None and input_ids.shape[1] < pad_to:
        input_ids = torch.nn.functional.pad(
            input_ids, (0, pad_to - input_ids.shape[1]), value=pad_id
        )
    attention_mask = (torch.arange(input_ids.shape[1]) < lengths.unsqueeze(1)).long()
    return input_ids, attention_mask


def pad_ngram_ids(ngram_ids: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, M) n-gram ids, M = the most any comment has, padded with 0 (the branch skips it)."""
    if not any(len(ids) for ids in ngram_ids):
        return torch.zeros(len(ngram_ids), 1, dtype=torch.long)  # an all-padding bag: 0 logits
    return pad_sequence(list(ngram_ids), batch_first=True, padding_value=0)
