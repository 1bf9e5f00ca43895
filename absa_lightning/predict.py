"""Predict with a trained model: `absa-predict ckpt=... text="..."` prints a table;
`absa-predict ckpt=... input=comments.csv output=predictions.jsonl` writes one record a comment.

The records are the JSON Lines that `data=jsonl` training reads, with probabilities beside each
label and two more fields: `truncated` and `line` (where the comment starts in the input).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from absa_lightning.config import CONF_DIR
from absa_lightning.data.comments import Comments
from absa_lightning.predictor import CommentPrediction, load_predictor

log = logging.getLogger(__name__)
POLARITY_STYLES = {"positive": "green", "negative": "red", "neutral": "yellow"}


def read_comments(path: Path, readers: DictConfig) -> Comments:
    """The comments of `path`, read by the reader configured for its suffix."""
    if not path.is_file():
        raise FileNotFoundError(f"input={path}: no such file")
    kind = path.suffix.lstrip(".").lower()
    if kind not in readers:
        raise ValueError(f"input={path}: unknown suffix {path.suffix!r} (readers: {list(readers)})")
    return instantiate(readers[kind])(path)


def write_jsonl(path: Path, predictions: Sequence[CommentPrediction], lines: Sequence[int]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for prediction, line in zip(predictions, lines, strict=True):
            record = {**prediction.to_record(), "line": line}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def print_table(predictions: Sequence[CommentPrediction]) -> None:
    table = Table(title="P(pol.) = P(polarity | mentioned), P(mentioned) = P(aspect mentioned)")
    for header in ("comment", "aspect", "polarity", "P(pol.)", "P(mentioned)"):
        table.add_column(header, justify="right" if header.startswith("P(") else "left")
    for prediction in predictions:
        text = escape(prediction.text) + (" [dim](truncated)[/dim]" if prediction.truncated else "")
        if not prediction.aspects:
            table.add_row(text, "[dim]none[/dim]", "", "", "")
        for i, a in enumerate(prediction.aspects):
            style = POLARITY_STYLES.get(a.polarity.lower(), "bold")
            table.add_row(
                text if i == 0 else "",
                escape(a.aspect),
                f"[{style}]{a.polarity}[/{style}]",
                f"{a.polarity_probability:.3f}",
                f"{a.mentioned_probability:.3f}",
            )
        table.add_section()
    Console().print(table)


def predict(cfg: DictConfig) -> list[CommentPrediction]:
    """`cfg.text` or the comments of `cfg.input`; written to `cfg.output` or printed."""
    if (cfg.text is None) == (cfg.input is None):
        raise ValueError('give either text="a comment" or input=FILE (csv, jsonl or txt)')
    options = {"batch_size": cfg.batch_size, "device": cfg.device}
    if cfg.threshold is not None:  # else the checkpoint's argmax, or the exported threshold
        options["threshold"] = cfg.threshold
    predictor = load_predictor(hydra.utils.to_absolute_path(cfg.ckpt), **options)

    if cfg.text is not None:
        comments = Comments()
        comments.add(1, str(cfg.text))
    else:
        comments = read_comments(Path(hydra.utils.to_absolute_path(cfg.input)), cfg.readers)
        if comments.blank_lines:
            shown = ", ".join(map(str, comments.blank_lines[:10]))
            more = "…" if len(comments.blank_lines) > 10 else ""
            log.warning(
                "%s: left out %d blank comment(s), line(s) %s%s",
                cfg.input,
                len(comments.blank_lines),
                shown,
                more,
            )
    predictions = predictor.predict(comments.texts, progress=cfg.progress and cfg.input is not None)
    truncated = sum(p.truncated for p in predictions)
    if truncated:
        log.warning(
            "%d comment(s) longer than %d tokens: only their start was read",
            truncated,
            predictor.max_length,
        )
    if cfg.output is None:
        print_table(predictions)
    else:
        out = Path(hydra.utils.to_absolute_path(cfg.output))
        write_jsonl(out, predictions, comments.lines)
        log.info("%d predictions -> %s", len(predictions), out)
    return predictions


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
