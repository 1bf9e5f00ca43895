"""tokenize, LengthBucketBatchSampler, length_sorted_batches and pad_batch."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from absa_lightning.data.batching import (
    LengthBucketBatchSampler,
    length_sorted_batches,
    pad_batch,
    tokenize,
)


def padded_tokens(batches: list[list[int]], lengths: torch.Tensor) -> int:
    return sum(len(b) * int(lengths[b].max()) for b in batches)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_comment_once_each_pool_sorted(drop_last: bool) -> None:
    torch.manual_seed(0)
    lengths = torch.randint(3, 128, (1000,))
    sampler = LengthBucketBatchSampler(
        RandomSampler(range(1000)), 32, drop_last, lengths, pool_batches=5
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == (31 if drop_last else 32)
    seen = sorted(i for b in batches for i in b)
    assert len(seen) == len(set(seen)) == (992 if drop_last else 1000)
    for batch in batches:  # a batch is a slice of a sorted pool: its lengths are non-decreasing
        assert lengths[batch].tolist() == sorted(lengths[batch].tolist())
    random_batches = list(BatchSampler(RandomSampler(range(1000)), 32, drop_last))
    assert padded_tokens(batches, lengths) < 0.75 * padded_tokens(random_batches, lengths)


def test_one_batch_pools_keep_the_samplers_batches() -> None:
    lengths = torch.randint(3, 128, (100,))
    order = torch.randperm(100).tolist()
    plain = [sorted(b) for b in BatchSampler(order, 8, False)]
    bucketed = [sorted(b) for b in LengthBucketBatchSampler(order, 8, False, lengths, 1)]
    assert sorted(bucketed) == sorted(plain)


def test_batch_order_follows_the_global_seed() -> None:
    lengths = torch.randint(3, 128, (300,))

    def draw(seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        return list(LengthBucketBatchSampler(RandomSampler(range(300)), 16, False, lengths))

    assert draw(1) == draw(1) != draw(2)


def test_lightning_swaps_in_a_distributed_sampler_and_keeps_the_bucketing() -> None:
    """What Lightning does to the training loader under DDP (`use_distributed_sampler`)."""
    lengths = torch.randint(3, 128, (200,))
    data = list(range(200))
    # Lightning records a loader's arguments as the datamodule builds it, to rebuild it later.
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = DataLoader(
            data,
            batch_sampler=LengthBucketBatchSampler(RandomSampler(data), 8, False, lengths, 4),
        )
    shards = []
    for rank in (0, 1):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)
        ddp_loader = _update_dataloader(loader, sampler, mode="fit")
        batch_sampler = ddp_loader.batch_sampler
        assert isinstance(batch_sampler, LengthBucketBatchSampler)
        assert batch_sampler.sampler is sampler and batch_sampler.pool_batches == 4
        shards.append({i for b in batch_sampler for i in b})
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(data)


def test_pool_batches_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="bucket_batches"):
        LengthBucketBatchSampler(range(4), 2, False, [1, 2, 3, 4], pool_batches=0)


def test_pad_batch_to_longest_and_to_a_fixed_length() -> None:
    ids = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    input_ids, mask = pad_batch(ids, pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    input_ids, mask = pad_batch(ids, pad_id=0, pad_to=5)
    assert input_ids.tolist() == [[5, 6, 7, 0, 0], [8, 0, 0, 0, 0]]
    assert mask.sum(dim=1).tolist() == [3, 1]


def test_length_sorted_batches_shortest_first_ties_in_order() -> None:
    assert length_sorted_batches([5, 2, 9, 2, 1], 2) == [[4, 1], [3, 0], [2]]
    assert length_sorted_batches([], 3) == []


def test_tokenize_cuts_to_max_length_and_flags_only_the_cut() -> None:
    from absa_lightning.models import scratch_bert

    texts = ["pin tốt", "pin tốt camera", "pin tốt camera đẹp", ""]
    tok, _ = scratch_bert(
        texts, vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=16
    )
    full = [tok(t)["input_ids"] for t in texts]
    max_length = len(full[1])  # the second fills it exactly, uncut; the third is cut
    tokenized = tokenize(tok, texts, max_length, special_tokens_mask=True)
    assert tokenized.truncated.tolist() == [False, False, True, False]
    assert [ids.tolist() for ids in tokenized.token_ids[:2]] == full[:2]
    assert len(tokenized.token_ids[2]) == max_length
    assert tokenized.token_ids[2][-1] == tok.sep_token_id
    assert [m[0] for m in tokenized.special_tokens_mask] == [1, 1, 1, 1]
    assert tokenize(tok, [], max_length).token_ids == []
