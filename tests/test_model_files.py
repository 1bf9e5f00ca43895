"""A model file (checkpoint, exported folder) is data: loading one runs nothing it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from absa_lightning import AspectSentimentPredictor
from absa_lightning.data.preprocess import build_preprocess, preprocess_spec
from absa_lightning.errors import AbsaUserError
from absa_lightning.models import AspectSentimentNet
from absa_lightning.models.encoder import scratch_bert
from absa_lightning.module import AspectSentimentModule
from absa_lightning.predictor import load_predictor


def attacks(target: Path) -> list[dict]:
    """`preprocess` values that, instantiated, would write `target`."""
    return [
        {"_target_": "shutil.copyfile", "src": __file__, "dst": str(target)},
        {"_target_": "builtins.open", "file": str(target), "mode": "w"},
        {"_target_": "absa_lightning.data.preprocess.segment_words", "_args_": [str(target)]},
        {"name": "shutil.copyfile", "src": __file__, "dst": str(target)},
        "builtins.open",
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained model's exported folder (no training: the loading is what is tested)."""
    tokenizer, encoder = scratch_bert(
        ["pin trâu camera mờ", "giá rẻ"],
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
    )
    net = AspectSentimentNet(encoder, 2, 4, projection_dim=8, attention_heads=2)
    predictor = AspectSentimentPredictor(
        net,
        tokenizer,
        ["BATTERY", "CAMERA"],
        ["Positive", "Negative", "Neutral"],
        preprocess={"name": "normalize_unicode", "form": "NFC"},
        device="cpu",
    )
    return predictor.save_pretrained(tmp_path_factory.mktemp("export") / "model")


def test_an_export_keeps_its_preprocessing_by_name(exported: Path) -> None:
    config = json.loads((exported / "absa_config.json").read_text())
    assert config["preprocess"] == {"name": "normalize_unicode", "form": "NFC"}
    loaded = AspectSentimentPredictor.from_pretrained(exported, device="cpu")
    decomposed = "pin tr\u0061\u0302\u0300u"  # â + grave as combining marks
    assert loaded._preprocess(decomposed) == "pin trầu"


@pytest.mark.parametrize("attack", range(5))
def test_a_tampered_export_is_refused_and_writes_nothing(
    exported: Path, tmp_path: Path, attack: int
) -> None:
    target = tmp_path / "written"
    folder = tmp_path / "shared_model"
    folder.mkdir()
    for item in exported.iterdir():
        (folder / item.name).symlink_to(item)
    config = json.loads((exported / "absa_config.json").read_text())
    config["preprocess"] = attacks(target)[attack]
    (folder / "absa_config.json").unlink()
    (folder / "absa_config.json").write_text(json.dumps(config))

    with pytest.raises(AbsaUserError, match=r"absa_config.json: field 'preprocess'"):
        load_predictor(folder)
    assert not target.exists()


def test_an_export_with_a_foreign_head_setting_is_refused(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for item in exported.iterdir():
        (folder / item.name).symlink_to(item)
    config = json.loads((exported / "absa_config.json").read_text())
    config["head"]["_target_"] = "os.system"
    (folder / "absa_config.json").unlink()
    (folder / "absa_config.json").write_text(json.dumps(config))
    with pytest.raises(AbsaUserError, match=r"absa_config.json: field 'head'"):
        load_predictor(folder)


@pytest.mark.parametrize("attack", range(5))
def test_a_tampered_checkpoint_is_refused_and_writes_nothing(
    tiny_run: dict, tmp_path: Path, attack: int
) -> None:
    target = tmp_path / "written"
    checkpoint = torch.load(tiny_run["best_checkpoint"], weights_only=True)
    checkpoint["hyper_parameters"]["preprocess"] = attacks(target)[attack]
    torch.save(checkpoint, tmp_path / "shared.ckpt")

    field = r"shared.ckpt: field 'hyper_parameters.preprocess'"
    with pytest.raises(AbsaUserError, match=field):
        load_predictor(tmp_path / "shared.ckpt")  # absa-predict, absa-export, absa-serve
    with pytest.raises(AbsaUserError, match=field):
        AspectSentimentModule.from_checkpoint(tmp_path / "shared.ckpt")  # eval.py
    assert not target.exists()


def test_checkpoints_from_before_the_registry_still_load(tiny_run: dict, tmp_path: Path) -> None:
    checkpoint = torch.load(tiny_run["best_checkpoint"], weights_only=True)
    checkpoint["hyper_parameters"]["preprocess"] = {
        "_target_": "absa_lightning.data.preprocess.normalize_unicode",
        "_partial_": True,
        "form": "NFD",
    }
    torch.save(checkpoint, tmp_path / "old.ckpt")
    predictor = load_predictor(tmp_path / "old.ckpt")
    assert predictor.preprocess_config == {"name": "normalize_unicode", "form": "NFD"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", r"data.preprocess: unknown preprocessor 'nope'; use one of"),
        ({"name": "normalize_unicode", "form": "XYZ"}, r"form='XYZ'; normalize_unicode's form"),
        ({"name": "normalize_unicode", "width": 3}, r"unexpected keyword argument 'width'"),
        ({"name": "normalize_unicode", "form": ["NFC"]}, r"argument 'form' .* is a list"),
        (3, r"data.preprocess: a int, not a name"),
    ],
)
def test_bad_preprocess_settings_are_located(spec, message: str) -> None:
    with pytest.raises(AbsaUserError, match=message):
        preprocess_spec(spec)


def test_preprocess_by_name_with_arguments() -> None:
    assert preprocess_spec("normalize_unicode") == {"name": "normalize_unicode"}
    assert build_preprocess(None) is None
    nfd = build_preprocess({"name": "normalize_unicode", "form": "NFD"})
    assert nfd("ầ") == "a\u0302\u0300"


def test_the_recipe_in_a_checkpoint_is_a_record_never_built(tiny_run: dict, tmp_path: Path) -> None:
    """Loss, balancer, optimizer settings are kept for the record; loading builds none of them."""
    target = tmp_path / "written"
    checkpoint = torch.load(tiny_run["best_checkpoint"], weights_only=True)
    settings = checkpoint["hyper_parameters"]
    attack = attacks(target)[1]
    settings["loss"] = {**settings.get("loss", {}), "focal": attack, "contrastive": attack}
    settings["optimizer"] = {**attack, "_partial_": True}
    torch.save(checkpoint, tmp_path / "shared.ckpt")
    predictor = load_predictor(tmp_path / "shared.ckpt")
    assert predictor.predict(["pin trâu"])  # it loads and predicts
    AspectSentimentModule.from_checkpoint(tmp_path / "shared.ckpt")
    assert not target.exists()
