"""Masked-LM pre-training of the from-scratch encoder."""

from __future__ import annotations

import torch

from absa_lightning.models import scratch_bert
from absa_lightning.models.pretraining import mask_tokens, masked_lm_pretraining

TEXTS = [
    "pin trâu camera nét",
    "pin yếu camera mờ",
    "màn hình đẹp pin trâu",
    "giá rẻ màn hình đẹp",
] * 16


def test_mask_tokens_follows_berts_80_10_10_split() -> None:
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (400, 50))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False  # e.g. [CLS]
    corrupted, chosen = mask_tokens(ids, maskable, 0.15, mask_id=4, vocab_size=1000)
    assert not chosen[:, 0].any() and torch.equal(corrupted[~chosen], ids[~chosen])
    assert abs(chosen[:, 1:].float().mean() - 0.15) < 0.01
    masked = (corrupted[chosen] == 4).float().mean()
    unchanged = (corrupted[chosen] == ids[chosen]).float().mean()
    assert abs(masked - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.02  # (+ random hits, ~0.1%)


def test_pretraining_lowers_the_masked_lm_loss_and_changes_only_the_encoder() -> None:
    torch.manual_seed(0)
    tokenizer, encoder = scratch_bert(
        TEXTS, vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
    )
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    losses = masked_lm_pretraining(tokenizer, encoder, TEXTS, epochs=15, batch_size=16, lr=3e-3)
    assert len(losses) == 15 and losses[-1] < 0.75 * losses[0]
    assert set(encoder.state_dict()) == set(before)
    assert not torch.equal(
        before["embeddings.word_embeddings.weight"],
        encoder.state_dict()["embeddings.word_embeddings.weight"],
    )


def test_scratch_bert_pretrains_when_asked_and_is_the_same_without() -> None:
    options = dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    weights = []
    for pretraining in (None, {"epochs": 0}, {"epochs": 1, "batch_size": 16}):
        torch.manual_seed(0)
        weights.append(scratch_bert(TEXTS, pretraining=pretraining, **options)[1].state_dict())
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(weights[0][key], weights[1][key])
    assert not torch.equal(weights[0][key], weights[2][key])
