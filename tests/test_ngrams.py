"""The hashed n-gram branch: stable ids, the branch's logits, and a model with the branch that
predicts the same from memory, a checkpoint, an exported folder and ONNX."""

from __future__ import annotations

import binascii
import copy
import json
import os
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONF_DIR, QUIET, TINY, compose_train
from omegaconf import OmegaConf, open_dict

from absa_lightning import AspectSentimentPredictor
from absa_lightning.data.batching import pad_ngram_ids
from absa_lightning.errors import AbsaUserError
from absa_lightning.models import AspectSentimentNet, HashedNgramBranch, scratch_bert
from absa_lightning.models.ngrams import NgramHashing
from absa_lightning.module import AspectSentimentModule
from absa_lightning.train import build

TEXTS = ["Pin trâu, camera hơi mờ", "MÁY ĐẸP 😍 giá rẻ", "ok", ""]
KNOWN = "Pin trâu"  # NgramHashing(buckets=1000)'s ids, as CRC-32 gives them anywhere
# pin, trâu, "pin trâu", then <p pi in n> <pi pin in> ... <trâu>'s character n-grams
KNOWN_IDS = [697, 260, 438, 921, 898, 187, 306, 904, 897, 173, 353, 170, 570, 274, 858, 23, 393]
KNOWN_IDS += [148, 384, 917, 87, 199, 909, 471, 559, 890, 889]


def test_ids_are_stable_across_processes() -> None:
    hashing = NgramHashing(buckets=1000)
    assert hashing(KNOWN).tolist() == KNOWN_IDS
    script = (
        "from absa_lightning.models.ngrams import NgramHashing;"
        f"print(NgramHashing(buckets=1000)({KNOWN!r}).tolist())"
    )
    for salt in ("1", "2"):  # Python's str hash would differ between these
        env = {**os.environ, "PYTHONHASHSEED": salt}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == str(KNOWN_IDS)


def naive_ngram_ids(text: str, buckets: int, word_orders, char_orders) -> Counter:
    """The n-gram ids as a multiset, the other way round: words split by hand on non-word
    characters, windows by zip, CRC-32 from binascii."""
    text = unicodedata.normalize("NFC", text).lower()
    words, word = [], ""
    for ch in text:
        if ch.isalnum() or ch == "_" or unicodedata.category(ch).startswith("M"):
            word += ch
        elif word:
            words.append(word)
            word = ""
    if word:
        words.append(word)
    grams = []
    for n in word_orders:
        grams += ["w" + " ".join(w) for w in zip(*(words[i:] for i in range(n)), strict=False)]
    for w in words:
        marked = "<" + w + ">"
        for n in char_orders:
            grams += ["c" + "".join(c) for c in zip(*(marked[i:] for i in range(n)), strict=False)]
    return Counter(1 + binascii.crc32(g.encode()) % buckets for g in grams)


@pytest.mark.parametrize("orders", [((1, 2), (2, 3, 4, 5)), ((1,), ()), ((), (3,)), ((1, 3), (1,))])
def test_ids_equal_a_naive_reference(orders) -> None:
    word_orders, char_orders = orders
    hashing = NgramHashing(buckets=5003, word_orders=word_orders, char_orders=char_orders)
    decomposed = unicodedata.normalize("NFD", "Màn hình đẹp, pin pin trâu!!")
    for text in [*TEXTS, decomposed, "a b a b"]:
        ids = hashing(text)
        assert ids.dtype == torch.long
        assert Counter(ids.tolist()) == naive_ngram_ids(text, 5003, word_orders, char_orders)
        assert all(1 <= i <= 5003 for i in ids.tolist())
    # NFC and case folded before hashing: the same ids however the letters were typed.
    assert torch.equal(hashing(decomposed), hashing("MÀN HÌNH ĐẸP, PIN PIN TRÂU!!"))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"model\.ngrams\.mode"):
        HashedNgramBranch(2, 4, buckets=10, mode="max")
    with pytest.raises(ValueError, match=r"model\.ngrams\.buckets"):
        HashedNgramBranch(2, 4, buckets=0)
    with pytest.raises(ValueError, match=r"model\.ngrams\.max_words"):
        HashedNgramBranch(2, 4, buckets=10, max_words=0)
    with pytest.raises(ValueError, match="orders"):
        HashedNgramBranch(2, 4, buckets=10, word_orders=[], char_orders=[])


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_branch_logits_equal_a_loop_reference(mode: str) -> None:
    torch.manual_seed(0)
    aspects, classes, buckets = 3, 4, 50
    branch = HashedNgramBranch(aspects, classes, buckets=buckets, mode=mode, dropout=0.5).eval()
    assert not branch.weight.any()  # zero-initialised: neutral at the start
    torch.nn.init.normal_(branch.weight)
    lengths = [5, 0, 1, 9]  # a comment with no n-grams gets zero logits
    ids = pad_ngram_ids([torch.randint(1, buckets + 1, (n,)) for n in lengths])
    got = branch(ids)
    assert got.shape == (len(lengths), aspects, classes)
    for b, n in enumerate(lengths):
        rows = [branch.weight[i] for i in ids[b, :n].tolist()]
        total = torch.stack(rows).sum(0) if rows else torch.zeros(aspects * classes)
        expected = total / max(n, 1) if mode == "mean" else total
        torch.testing.assert_close(got[b], expected.view(aspects, classes))


def test_branch_dropout_drops_ngrams_in_training_only() -> None:
    torch.manual_seed(0)
    branch = HashedNgramBranch(1, 1, buckets=10, mode="sum", dropout=0.5)
    torch.nn.init.ones_(branch.weight)  # a comment's logit counts its kept n-grams
    ids = torch.randint(1, 11, (2000, 40))
    kept = branch.train()(ids).flatten()
    assert 0.45 * 40 < kept.mean() < 0.55 * 40
    assert torch.equal(branch.eval()(ids).flatten(), torch.full((2000,), 40.0))


def tiny_encoder():
    return scratch_bert(TEXTS, vocab_size=50, hidden_size=16, num_layers=1, num_heads=2)


def test_a_zero_branch_leaves_the_network_unchanged() -> None:
    tokenizer, encoder = tiny_encoder()
    torch.manual_seed(0)
    plain = AspectSentimentNet(encoder, 3, 4, projection_dim=8, attention_heads=2).eval()
    branch = HashedNgramBranch(3, 4, buckets=100)
    wide = AspectSentimentNet(
        copy.deepcopy(encoder), 3, 4, projection_dim=8, attention_heads=2, ngrams=branch
    ).eval()
    missing, unexpected = wide.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["ngrams.weight"] and not unexpected
    assert not any(k.startswith("ngrams") for k in plain.state_dict())
    assert plain.ngram_hashing is None and plain.ngram_parameter_groups() == []
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    inputs = (encoded["input_ids"], encoded["attention_mask"])
    ngram_ids = pad_ngram_ids([branch.hashing(t) for t in TEXTS])
    torch.testing.assert_close(wide(*inputs, ngram_ids).logits, plain(*inputs).logits)
    with pytest.raises(ValueError, match="pass the batch's ngram_ids"):
        wide(*inputs)
    # The branch trains at its own lr, apart from the heads.
    (group,) = wide.ngram_parameter_groups()
    assert group["lr"] == branch.lr and group["params"] == [branch.weight]
    assert all(p is not branch.weight for p in wide.head_parameters())


@pytest.fixture(scope="module")
def trained_with_branch(small_visfd: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny model with the branch, trained in memory for two epochs, and its checkpoint."""
    out = tmp_path_factory.mktemp("ngram_run")
    cfg = compose_train([*TINY, *QUIET, f"data.root={small_visfd}", "trainer.max_epochs=2"], out)
    with open_dict(cfg):  # model=tiny keeps the branch off (fast tests): on here, small
        cfg.model.ngrams = OmegaConf.load(CONF_DIR / "model/ngrams/hashed.yaml")
        cfg.model.ngrams.buckets = 4096
    L.seed_everything(0)
    datamodule, module = build(cfg)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    ckpt = out / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return datamodule, module.eval(), ckpt


@pytest.mark.slow
def test_checkpoint_and_export_predict_as_the_model_in_memory(
    trained_with_branch, tmp_path: Path
) -> None:
    datamodule, module, ckpt = trained_with_branch
    assert module.net.ngrams.weight.abs().sum() > 0  # the branch has learned something
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["ngram_ids"].shape[0] == batch["input_ids"].shape[0]
    with torch.inference_mode():
        in_memory = module(batch["input_ids"], batch["attention_mask"], batch["ngram_ids"])
    expected = in_memory.logits.softmax(dim=-1)
    texts = [datamodule.datasets["test"].texts[i] for i in batch["index"].tolist()]

    from_ckpt = AspectSentimentPredictor.from_checkpoint(ckpt, device="cpu")
    assert from_ckpt.net.ngrams.settings == module.net.ngrams.settings
    got, _ = from_ckpt.predict_proba(texts)
    torch.testing.assert_close(got, expected)

    folder = from_ckpt.save_pretrained(tmp_path / "exported")
    exported = AspectSentimentPredictor.from_pretrained(folder, device="cpu")
    assert torch.equal(exported.predict_proba(texts)[0], got)

    # A model file's n-gram settings are checked before anything is built.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["ngrams"]["mode"] = "os.system"
    torch.save(state, tmp_path / "bad.ckpt")
    with pytest.raises(AbsaUserError, match=r"hyper_parameters\.ngrams"):
        AspectSentimentModule.from_checkpoint(tmp_path / "bad.ckpt")
    config_path = folder / "absa_config.json"
    config = json.loads(config_path.read_text())
    config["ngrams"]["buckets"] = "many"
    config_path.write_text(json.dumps(config))
    with pytest.raises(AbsaUserError, match="field 'ngrams'"):
        AspectSentimentPredictor.from_pretrained(folder)
    config["ngrams"]["buckets"] = exported.net.ngrams.hashing.buckets
    config_path.write_text(json.dumps(config))

    pytest.importorskip("onnxruntime")
    from absa_lightning.export import export_onnx

    assert export_onnx(exported, folder / "model.onnx", texts) <= 1e-4


@pytest.mark.slow
def test_eval_scores_a_checkpoint_with_the_branch_as_the_model_in_memory(
    trained_with_branch, small_visfd: Path, tmp_path: Path
) -> None:
    """eval.py gives the data module the checkpoint's n-gram hashing, as train.py does."""
    from hydra import compose, initialize_config_dir

    from absa_lightning.evaluate import evaluate

    datamodule, module, ckpt = trained_with_branch
    in_memory = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    expected = in_memory.test(module, datamodule=datamodule, verbose=False)[0]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "eval",
            [
                f"ckpt_path={ckpt}",
                f"data.root={small_visfd}",
                f"output_dir={tmp_path}",
                *QUIET[1:],
            ],
        )
    scores = evaluate(cfg)
    assert scores["test/pair_f1"] == pytest.approx(expected["test/pair_f1"], abs=1e-6)
    assert scores["test/aspect_f1"] == pytest.approx(expected["test/aspect_f1"], abs=1e-6)


def test_a_checkpoint_without_the_branch_has_none(tiny_run: dict) -> None:
    module = AspectSentimentModule.from_checkpoint(tiny_run["best_checkpoint"])
    assert module.hparams["ngrams"] is None and module.net.ngrams is None
    predictor = AspectSentimentPredictor.from_checkpoint(tiny_run["best_checkpoint"])
    inputs, _ = predictor.encode(TEXTS[:2])
    assert set(inputs) == {"input_ids", "attention_mask"}
