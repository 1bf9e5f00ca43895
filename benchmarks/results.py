"""What the benchmark reports: sections, targets, the machine, and the files it writes.

Each part of the benchmark (svm_baseline, quality, speed) returns a `Section`: one table
(`columns`, `rows`; the quality tables have a row per dataset and recipe), its `targets` and
`notes`. `write_results` writes them all, with `environment()`, as `<name>.md` (readable on
GitHub) and `<name>.json` into benchmarks/results/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
SETTINGS = Path(__file__).with_name("bench.yaml")
RESULTS_DIR = Path(__file__).with_name("results")
VERSIONED = ("torch", "lightning", "transformers", "scikit-learn")
# The test metrics every quality row reports (AspectConfusionMatrix' keys)
METRICS = ("aspect_f1", "pair_f1", "aspect_f1_macro", "pair_f1_macro", "polarity_acc")
COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le}


def load_settings(quick: bool, path: Path = SETTINGS) -> DictConfig:
    """benchmarks/bench.yaml, its `quick` block merged over the rest in quick mode."""
    settings = OmegaConf.load(path)
    quick_block = settings.pop("quick")
    return OmegaConf.merge(settings, quick_block) if quick else settings


@dataclass(frozen=True)
class MeanStd:
    """A metric over seeds: mean, sample standard deviation (None for one value), the values."""

    mean: float
    std: float | None
    values: tuple[float, ...]
    digits: int = 4  # decimals shown

    @classmethod
    def of(cls, values: Sequence[float], digits: int = 4) -> MeanStd:
        if not values:
            raise ValueError("MeanStd.of: no values")
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, tuple(values), digits)

    def __str__(self) -> str:
        mean = f"{self.mean:.{self.digits}f}"
        return mean if self.std is None else f"{mean} ± {self.std:.{self.digits}f}"


@dataclass(frozen=True)
class Target:
    """`value <comparison> target`, e.g. default pair_f1 >= SVM pair_f1 + 0.05."""

    name: str
    value: float
    comparison: str  # one of COMPARISONS
    target: float
    note: str = ""

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise ValueError(
                f"Target {self.name!r}: comparison {self.comparison!r} is not one of "
                f"{list(COMPARISONS)}"
            )

    @property
    def passed(self) -> bool:
        return COMPARISONS[self.comparison](self.value, self.target)

    @property
    def margin(self) -> float:
        """How far past the target the value lies (negative: short of it)."""
        return self.target - self.value if self.comparison == "<=" else self.value - self.target

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed, "margin": self.margin}


@dataclass
class Section:
    """One table of the report; `rows` map column names to cells (missing cells print "–")."""

    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)  # raw numbers, for the JSON

    def row(self, **cells: Any) -> dict[str, Any]:
        """The first row with these cells, e.g. `row(dataset="mams", row="default")`."""
        for row in self.rows:
            if all(row.get(key) == value for key, value in cells.items()):
                return row
        raise KeyError(f"section {self.title!r} has no row with {cells}")

    def as_dict(self) -> dict[str, Any]:
        """For JSON: targets with their verdict (the cells' MeanStd go through `_json_default`)."""
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "targets": [t.as_dict() for t in self.targets],
            "notes": self.notes,
            "measurements": self.measurements,
        }


def format_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"  # F1s to 4 decimals, seconds to 4 digits
    return str(value)


def code_version() -> dict[str, Any]:
    """The git revision, whether tracked files differ from it, and a hash of that difference."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout

    diff = git("diff", "HEAD")
    return {
        "git_revision": git("rev-parse", "HEAD").strip(),
        "dirty": bool(diff),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


def _proc_field(path: str, key: str) -> str:
    """`key: value` from a /proc file (Linux); "" elsewhere or when absent."""
    lines = Path(path).read_text().splitlines() if Path(path).is_file() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")


def environment(seeds: Sequence[int], quick: bool) -> dict[str, Any]:
    """The machine and software the numbers come from."""
    mem_kb = int(_proc_field("/proc/meminfo", "MemTotal").removesuffix(" kB") or 0)
    versions = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "seeds": list(seeds),
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "versions": versions,
        **code_version(),
    }


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(format_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def targets_table(targets: Sequence[Target]) -> str:
    columns = ["target", "value", "needed", "margin", "result", "note"]
    rows = [
        {
            "target": t.name,
            "value": t.value,
            "needed": f"{t.comparison} {format_cell(t.target)}",
            "margin": f"{t.margin:+.3f}",
            "result": "PASS" if t.passed else "MISS",
            "note": t.note,
        }
        for t in targets
    ]
    return markdown_table(columns, rows)


def section_markdown(section: Section) -> str:
    """Its title, table and notes (what the benchmark prints as it goes, and writes)."""
    parts = [f"## {section.title}", ""]
    if section.rows:
        parts += [markdown_table(section.columns, section.rows), ""]
    parts += [f"- {note}" for note in section.notes]
    return "\n".join([*parts, ""] if section.notes else parts)


def markdown(
    sections: Sequence[Section], env: dict[str, Any], total_seconds: float, title: str
) -> str:
    parts = [f"# {title}", ""]
    parts += [section_markdown(section) for section in sections]
    targets = [t for s in sections for t in s.targets]
    if targets:
        parts += ["## Targets", "", targets_table(targets), ""]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    dirty = " (with uncommitted changes)" if env["dirty"] else ""
    parts += [
        "## Environment",
        "",
        f"- {env['date']}, mode {env['mode']}, seeds {env['seeds']}, "
        f"total {total_seconds / 60:.1f} min",
        f"- {env['cpu']}, {env['cpu_cores']} cores, {env['torch_threads']} torch threads, "
        f"{env['ram_gib']} GiB RAM, {env['platform']}",
        f"- {versions}",
        f"- git {env['git_revision']}{dirty}",
        "",
    ]
    return "\n".join(parts)


def _json_default(value: Any) -> Any:
    if isinstance(value, MeanStd):
        return dataclasses.asdict(value)
    raise TypeError(f"not serialisable in the benchmark's JSON: {type(value).__name__}")


def write_results(
    sections: Sequence[Section],
    env: dict[str, Any],
    total_seconds: float,
    name: str,
    folder: Path = RESULTS_DIR,
) -> tuple[Path, Path]:
    """`<folder>/<name>.md` and `<name>.json`; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    md_path, json_path = folder / f"{name}.md", folder / f"{name}.json"
    title = f"Benchmark ({env['mode']})"
    md_path.write_text(markdown(sections, env, total_seconds, title), encoding="utf-8")
    content = {
        "environment": env,
        "total_seconds": total_seconds,
        "sections": [s.as_dict() for s in sections],
    }
    json_path.write_text(
        json.dumps(content, indent=2, ensure_ascii=False, default=_json_default) + "\n",
        encoding="utf-8",
    )
    return md_path, json_path
