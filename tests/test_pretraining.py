"""Masked-LM pre-training of the from-scratch encoder, a stage run by a Lightning Trainer."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from conftest import TINY, compose_train

from absa_lightning.models import scratch_bert
from absa_lightning.pretraining import masked_lm_pretraining
from absa_lightning.train import build

TEXTS = [
    "pin trâu camera nét",
    "pin yếu camera mờ",
    "màn hình đẹp pin trâu",
    "giá rẻ màn hình đẹp",
] * 16
WORDS = "embeddings.word_embeddings.weight"


def stage(epochs: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_pretraining_lowers_the_masked_lm_loss_and_changes_only_the_encoder() -> None:
    torch.manual_seed(0)
    tokenizer, encoder = scratch_bert(
        TEXTS, vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
    )
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    losses = masked_lm_pretraining(tokenizer, encoder, TEXTS, stage(15), batch_size=16, lr=3e-3)
    assert len(losses) == 15 and losses[-1] < 0.75 * losses[0]
    assert set(encoder.state_dict()) == set(before)
    assert not torch.equal(before[WORDS], encoder.state_dict()[WORDS])


def test_build_pretrains_when_asked_and_is_the_same_without(
    small_visfd: Path, tmp_path: Path
) -> None:
    weights = []
    for epochs in (0, 0, 1):
        cfg = compose_train(
            [*TINY, f"data.root={small_visfd}", f"model.pretraining.epochs={epochs}"], tmp_path
        )
        torch.manual_seed(0)
        _, module = build(cfg)
        weights.append(module.net.encoder.state_dict()[WORDS])
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])
