"""Task-adaptive masked-LM pre-training, a training stage before fine-tuning
(`model.pretraining.epochs`): the encoder first learns the training comments' words from their
context (BERT's objective), then fine-tunes on their labels.

A from-scratch encoder otherwise learns every word only through the labels of the few comments
that hold it. The batches are Hugging Face's masked-LM collator's (BERT's 80/10/10 corruption);
a Lightning `Trainer` runs the stage, so it uses the device the training's trainer uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from absa_lightning.data.batching import tokenize

__all__ = ["MaskedLMHead", "MaskedLMModule", "masked_lm_pretraining"]

IGNORED = -100  # the collator's label for the tokens that are not predicted


class MaskedLMHead(nn.Module):
    """BERT's prediction head: a transform, then the word embeddings (tied) as the decoder."""

    def __init__(self, word_embeddings: nn.Embedding):
        super().__init__()
        d = word_embeddings.embedding_dim
        self.transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.word_embeddings = word_embeddings
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden) @ self.word_embeddings.weight.T + self.bias


class MaskedLMModule(L.LightningModule):
    """The encoder and a masked-LM head; records the mean loss of each epoch in `epoch_losses`."""

    def __init__(self, encoder: PreTrainedModel, lr: float, warmup_ratio: float = 0.1):
        super().__init__()
        self.encoder, self.lr, self.warmup_ratio = encoder, lr, warmup_ratio
        self.head = MaskedLMHead(encoder.get_input_embeddings())
        self.epoch_losses: list[float] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        chosen = batch["labels"] != IGNORED
        # Only the chosen tokens go through the vocabulary-wide decoder.
        loss = F.cross_entropy(self.head(hidden[chosen]), batch["labels"][chosen])
        self.log("pretraining/loss", loss, on_epoch=True, batch_size=len(batch["input_ids"]))
        return loss

    def on_train_epoch_end(self) -> None:
        self.epoch_losses.append(float(self.trainer.callback_metrics["pretraining/loss_epoch"]))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, max(1, round(self.warmup_ratio * total)), total
        )
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def masked_lm_pretraining(
    tokenizer: PreTrainedTokenizerBase,
    encoder: PreTrainedModel,
    texts: Sequence[str],
    trainer: L.Trainer,
    batch_size: int = 64,
    lr: float = 1e-3,
    mask_prob: float = 0.15,
    max_length: int = 128,
    warmup_ratio: float = 0.1,
) -> list[float]:
    """Trains `encoder` in place on `texts` for the `trainer`'s epochs; returns the mean
    masked-LM loss of each epoch."""
    tokenized = tokenize(tokenizer, texts, max_length, special_tokens_mask=True)
    rows = [
        {"input_ids": ids.tolist(), "attention_mask": [1] * len(ids), "special_tokens_mask": mask}
        for ids, mask in zip(tokenized.token_ids, tokenized.special_tokens_mask, strict=True)
    ]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mask_prob)
    batches = DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=collator)
    module = MaskedLMModule(encoder, lr, warmup_ratio)
    trainer.fit(module, batches)
    encoder.cpu()  # fine-tuning's trainer moves it where it trains
    return module.epoch_losses
