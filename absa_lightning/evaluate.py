"""Evaluate on a split: run a checkpoint, `python eval.py ckpt_path=... data.test_split=test`,
or score a predictions file of `absa-predict`,
`python eval.py predictions=preds.jsonl data.test_split=test`.

A checkpoint brings its aspect list, polarities, tokenizer and encoder, never taken from the data.
A predictions file is scored against the split's gold labels over the aspect list that training
uses: `data.aspects`, else the sorted aspects of the training split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from absa_lightning import report
from absa_lightning.config import CONF_DIR
from absa_lightning.data import DataError, read_jsonl
from absa_lightning.data.datamodule import label_matrix
from absa_lightning.errors import AbsaUserError, check_arguments, reports_user_errors
from absa_lightning.metrics import AspectConfusionMatrix
from absa_lightning.module import AspectSentimentModule

log = logging.getLogger(__name__)


def existing_file(option: str, value: str) -> Path:
    path = Path(hydra.utils.to_absolute_path(value))
    if not path.is_file():
        raise AbsaUserError(f"no such file ({path})", f"{option}={value}", "check the path")
    return path


def run_checkpoint(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, float], dict[str, dict]]:
    """What was scored, the metrics and the per-aspect rows of `cfg.ckpt_path` on the split."""
    ckpt_path = existing_file("ckpt_path", cfg.ckpt_path)
    check_arguments(cfg.trainer, "trainer")
    model = AspectSentimentModule.from_checkpoint(ckpt_path)
    datamodule = instantiate(
        cfg.data, aspects=model.hparams.aspects, polarities=model.hparams.polarities
    )
    datamodule.set_tokenizer(model.tokenizer, ngrams=model.net.ngram_hashing)

    trainer: L.Trainer = instantiate(cfg.trainer, logger=False)
    metrics = report.scalars(trainer.test(model, datamodule=datamodule)[0])
    per_aspect = report.per_aspect_rows(model.hparams.aspects, model.test_per_aspect)
    return {"checkpoint": str(ckpt_path), "split": datamodule.test_split}, metrics, per_aspect


def score_predictions(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, float], dict[str, dict]]:
    """What was scored, the metrics and the per-aspect rows of `cfg.predictions` against the
    split's gold labels. The predictions must be of the split's comments, in its order."""
    path = existing_file("predictions", cfg.predictions)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")  # the aspect list, and the gold labels of data.test_split
    split, gold = datamodule.test_split, datamodule.datasets[datamodule.test_split]
    predicted = read_jsonl(path, datamodule.polarities)
    if len(predicted) != len(gold):
        raise AbsaUserError(
            f"{len(predicted)} comments, but the {split} split ({datamodule.paths[split]}) has "
            f"{len(gold)}",
            str(path),
            "predict on that file",
        )
    prepare = datamodule.preprocess or (lambda text: text)
    for i, (ex, gold_text) in enumerate(zip(predicted, gold.texts, strict=True)):
        if prepare(ex.text) != gold_text:
            problem = f"not comment {i + 1} of the {split} split, {gold_text!r}"
            raise DataError(path, ex.line, problem, ex.text)

    scores = AspectConfusionMatrix(len(datamodule.aspects), len(datamodule.polarities))
    labels, outside = label_matrix(predicted, datamodule.aspects, datamodule.polarities)
    if outside:
        row, aspect = next(iter(outside.items()))
        ex = predicted[row]
        raise DataError(path, ex.line, f"aspect {aspect!r} not in {datamodule.aspects}", ex.text)
    scores.update(labels, gold.labels)
    metrics = {f"test/{k}": float(v) for k, v in sorted(scores.compute().items())}
    per_aspect = report.per_aspect_rows(datamodule.aspects, scores.per_aspect())
    return {"predictions": str(path), "split": split}, metrics, per_aspect


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test metrics of `cfg.ckpt_path` or `cfg.predictions` on `cfg.data.test_split`, also written
    to `eval_metrics.json`."""
    if (cfg.ckpt_path is None) == (cfg.predictions is None):
        raise AbsaUserError(
            "give ckpt_path=<checkpoint> (to run it) or predictions=<file.jsonl> "
            "(absa-predict's output, to score it), not both"
        )
    scored = score_predictions if cfg.predictions is not None else run_checkpoint
    source, metrics, per_aspect = scored(cfg)
    report.print_per_aspect_table(per_aspect, title=f"{source['split']} split, per aspect")
    report.write_json(
        Path(cfg.output_dir) / "eval_metrics.json",
        {
            **source,
            "test": metrics,
            "per_aspect": per_aspect,
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
    )
    log.info("%s: %s", source["split"], {k: round(v, 4) for k, v in metrics.items()})
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
