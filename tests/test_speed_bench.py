"""benchmarks/speed.py: the FLOP count against torch's own counter, and one small measurement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY
from torch.utils.flop_counter import FlopCounterMode

from absa_lightning.models import scratch_bert
from benchmarks import speed


def test_encoder_flops_match_torchs_counter_on_an_unpadded_batch() -> None:
    texts = ["pin trâu camera nét màn hình đẹp"] * 3
    tokenizer, encoder = scratch_bert(
        texts, vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
    )
    batch = tokenizer(texts, return_tensors="pt", return_token_type_ids=False)
    with FlopCounterMode(display=False) as counter:
        encoder(**batch).last_hidden_state.sum().backward()
    counted = speed.encoder_training_flops(encoder.config, batch["attention_mask"])
    assert counted == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_padding_tokens_do_not_count() -> None:
    _, encoder = scratch_bert(
        ["a b"], vocab_size=10, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32
    )
    short = torch.tensor([[1, 1, 1, 0, 0]])
    assert speed.encoder_training_flops(encoder.config, short) == speed.encoder_training_flops(
        encoder.config, torch.ones(1, 3, dtype=torch.long)
    )


@pytest.mark.slow
def test_training_measurements_on_a_small_split(
    small_visfd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default recipe's measurements, on the tiny model: the harness, not the numbers."""
    default_recipe = speed.default_recipe
    monkeypatch.setattr(speed, "default_recipe", lambda root: default_recipe(root, TINY))
    m = speed.training_measurements(small_visfd, steps=3, rounds=1)
    for key in ("bare", "lightning", "full", "plain", "bucketed", "fixed", "random_longest"):
        assert m[f"{key}_samples_per_s"] > 0
    padded = m["padded_tokens_per_comment"]
    assert padded["fixed"] == 128  # data.max_length
    assert m["real_tokens_per_comment"] <= padded["bucketed"] <= padded["random_longest"]
    assert 0 < m["achieved_flops"] < m["matmul_peak_flops"]
