"""What a run leaves for people: the per-aspect table on the console and `metrics.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

LOSS_KEYS = ("focal_loss", "contrastive_loss", "loss")


def scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Tensor-valued metrics -> floats, keeping those whose name starts with `prefix`."""
    return {k: float(v) for k, v in sorted(metrics.items()) if k.startswith(prefix)}


def final_losses(callback_metrics: dict[str, Any]) -> dict[str, float]:
    """Last epoch means of both losses and their sum, train and val, under plain names."""
    found = {}
    for stage, suffix in (("train", "_epoch"), ("val", "")):
        for key in LOSS_KEYS:
            value = callback_metrics.get(f"{stage}/{key}{suffix}")
            if value is not None:
                found[f"{stage}/{key}"] = float(value)
    return found


def per_aspect_rows(aspects: list[str], per_aspect: dict[str, torch.Tensor]) -> dict[str, dict]:
    columns = {k: v.tolist() for k, v in per_aspect.items()}
    return {a: {k: values[i] for k, values in columns.items()} for i, a in enumerate(aspects)}


def print_per_aspect_table(rows: dict[str, dict], title: str) -> None:
    """Detection (aspect mentioned?) and pair (aspect and polarity) scores, one row an aspect."""
    columns = {
        "aspect_precision": "P",
        "aspect_recall": "R",
        "aspect_f1": "F1",
        "pair_precision": "pair P",
        "pair_recall": "pair R",
        "pair_f1": "pair F1",
        "support": "gold",
    }
    table = Table(title=f"{title}: detection P/R/F1, pair P/R/F1, gold mentions")
    table.add_column("aspect", no_wrap=True)
    for header in columns.values():
        table.add_column(header, justify="right", no_wrap=True)
    for aspect, row in rows.items():
        cells = (str(row[k]) if k == "support" else f"{row[k]:.3f}" for k in columns)
        table.add_row(aspect, *cells)
    Console().print(table)


def write_json(path: str | Path, content: dict[str, Any]) -> None:
    Path(path).write_text(
        json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
