"""absa-export: the self-contained folder, loaded offline, and the ONNX graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict_cli import config

from absa_lightning import AspectSentimentPredictor
from absa_lightning.errors import AbsaUserError
from absa_lightning.export import ONNX_FILE, check_onnx, export
from absa_lightning.predict import parser, predict

COMMENTS = ["Pin trâu, camera hơi mờ", "Máy đẹp 😍 giá rẻ", "ok", "Giao hàng nhanh 中文 " * 60]


@pytest.fixture(scope="module")
def exported(tiny_run: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model"
    return export(config("export", f"ckpt={tiny_run['best_checkpoint']}", f"out={out}"))


def test_export_loads_offline_with_identical_probabilities(
    tiny_run: dict, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert {p.name for p in (exported / "encoder").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    saved = json.loads((exported / "absa_config.json").read_text())
    assert saved["aspects"] == tiny_run["aspects"]
    assert saved["training"]["loss"]["focal_weight"] == 0.8

    original = AspectSentimentPredictor.from_checkpoint(tiny_run["best_checkpoint"])
    loaded = AspectSentimentPredictor.from_pretrained(exported)
    assert (loaded.aspects, loaded.polarities, loaded.max_length) == (
        original.aspects,
        original.polarities,
        original.max_length,
    )
    expected, expected_cut = original.predict_proba(COMMENTS)
    got, got_cut = loaded.predict_proba(COMMENTS)
    assert torch.equal(got, expected)
    assert torch.equal(got_cut, expected_cut)


def test_exported_threshold_is_the_default_and_can_be_replaced(
    tiny_run: dict, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    export(config("export", f"ckpt={tiny_run['best_checkpoint']}", f"out={out}", "threshold=0.0"))
    everything = AspectSentimentPredictor.from_pretrained(out).predict(COMMENTS[:2])
    assert all(len(p.aspects) == len(tiny_run["aspects"]) for p in everything)
    argmax = AspectSentimentPredictor.from_pretrained(out, threshold=None).predict(COMMENTS[:2])
    plain = AspectSentimentPredictor.from_checkpoint(tiny_run["best_checkpoint"], threshold=None)
    assert argmax == plain.predict(COMMENTS[:2])


def test_absa_predict_takes_the_exported_folder(exported: Path, tiny_run: dict) -> None:
    from_folder = predict(parser().parse_args(["--ckpt", str(exported), "Pin trâu, camera mờ"]))
    from_ckpt = predict(
        parser().parse_args(["--ckpt", tiny_run["best_checkpoint"], "Pin trâu, camera mờ"])
    )
    assert from_folder == from_ckpt


def test_export_refuses_a_folder_in_use_and_unknown_formats(
    tiny_run: dict, exported: Path, tmp_path: Path
) -> None:
    ckpt = f"ckpt={tiny_run['best_checkpoint']}"
    with pytest.raises(AbsaUserError, match="not empty"):
        export(config("export", ckpt, f"out={exported}"))
    with pytest.raises(AbsaUserError, match="format=tflite: not one of"):
        export(config("export", ckpt, f"out={tmp_path / 'x'}", "format=tflite"))


@pytest.mark.slow
def test_onnx_matches_pytorch(tiny_run: dict, tmp_path: Path) -> None:
    """ONNX Runtime on another batch size and length than the graph was traced with."""
    import onnxruntime

    out = export(
        config("export", f"ckpt={tiny_run['best_checkpoint']}", f"out={tmp_path}", "format=onnx")
    )
    predictor = AspectSentimentPredictor.from_pretrained(out)
    batch, _ = predictor.encode(COMMENTS)
    session = onnxruntime.InferenceSession(str(out / ONNX_FILE))
    (got,) = session.run(None, {k: batch[k].numpy() for k in ("input_ids", "attention_mask")})
    expected, _ = predictor.predict_proba(COMMENTS)
    assert got.shape == (len(COMMENTS), len(predictor.aspects), 4)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)

    with pytest.raises(RuntimeError, match="differ from PyTorch's"):
        check_onnx(predictor, out / ONNX_FILE, COMMENTS, tolerance=-1.0)
