"""The benchmark: quality (a TF-IDF + SVM baseline, the neural recipes over seeds) on every
dataset, and speed (on UIT-ViSFD, the default data).

    python -m benchmarks.bench                          # make bench: all of it, hours on 2 cores
    python -m benchmarks.bench --quick                  # make bench-quick: a subset, 1 seed
    python -m benchmarks.bench --only svm,quality --datasets mams --reuse
    python -m benchmarks.bench --only quality --rows default,ce --override trainer=gpu --jobs 8

Datasets are `datasets` in benchmarks/bench.yaml, each the train.py overrides that select it
(`data=mams`); their folders are the presets' (`$ABSA_DATA_DIR`, `$ABSA_MAMS_DIR`, else data/,
downloaded when missing). Runs the sections in the order svm, quality, speed, prints each table,
then the targets (PASS/MISS) and the total time, and writes benchmarks/results/bench.md and
bench.json (bench-quick.* in quick mode, *-partial.* when only a part ran or --override
changed it; --out: another folder) with the machine, versions, seeds and git revision.
Knobs: benchmarks/bench.yaml.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from benchmarks import quality, speed, svm_baseline
from benchmarks.results import (
    REPO,
    RESULTS_DIR,
    Section,
    environment,
    load_settings,
    section_markdown,
    targets_table,
    write_results,
)

SECTION_NAMES = ("svm", "quality", "speed")
Datasets = Mapping[str, Sequence[str]]  # name -> the train.py overrides that select it
SectionRunner = Callable[[Datasets, bool], Section]  # (datasets, quick) -> its table


def default_data_root() -> Path:
    """The folder of the default data (conf/train.yaml's), which the speed section reads."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return Path(compose(config_name="train").data.root)


def speed_section(datasets: Datasets, quick: bool) -> Section:
    return speed.run(default_data_root(), quick)


def chosen_datasets(settings: DictConfig, names: str | None) -> dict[str, list[str]]:
    """`--datasets mams` -> those of bench.yaml's `datasets`, in its order; unknown: an error."""
    available = {name: list(overrides) for name, overrides in settings.datasets.items()}
    if names is None:
        return available
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    unknown = wanted - set(available)
    if unknown or not wanted:
        raise SystemExit(f"--datasets: unknown {sorted(unknown)}; pick from {list(available)}")
    return {name: overrides for name, overrides in available.items() if name in wanted}


def section_names(only: str | None) -> list[str]:
    """`--only svm,speed` -> those sections in the bench's order; unknown names are an error."""
    if only is None:
        return list(SECTION_NAMES)
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = wanted - set(SECTION_NAMES)
    if unknown or not wanted:
        raise SystemExit(f"--only: unknown section(s) {sorted(unknown)}; pick from {SECTION_NAMES}")
    return [name for name in SECTION_NAMES if name in wanted]


def run_sections(
    runners: Mapping[str, SectionRunner], names: Sequence[str], datasets: Datasets, quick: bool
) -> dict[str, Section]:
    """Each named section in turn, printed as it finishes."""
    sections = {}
    for name in names:
        section = runners[name](datasets, quick)
        print_section(section)
        sections[name] = section
    return sections


def print_section(section: Section) -> None:
    print(section_markdown(section), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, short runs (bench.yaml)")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTION_NAMES)}")
    parser.add_argument("--datasets", help="comma-separated names of bench.yaml's datasets")
    parser.add_argument(
        "--reuse", action="store_true", help="read finished runs of the same code and overrides"
    )
    parser.add_argument("--rows", help="comma-separated quality rows of bench.yaml (default: all)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a train.py override for every quality run, e.g. trainer=gpu (repeatable)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="quality runs at once (a GPU)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the results go")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs: {args.jobs}; at least 1")
    settings = load_settings(args.quick)
    rows = None if args.rows is None else [r.strip() for r in args.rows.split(",") if r.strip()]

    start = time.perf_counter()
    runners: dict[str, SectionRunner] = {
        "svm": svm_baseline.run,
        "quality": partial(
            quality.run, reuse=args.reuse, row_names=rows, extra=args.override, jobs=args.jobs
        ),
        "speed": speed_section,
    }
    datasets = chosen_datasets(settings, args.datasets)
    sections = run_sections(runners, section_names(args.only), datasets, args.quick)
    if "svm" in sections and "quality" in sections:
        sections["quality"].targets += quality.baseline_targets(
            sections["svm"], sections["quality"], settings, args.quick
        )
    total_seconds = time.perf_counter() - start

    targets = [t for s in sections.values() for t in s.targets]
    if targets:
        print("## Targets\n\n" + targets_table(targets) + "\n")
    env = environment(settings.seeds, args.quick)
    env["mode"] = quality.runs_folder(args.quick, args.override)
    name = "bench-quick" if args.quick else "bench"
    if any((args.only, args.datasets, args.rows, args.override)):
        name += "-partial"  # a part of the benchmark leaves the whole one's files as they are
    md_path, json_path = write_results(list(sections.values()), env, total_seconds, name, args.out)
    print(f"total {total_seconds / 60:.1f} min; wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
