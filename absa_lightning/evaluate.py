"""Evaluate a checkpoint on a split: `python eval.py ckpt_path=... data.split=test`.

The aspect list, polarities, tokenizer and encoder come from the checkpoint, never from the data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from absa_lightning import report
from absa_lightning.module import AspectSentimentModule

log = logging.getLogger(__name__)
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # the repository's conf/


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test metrics of `cfg.ckpt_path` on `cfg.data.split`, also written to `eval_metrics.json`."""
    ckpt_path = Path(hydra.utils.to_absolute_path(cfg.ckpt_path))
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file ({ckpt_path})")
    model = AspectSentimentModule.from_checkpoint(ckpt_path)
    datamodule = instantiate(
        cfg.data, aspects=model.hparams.aspects, polarities=model.hparams.polarities
    )
    datamodule.set_tokenizer(model.tokenizer)

    trainer: L.Trainer = instantiate(cfg.trainer, logger=False)
    metrics = report.scalars(trainer.test(model, datamodule=datamodule)[0])
    per_aspect = report.per_aspect_rows(model.hparams.aspects, model.test_per_aspect)
    report.print_per_aspect_table(per_aspect, title=f"{datamodule.split} split, per aspect")

    out = Path(cfg.output_dir) / "eval_metrics.json"
    report.write_json(
        out,
        {
            "checkpoint": str(ckpt_path),
            "split": datamodule.split,
            "test": metrics,
            "per_aspect": per_aspect,
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
    )
    log.info("%s: %s", datamodule.split, {k: round(v, 4) for k, v in metrics.items()})
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
