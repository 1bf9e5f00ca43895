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
    table = Table(title=title)
    table.add_column("aspect")
    names = [
        "aspect_precision",
        "aspect_recall",
        "aspect_f1",
        "pair_precision",
        "pair_recall",
        "pair_f1",
        "support",
    ]
    for name in names:
        table.add_column(name.replace("_", " "), justify="right")
    for aspect, row in rows.items():
        table.add_row(aspect, *(f"{row[n]:.3f}" if n != "support" else str(row[n]) for n in names))
    Console().print(table)


def write_json(path: str | Path, content: dict[str, Any]) -> None:
    Path(path).write_text(
        json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
