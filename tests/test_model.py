"""The network and the checkpoint round trip, on encoders built here (no hub)."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from absa_lightning.balancers import StaticWeights
from absa_lightning.losses import FocalLoss, SupConLoss
from absa_lightning.models import AspectSentimentNet, packaged_minilm, scratch_bert
from absa_lightning.models.network import class_priors, learned_query_attention
from absa_lightning.module import AspectSentimentModule

TEXTS = [
    "Pin trâu, camera hơi mờ",
    "Giá rẻ",
    "Màn hình đẹp nhưng loa nhỏ, pin tụt nhanh khi chơi game",
]
ASPECTS = ["BATTERY", "CAMERA", "PRICE", "SCREEN"]
POLARITIES = ["Positive", "Negative", "Neutral"]


def tiny_encoder():
    return scratch_bert(
        TEXTS * 3, vocab_size=100, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
    )


def module_for(tokenizer, encoder, views: int = 1) -> AspectSentimentModule:
    net = AspectSentimentNet(encoder, len(ASPECTS), 1 + len(POLARITIES), 8, 2, 0.1)
    return AspectSentimentModule(
        net,
        tokenizer,
        ASPECTS,
        POLARITIES,
        focal=FocalLoss(gamma=2.0),
        contrastive=SupConLoss(temperature=0.1),
        balancer=StaticWeights(0.8, 0.2),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        encoder_lr=1e-4,
        views=views,
    ).eval()


def test_shapes_and_normalised_projections() -> None:
    tokenizer, encoder = tiny_encoder()
    net = AspectSentimentNet(
        encoder, num_aspects=4, num_classes=4, projection_dim=8, attention_heads=2
    ).eval()
    batch = tokenizer(TEXTS, padding="longest", return_tensors="pt")
    out = net(batch["input_ids"], batch["attention_mask"])
    assert out.logits.shape == (3, 4, 4)
    assert out.projections.shape == (3, 4, 8)
    assert out.aspect_embeddings.shape == (3, 4, 32)
    torch.testing.assert_close(out.projections.norm(dim=-1), torch.ones(3, 4))


def test_padding_does_not_change_a_comment_s_outputs() -> None:
    """Padding to the longest comment in the batch is masked out of the aspect attention."""
    tokenizer, encoder = tiny_encoder()
    net = AspectSentimentNet(encoder, 4, 4, projection_dim=8, attention_heads=2).eval()
    alone = tokenizer(TEXTS[1:2], return_tensors="pt")
    padded = tokenizer(TEXTS[1:], padding="longest", return_tensors="pt")
    assert padded["input_ids"].shape[1] > alone["input_ids"].shape[1]
    with torch.no_grad():
        a = net(alone["input_ids"], alone["attention_mask"])
        b = net(padded["input_ids"], padded["attention_mask"])
    torch.testing.assert_close(a.logits[0], b.logits[0], atol=1e-5, rtol=1e-5)


def test_views_train_on_each_comment_twice_and_evaluate_once() -> None:
    """`loss.views=2`: a training batch goes through the network twice over; each cell's other
    view is a contrastive positive. Without dropout both views are the same comment, so the
    losses are those of the batch written out twice."""
    torch.manual_seed(0)
    module = module_for(*tiny_encoder(), views=2)
    encoded = module.tokenizer(TEXTS, padding="longest", return_tensors="pt")
    labels = torch.tensor([[1, 2, 0, 0], [0, 0, 1, 0], [2, 0, 0, 1]])  # no two cells alike
    batch = {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "labels": labels,
        "index": torch.arange(3),
    }
    rows = []
    module.net.register_forward_hook(lambda net, args, out: rows.append(len(args[0])))
    with torch.no_grad():
        module.train()
        module.net.eval()  # no dropout: the two views are equal
        _, trained = module._losses(batch)
        module.eval()
        out, evaluated = module._losses(batch)
    assert rows == [6, 3]
    torch.testing.assert_close(trained["focal_loss"], evaluated["focal_loss"])
    twice = SupConLoss(temperature=0.1)(out.projections.repeat(2, 1, 1), labels.repeat(2, 1))
    torch.testing.assert_close(trained["contrastive_loss"], twice)
    # One view: no anchor has a positive. Two: each cell's other view is one.
    assert float(evaluated["contrastive_loss"]) == 0.0 < float(trained["contrastive_loss"])


def test_encoder_and_head_parameters_split_the_network() -> None:
    _, encoder = tiny_encoder()
    net = AspectSentimentNet(encoder, 4, 4, projection_dim=8, attention_heads=2)
    enc = {id(p) for p in net.encoder_parameters()}
    heads = {id(p) for p in net.head_parameters()}
    assert not enc & heads
    assert enc | heads == {id(p) for p in net.parameters()}
    assert id(net.aspect_queries) in heads


def test_attention_heads_must_divide_width() -> None:
    _, encoder = tiny_encoder()
    with pytest.raises(ValueError, match="attention_heads=3"):
        AspectSentimentNet(encoder, 4, 4, attention_heads=3)


def roundtrip(module: AspectSentimentModule, path: Path) -> AspectSentimentModule:
    """What ModelCheckpoint saves, and what eval and prediction load."""
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return AspectSentimentModule.from_checkpoint(path).eval()


@pytest.mark.parametrize(
    "build", [tiny_encoder, pytest.param(packaged_minilm, marks=pytest.mark.slow)]
)
def test_checkpoint_round_trip_gives_identical_outputs(build, tmp_path: Path) -> None:
    module = module_for(*build())
    loaded = roundtrip(module, tmp_path / "model.ckpt")
    assert loaded.hparams.aspects == ASPECTS
    batch = loaded.tokenizer(TEXTS, padding="longest", return_tensors="pt")
    assert torch.equal(
        batch["input_ids"],
        module.tokenizer(TEXTS, padding="longest", return_tensors="pt")["input_ids"],
    )
    with torch.no_grad():
        expected = module(batch["input_ids"], batch["attention_mask"])
        actual = loaded(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.projections, expected.projections)


def test_learned_query_attention_equals_multihead_attention() -> None:
    """The reordered computation against torch's own attention, biases included, with padding."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, dropout=0.3, batch_first=True).double().eval()
    with torch.no_grad():
        attention.in_proj_bias.normal_()
        attention.out_proj.bias.normal_()
    queries = torch.randn(5, 16, dtype=torch.float64)
    tokens = torch.randn(3, 7, 16, dtype=torch.float64)
    padding = torch.arange(7) >= torch.tensor([[7], [4], [2]])  # (3, 7): True = padding
    expected, _ = attention(
        queries.expand(3, -1, -1), tokens, tokens, key_padding_mask=padding, need_weights=False
    )
    got = learned_query_attention(attention, queries, tokens, padding)
    torch.testing.assert_close(got, expected)
    attention.train()  # dropout on the attention weights, as torch's: the mean is unchanged
    draws = torch.stack(
        [learned_query_attention(attention, queries, tokens, padding) for _ in range(2000)]
    )
    torch.testing.assert_close(draws.mean(0), expected, atol=0.05, rtol=0)


def test_a_loaded_module_has_the_network_only(tmp_path: Path) -> None:
    """Loading for inference builds no loss, balancer or optimizer, whatever the file names."""
    module = module_for(*tiny_encoder())
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    checkpoint["hyper_parameters"]["loss"] = {"balancer": {"_target_": "builtins.exit"}}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    loaded = AspectSentimentModule.from_checkpoint(tmp_path / "model.ckpt")
    assert (loaded.focal, loaded.contrastive, loaded.balancer) == (None, None, None)
    assert not any(k.startswith("balancer.") for k in loaded.state_dict())
    with pytest.raises(RuntimeError, match="loaded for inference"):
        loaded.optimization(total_steps=10)


def test_prior_bias_init_starts_the_softmax_at_the_training_priors() -> None:
    labels = torch.tensor([[0, 1], [0, 0], [2, 0], [0, 3], [0, 0], [1, 0]])  # (N, A) classes
    priors = class_priors(labels, num_classes=4)
    # Aspect 0: absent 4, Positive 1, Negative 1, Neutral 0 of 6, each + 1 (add-one).
    torch.testing.assert_close(priors[0], torch.tensor([5.0, 2.0, 2.0, 1.0]) / 10)
    torch.manual_seed(0)
    tokenizer, encoder = tiny_encoder()
    net = AspectSentimentNet(
        encoder, 2, 4, projection_dim=8, attention_heads=2, class_priors=priors
    )
    torch.testing.assert_close(net.classifier_bias.detach().softmax(dim=-1), priors)
    batch = tokenizer(TEXTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        mean_softmax = net.eval()(batch["input_ids"], batch["attention_mask"]).logits.softmax(-1)
    # The classifier weights start near 0 (std 0.02; logits move by ~0.1 at width 32), so the
    # bias decides the first softmax: its mean is the priors, where a zero bias gives ~1/4 each.
    torch.testing.assert_close(mean_softmax.mean(dim=0), priors, atol=0.1, rtol=0)
    plain = AspectSentimentNet(encoder, 2, 4, projection_dim=8, attention_heads=2)
    with torch.no_grad():
        uniform = plain.eval()(batch["input_ids"], batch["attention_mask"]).logits.softmax(-1)
    assert (uniform.mean(dim=0) - priors).abs().max() > 0.2  # aspect 0 absent: 0.5 against ~0.25
    with pytest.raises(ValueError, match=r"head.class_priors has shape \(4,\), expected \(2, 4\)"):
        AspectSentimentNet(encoder, 2, 4, attention_heads=2, class_priors=[0.25] * 4)


def test_build_sets_the_bias_from_the_training_split(small_visfd: Path, tmp_path: Path) -> None:
    from conftest import TINY, compose_train

    from absa_lightning.train import build

    overrides = [*TINY, f"data.root={small_visfd}", "model.head.prior_bias_init=true"]
    datamodule, model = build(compose_train(overrides, tmp_path))
    priors = class_priors(datamodule.datasets["train"].labels, 4)
    torch.testing.assert_close(model.net.classifier_bias.detach().softmax(dim=-1), priors)
    # What rebuilds the network: the bias itself is a weight, in the checkpoint's state.
    assert not {"prior_bias_init", "class_priors"} & set(model.hparams.head)


def test_models_import_neither_the_data_nor_lightning_nor_hydra() -> None:
    """The import graph runs module -> models -> torch/transformers: models/ never reaches up
    into data/ (the n-gram hashing is handed to the tokenise path, as the tokenizer is)."""
    code = (
        "import sys, absa_lightning.models; "
        "print(sorted({m.split('.')[0] if not m.startswith('absa_lightning') else m "
        "for m in sys.modules if m.startswith(('absa_lightning.data', 'lightning', 'hydra'))}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
