"""Export a trained model: `absa-export ckpt=... out=DIR [format=onnx]`.

`DIR` is what `AspectSentimentPredictor.from_pretrained(DIR)` loads offline: `encoder/` (the
encoder and its tokenizer, Hugging Face `save_pretrained` form), `heads.safetensors` and
`absa_config.json` (aspects, polarities, max_length, threshold, training hyper-parameters).
`format=onnx` adds `model.onnx`: (input_ids, attention_mask[, ngram_ids]) -> probabilities
(B, A, C), batch and sequence dynamic (`ngram_ids`: a model with the n-gram branch, 0-padded),
checked against PyTorch with ONNX Runtime before the export counts as done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from absa_lightning.config import CONF_DIR
from absa_lightning.errors import AbsaUserError, reports_user_errors
from absa_lightning.models import AspectSentimentNet
from absa_lightning.predictor import AspectSentimentPredictor, load_predictor

log = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"
FORMATS = ("pretrained", "onnx")


class Probabilities(nn.Module):
    """The network as ONNX sees it: token ids and mask (and, with an n-gram branch, the hashed
    n-gram ids, 0-padded) in, (B, A, C) softmax out."""

    def __init__(self, net: AspectSentimentNet):
        super().__init__()
        self.net = net

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        ngram_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.net(input_ids, attention_mask, ngram_ids).logits.softmax(dim=-1)


def export_onnx(
    predictor: AspectSentimentPredictor,
    path: str | Path,
    check_texts: Sequence[str],
    tolerance: float = 1e-4,
    opset: int = 18,
) -> float:
    """Write the ONNX graph and check it with `check_onnx`: returns the largest difference."""
    if len(check_texts) < 2:
        raise ValueError("onnx.check_texts: give at least two comments of different lengths")
    model = Probabilities(predictor.net).cpu().eval()
    # Traced on the first two comments, checked on all: another batch size and length.
    example, _ = predictor.encode(check_texts[:2])
    names = list(example)  # input_ids, attention_mask[, ngram_ids]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic_shapes = {
        "input_ids": {0: batch, 1: sequence},
        "attention_mask": {0: batch, 1: sequence},
        "ngram_ids": {0: batch, 1: torch.export.Dim("ngrams")},
    }
    torch.onnx.export(
        model,
        tuple(example[name] for name in names),
        str(path),
        input_names=names,
        output_names=["probabilities"],
        dynamic_shapes={name: dynamic_shapes[name] for name in names},
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    return check_onnx(predictor, path, check_texts, tolerance)


def check_onnx(
    predictor: AspectSentimentPredictor,
    path: str | Path,
    check_texts: Sequence[str],
    tolerance: float = 1e-4,
) -> float:
    """The largest difference between ONNX Runtime's probabilities and PyTorch's on the texts and
    on a comment cut to `max_length`; over `tolerance` it raises."""
    import onnxruntime

    longest = " ".join(check_texts) * predictor.max_length  # cut to max_length tokens
    check, _ = predictor.encode([*check_texts, longest])
    model = Probabilities(predictor.net).cpu().eval()
    with torch.inference_mode():
        expected = model(**check)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {name: x.numpy() for name, x in check.items()})
    difference = float((torch.from_numpy(got) - expected).abs().max())
    if not difference <= tolerance:
        raise RuntimeError(
            f"{path}: ONNX Runtime's probabilities differ from PyTorch's by {difference:.2e} "
            f"(onnx.tolerance={tolerance})"
        )
    return difference


def export(cfg: DictConfig) -> Path:
    """`cfg.ckpt` -> the folder `cfg.out`, with `model.onnx` when `cfg.format` is onnx."""
    if cfg.format not in FORMATS:
        raise AbsaUserError(f"format={cfg.format}: not one of {list(FORMATS)}")
    options = {"device": "cpu"}
    if cfg.threshold is not None:
        options["threshold"] = cfg.threshold
    predictor = load_predictor(hydra.utils.to_absolute_path(cfg.ckpt), **options)
    out = Path(hydra.utils.to_absolute_path(cfg.out))
    if out.exists() and any(out.iterdir()):
        raise AbsaUserError(
            "the folder exists and is not empty", f"out={cfg.out}", "choose a new folder"
        )
    predictor.save_pretrained(out)
    log.info("exported %s -> %s", cfg.ckpt, out)
    if cfg.format == "onnx":
        difference = export_onnx(predictor, out / ONNX_FILE, **cfg.onnx)
        log.info(
            "%s: ONNX Runtime matches PyTorch within %.1e", out / ONNX_FILE, max(difference, 0)
        )
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
