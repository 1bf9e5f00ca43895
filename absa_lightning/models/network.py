"""The aspect-sentiment network: an encoder, one embedding of the comment per aspect, two heads,
and, when configured, a wide linear branch over hashed n-grams added to the logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from absa_lightning.models.ngrams import HashedNgramBranch, NgramHashing


class AspectOutputs(NamedTuple):
    logits: torch.Tensor  # (B, A, C): C = 1 (absent) + polarities
    projections: torch.Tensor  # (B, A, P), L2-normalised, for the contrastive loss
    aspect_embeddings: torch.Tensor  # (B, A, D)


def learned_query_attention(
    attention: nn.MultiheadAttention,
    queries: torch.Tensor,
    tokens: torch.Tensor,
    key_padding_mask: torch.Tensor,
) -> torch.Tensor:
    """`attention(queries, tokens, tokens, key_padding_mask)` for queries that are parameters,
    the same for every comment: (A, D) queries, (B, L, D) tokens -> (B, A, D).

    The same function of the same parameters, computed in another order. The key projection is
    folded into the queries (q . (W_k t + b_k) = (W_k^T q) . t + q . b_k, and the last term,
    constant over tokens, cancels in the softmax), and the value projection is applied after
    pooling (the attention weights sum to 1, so the bias passes through). No token is
    projected: A*H scores a token instead of 2*D projected features; the profile had the
    per-token key and value projections at most of the aspect heads' cost.
    """
    heads, width = attention.num_heads, attention.embed_dim
    head_dim = width // heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, _, b_v = attention.in_proj_bias.chunk(3)
    q = (queries @ w_q.T + b_q).view(-1, heads, head_dim)  # (A, H, e)
    key_queries = torch.einsum("ahe,hed->had", q, w_k.view(heads, head_dim, width))
    scores = torch.einsum("bld,had->bhal", tokens, key_queries) / head_dim**0.5  # (B, H, A, L)
    scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), attention.dropout, attention.training)
    pooled = torch.einsum("bhal,bld->bhad", weights, tokens)  # (B, H, A, D)
    values = torch.einsum("bhad,hed->bahe", pooled, w_v.view(heads, head_dim, width))
    values = values + b_v.view(heads, head_dim)  # (B, A, H, e)
    return attention.out_proj(values.flatten(2))


def class_priors(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, A) class ids -> (A, C) each aspect's class frequencies, add-one smoothed (an unseen
    class keeps a finite log-prior)."""
    counts = F.one_hot(labels, num_classes).sum(dim=0).float() + 1.0  # (A, C)
    return counts / counts.sum(dim=-1, keepdim=True)


class AspectSentimentNet(nn.Module):
    """Each aspect has a learned query that attends over the token states; the result is that
    aspect's embedding of the comment. A per-aspect linear head classifies it into
    {absent, polarity…}; a shared MLP projects it for the supervised contrastive loss.

    `class_priors` ((A, C) frequencies, `class_priors()`) starts each aspect's classifier bias
    at their logarithm, so the first softmax is the priors (Lin et al., 2017, focal loss §4.1):
    the first steps fit the text, not the class balance; with a zero bias they are spent
    learning that most cells are absent, and a rare aspect can collapse into "never".

    `ngrams`, a `HashedNgramBranch`, adds its logits to the heads' (a wide and deep model): the
    forward pass then needs the batch's `ngram_ids` (`data.batching.pad_ngram_ids`).
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        num_aspects: int,
        num_classes: int,
        projection_dim: int = 128,
        attention_heads: int = 4,
        dropout: float = 0.1,
        class_priors: Sequence[Sequence[float]] | None = None,
        ngrams: HashedNgramBranch | None = None,
    ):
        super().__init__()
        d = encoder.config.hidden_size
        if d % attention_heads:
            raise ValueError(
                f"head.attention_heads={attention_heads} must divide the encoder width {d}"
            )
        # What `from_checkpoint` rebuilds the heads from (with the aspects and polarities).
        self.head_settings = {
            "projection_dim": projection_dim,
            "attention_heads": attention_heads,
            "dropout": dropout,
        }
        self.encoder = encoder
        self.aspect_queries = nn.Parameter(torch.randn(num_aspects, d) * 0.02)
        self.attention = nn.MultiheadAttention(
            d, attention_heads, dropout=dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        # One linear classifier per aspect, applied to all aspects at once with an einsum.
        self.classifier_weight = nn.Parameter(torch.randn(num_aspects, d, num_classes) * 0.02)
        self.classifier_bias = nn.Parameter(torch.zeros(num_aspects, num_classes))
        if class_priors is not None:
            priors = torch.as_tensor(class_priors, dtype=torch.float)
            if priors.shape != (num_aspects, num_classes):
                raise ValueError(
                    f"head.class_priors has shape {tuple(priors.shape)}, "
                    f"expected ({num_aspects}, {num_classes})"
                )
            with torch.no_grad():
                self.classifier_bias.copy_(priors.log())
        self.projection = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, projection_dim))
        if ngrams is not None and (ngrams.num_aspects, ngrams.num_classes) != (
            num_aspects,
            num_classes,
        ):
            raise ValueError(
                f"the n-gram branch is for {ngrams.num_aspects} aspects x {ngrams.num_classes} "
                f"classes, the network for {num_aspects} x {num_classes}"
            )
        self.ngrams = ngrams

    @property
    def ngram_hashing(self) -> NgramHashing | None:
        """How the batches' `ngram_ids` are made; None: the network takes none."""
        return self.ngrams.hashing if self.ngrams is not None else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        ngram_ids: torch.Tensor | None = None,
    ) -> AspectOutputs:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        queries = self.aspect_queries.expand(tokens.shape[0], -1, -1)  # (B, A, D)
        attended = learned_query_attention(
            self.attention, self.aspect_queries, tokens, key_padding_mask=attention_mask == 0
        )
        aspect_embeddings = self.norm(attended + queries)  # (B, A, D)
        hidden = self.dropout(aspect_embeddings)
        logits = torch.einsum("bad,adc->bac", hidden, self.classifier_weight) + self.classifier_bias
        if self.ngrams is not None:
            if ngram_ids is None:
                raise ValueError("this network has an n-gram branch: pass the batch's ngram_ids")
            logits = logits + self.ngrams(ngram_ids)
        projections = F.normalize(self.projection(hidden), dim=-1)  # (B, A, P)
        return AspectOutputs(logits, projections, aspect_embeddings)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the encoder and the n-gram branch (which have their own lr)."""
        own_lr = [*self.encoder.parameters(), *(self.ngrams.parameters() if self.ngrams else [])]
        others = {id(p) for p in own_lr}
        return [p for p in self.parameters() if id(p) not in others]

    def ngram_parameter_groups(self) -> list[dict]:
        """The n-gram branch's optimizer group, with its own lr and weight decay; [] without."""
        return [self.ngrams.parameter_group()] if self.ngrams is not None else []
