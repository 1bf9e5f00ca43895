"""Training and prediction speed: the lead's part of the benchmark (issue 4), still to come."""

from __future__ import annotations

from pathlib import Path

from benchmarks.results import Section


def run(data_dir: Path, quick: bool) -> Section:
    raise NotImplementedError("benchmarks/speed.py is not written yet")
