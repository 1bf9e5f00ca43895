"""Task-adaptive masked-LM pre-training: the encoder first learns the training comments' words
from their context (BERT's objective), then fine-tunes on their labels.

A from-scratch encoder otherwise learns every word only through the labels of the few comments
that hold it. This runs before Lightning starts, as part of building the encoder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import RandomSampler
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from absa_lightning.data.batching import LengthBucketBatchSampler, pad_batch
from absa_lightning.schedulers import linear_warmup_decay

log = logging.getLogger(__name__)


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


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_prob: float,
    mask_id: int,
    vocab_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: each maskable token is chosen with `mask_prob`; a chosen token becomes
    [MASK] 80% of the time, a random word 10%, itself 10%. Returns (corrupted ids, chosen)."""
    chosen = (torch.rand(input_ids.shape) < mask_prob) & maskable
    draw = torch.rand(input_ids.shape)
    corrupted = input_ids.clone()
    corrupted[chosen & (draw < 0.8)] = mask_id
    random_word = chosen & (draw >= 0.8) & (draw < 0.9)
    corrupted[random_word] = torch.randint(vocab_size, (int(random_word.sum()),))
    return corrupted, chosen


def masked_lm_pretraining(
    tokenizer: PreTrainedTokenizerBase,
    encoder: PreTrainedModel,
    texts: Sequence[str],
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    mask_prob: float = 0.15,
    max_length: int = 128,
    warmup_ratio: float = 0.1,
) -> list[float]:
    """Trains `encoder` in place on `texts`; returns the mean masked-LM loss of each epoch."""
    if epochs <= 0:
        return []
    ids = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_attention_mask=False
    )["input_ids"]
    token_ids = [torch.tensor(x, dtype=torch.long) for x in ids]
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    head = MaskedLMHead(encoder.get_input_embeddings())
    parameters = list({id(p): p for p in [*encoder.parameters(), *head.parameters()]}.values())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    batches = LengthBucketBatchSampler(
        RandomSampler(token_ids), batch_size, drop_last=False, lengths=[len(x) for x in token_ids]
    )
    scheduler = linear_warmup_decay(optimizer, epochs * len(batches), warmup_ratio)
    encoder.train()
    losses = []
    for epoch in range(epochs):
        start, total, count = time.perf_counter(), torch.zeros(()), 0
        for batch in batches:
            input_ids, attention_mask = pad_batch(
                [token_ids[i] for i in batch], tokenizer.pad_token_id
            )
            maskable = attention_mask.bool() & ~torch.isin(input_ids, special)
            corrupted, chosen = mask_tokens(
                input_ids, maskable, mask_prob, tokenizer.mask_token_id, len(tokenizer)
            )
            hidden = encoder(input_ids=corrupted, attention_mask=attention_mask).last_hidden_state
            loss = F.cross_entropy(head(hidden[chosen]), input_ids[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.detach() * len(batch)
            count += len(batch)
        losses.append(float(total) / count)
        log.info(
            "masked-LM pre-training epoch %d/%d: loss %.4f (%.1f s)",
            epoch + 1,
            epochs,
            losses[-1],
            time.perf_counter() - start,
        )
    return losses
