"""The summary of a sweep: one row a job, best `val/pair_f1` first, and F1 against each swept key.

`SweepSummary` (a Hydra callback, conf/train.yaml) writes it into the sweep folder at the end of a
multirun; `absa-summary <folder>` rebuilds it from any sweep folder:

    summary.csv   every column, full precision
    summary.md    the same table, the best job and its overrides to paste, the plot
    summary.png   val and test pair F1 against each swept numeric key, one panel a key
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from omegaconf import DictConfig
from rich import box
from rich.console import Console
from rich.table import Table

from absa_lightning.errors import AbsaUserError, printable

SORT_METRIC = "val/pair_f1"
F1_METRICS = ("val/pair_f1", "val/aspect_f1", "test/pair_f1", "test/aspect_f1")
PLOTTED_METRICS = {"val/pair_f1": ("o", "-"), "test/pair_f1": ("x", "--")}  # marker, line style
FINAL_LOSSES = (
    "train/focal_loss",
    "train/contrastive_loss",
    "val/focal_loss",
    "val/contrastive_loss",
)
WEIGHTS = ("focal_weight", "contrastive_weight")
ERROR_FILE = "error.txt"  # a failed job's traceback, written by SweepSummary.on_job_end
MAX_LINES = 8  # more groups than this in a panel (a random search): points, no lines


@dataclass
class Job:
    """One job folder of a sweep.

    status: `ok` (metrics.json read), `failed` (the job raised: error.txt; or metrics.json is
    unreadable) or `missing` (no metrics.json: still running, or killed).
    """

    name: str
    overrides: list[str]  # as typed: `loss.focal_weight=0.8`, `~callbacks.early_stopping`
    status: str
    metrics: dict[str, Any]
    error: str = ""

    def override_values(self) -> dict[str, str]:
        """key (with its `+`/`~` prefix) -> value as typed; a deletion's value is empty."""
        values = {}
        for line in self.overrides:
            key, _, value = line.partition("=")  # a key never holds `=`, a value may
            values[key] = value
        return values


def read_overrides(path: Path) -> list[str]:
    overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise AbsaUserError(
            f"{path}: expected a list of overrides such as 'loss.focal_weight=0.8', "
            f"got {overrides!r}"
        )
    return overrides


def read_job(folder: Path) -> Job:
    overrides = read_overrides(folder / ".hydra" / "overrides.yaml")
    metrics_path, error_path = folder / "metrics.json", folder / ERROR_FILE
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:  # the job was killed while writing it
            return Job(folder.name, overrides, "failed", {}, f"{metrics_path.name}: {error}")
        if not isinstance(metrics, dict):
            return Job(folder.name, overrides, "failed", {}, f"{metrics_path.name}: not an object")
        return Job(folder.name, overrides, "ok", metrics)
    if error_path.is_file():
        last_line = error_path.read_text(encoding="utf-8").strip().splitlines()[-1:]
        return Job(folder.name, overrides, "failed", {}, "".join(last_line))
    return Job(folder.name, overrides, "missing", {})


def as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def natural_order(value: str) -> tuple[bool, float, str]:
    """Numbers in numeric order (job 2 before job 10), then other strings."""
    number = as_number(value)
    return (number is None, number or 0.0, value)


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder of `sweep_dir`: a subfolder with `.hydra/overrides.yaml`."""
    if not sweep_dir.is_dir():
        raise AbsaUserError(f"sweep folder {sweep_dir} does not exist")
    folders = [p.parents[1] for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    folders.sort(key=lambda folder: natural_order(folder.name))
    if not folders:
        raise AbsaUserError(
            f"{sweep_dir}: no job folders (subfolders with .hydra/overrides.yaml); "
            "expected a multirun folder such as outputs/multirun/<date_time>"
        )
    return [read_job(folder) for folder in folders]


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (all of them for a sweep of one job)."""
    values = [job.override_values() for job in jobs]
    keys = list(dict.fromkeys(key for job_values in values for key in job_values))
    if len(jobs) == 1:
        return keys
    return [key for key in keys if len({v.get(key) for v in values}) > 1]


def job_row(job: Job, keys: list[str]) -> dict[str, Any]:
    """One row of the table; a column whose value the job did not record is None (or empty)."""
    overrides = job.override_values()
    scores = {**job.metrics.get("best_val", {}), **job.metrics.get("test", {})}
    losses = job.metrics.get("final_losses", {})
    weights = job.metrics.get("effective_weights", {})
    return {
        "job": job.name,
        "status": job.status,
        **{key: overrides.get(key, "") for key in keys},
        **{metric: scores.get(metric) for metric in F1_METRICS},
        **{f"final {loss}": losses.get(loss) for loss in FINAL_LOSSES},
        **{f"effective {weight}": weights.get(weight) for weight in WEIGHTS},
        "regime": job.metrics.get("diagnosis", {}).get("regime", ""),
        "error": job.error,
    }


def summary_rows(jobs: list[Job], keys: list[str]) -> list[dict[str, Any]]:
    """Best `val/pair_f1` first; jobs without it (failed, missing) last, in job order."""
    rows = [job_row(job, keys) for job in jobs]
    return sorted(rows, key=lambda r: (r[SORT_METRIC] is None, -(r[SORT_METRIC] or 0.0)))


def cell(value: Any) -> str:
    """A value as the markdown and console tables show it (summary.csv keeps every digit)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    number = as_number(value)  # an override such as Optuna's loss.focal_weight=0.8659969709
    return str(value) if number is None else f"{number:.4g}"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def best_job(rows: list[dict[str, Any]], jobs: list[Job]) -> Job | None:
    if rows[0][SORT_METRIC] is None:
        return None
    return next(job for job in jobs if job.name == rows[0]["job"])


def rerun_command(job: Job) -> str:
    return shlex.join(["python", "train.py", *job.overrides])


def markdown(rows: list[dict[str, Any]], best: Job | None, title: str, plot: Path | None) -> str:
    columns = list(rows[0])
    lines = [f"# Sweep {title}", ""]
    counts = Counter(row["status"] for row in rows)
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines += [f"{len(rows)} jobs ({status}), best `{SORT_METRIC}` first.", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join(" --- " for _ in columns) + "|")
    for row in rows:
        cells = (cell(row[c]).replace("|", "\\|") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if best is None:
        lines.append(f"No job recorded `{SORT_METRIC}`.")
    else:
        score = best.metrics["best_val"][SORT_METRIC]
        lines += [
            f"Best: job {best.name}, `{SORT_METRIC}` {score:.4f}. To train it alone:",
            "",
            "```bash",
            rerun_command(best),
            "```",
        ]
    if plot is not None:
        lines += ["", f"![pair F1 against each swept key]({plot.name})"]
    return "\n".join(lines) + "\n"


def points(rows: list[dict[str, Any]], key: str, metric: str) -> tuple[list[float], list[float]]:
    pairs = [(float(row[key]), row[metric]) for row in rows if row[metric] is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def draw_panel(ax: Axes, rows: list[dict[str, Any]], key: str, keys: list[str]) -> None:
    """val and test pair F1 against `key`.

    In a grid, the jobs that share the other keys' values are joined by a line, one colour a
    group, so that a 3x3 grid reads as three curves; a random search (Optuna) gives points.
    """
    others = [k for k in keys if k != key]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: [natural_order(r[k]) for k in [*others, key]]):
        groups[", ".join(f"{k}={row[k]}" for k in others)].append(row)
    as_lines = len(groups) <= MAX_LINES and len(groups) < len(rows)
    handles = []
    for metric, (marker, style) in PLOTTED_METRICS.items():
        if as_lines:
            for colour, (group, members) in enumerate(groups.items()):
                label = group if group and metric == SORT_METRIC else None
                ax.plot(
                    *points(members, key, metric),
                    marker=marker,
                    linestyle=style,
                    color=f"C{colour}",
                    label=label,
                )
            handles.append(Line2D([], [], color="0.3", marker=marker, linestyle=style))
        else:
            (line,) = ax.plot(*points(rows, key, metric), marker=marker, linestyle="none")
            handles.append(line)
    group_handles, group_labels = ax.get_legend_handles_labels()
    ax.legend(
        handles + group_handles,
        [*PLOTTED_METRICS, *group_labels],
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.15),  # below the panel, off the points
        ncols=2,
    )
    ax.set_xlabel(key)
    ax.set_ylabel("pair F1")
    ax.grid(alpha=0.3)


def plot_f1(rows: list[dict[str, Any]], keys: list[str], title: str, path: Path) -> bool:
    """One panel a numeric swept key (finished jobs); False when there is no such key."""
    done = [row for row in rows if row["status"] == "ok"]
    numeric = [key for key in keys if done and all(as_number(r[key]) is not None for r in done)]
    if not numeric:
        return False
    fig = Figure(figsize=(5 * len(numeric), 4), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    for ax, key in zip(fig.subplots(1, len(numeric), squeeze=False)[0], numeric, strict=True):
        draw_panel(ax, done, key, keys)
    fig.suptitle(f"Sweep {title}")
    fig.savefig(path, dpi=120)
    return True


def print_table(rows: list[dict[str, Any]], keys: list[str], title: str) -> None:
    """The table on the console, without final losses, errors and columns no job filled.

    Headers are the keys' last part, a line a word, to fit 80 columns.
    """
    shown = [
        column
        for column in rows[0]
        if not column.startswith("final ")
        and column != "error"
        and any(cell(row[column]) for row in rows)
    ]
    table = Table(
        title=f"Sweep {title}, best {SORT_METRIC} first",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in shown:
        header = column.rsplit(".", 1)[-1] if column in keys else column
        table.add_column(re.sub(r"[/_ ]", "\n", header), justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(cell(row[c]) for c in shown))
    console = Console()
    console.print(table)
    for row in rows:
        if row["error"]:
            console.print(f"job {row['job']} failed: {row['error']}", soft_wrap=True)


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Read every job of `sweep_dir`, write summary.csv/.md/.png there, print the table."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    keys = swept_keys(jobs)
    rows = summary_rows(jobs, keys)
    title = sweep_dir.resolve().name
    plot = sweep_dir / "summary.png"
    if not plot_f1(rows, keys, title, plot):
        plot.unlink(missing_ok=True)  # a plot from an earlier summary would no longer match
        plot = None
    best = best_job(rows, jobs)
    write_csv(rows, sweep_dir / "summary.csv")
    (sweep_dir / "summary.md").write_text(markdown(rows, best, title, plot), encoding="utf-8")
    print_table(rows, keys, title)
    console = Console()
    if best is not None:
        console.print(f"best: job {best.name}: {rerun_command(best)}", soft_wrap=True)
    console.print(f"summary written: {sweep_dir / 'summary.md'}", soft_wrap=True)
    return rows


class SweepSummary(Callback):
    """Hydra callback (conf/train.yaml, `hydra.callbacks`); acts on multiruns only.

    `on_multirun_end` runs in the launching process once every job has returned, whatever
    the sweeper (basic, Optuna) or launcher (basic, submitit: the jobs write into the same
    sweep folder). Hydra skips it when a job failed, raising that job's error instead:
    `absa-summary <folder>` then writes the summary, the failed job included.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A failed job's traceback into its folder: the summary tells it from an unfinished one."""
        if config.hydra.mode != RunMode.MULTIRUN or job_return.status != JobStatus.FAILED:
            return
        try:
            job_return.return_value  # noqa: B018 (raises the job's exception)
        except Exception as error:
            text = "".join(traceback.format_exception(error))
            Path(config.hydra.runtime.output_dir, ERROR_FILE).write_text(text, encoding="utf-8")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(config.hydra.sweep.dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="absa-summary",
        description="Write summary.csv, summary.md and summary.png into a sweep folder.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder: outputs/multirun/<date>")
    args = parser.parse_args(argv)
    try:
        write_summary(args.sweep_dir)
    except AbsaUserError as error:
        parser.error(printable(str(error)))  # one line, exit status 2


if __name__ == "__main__":
    main()
