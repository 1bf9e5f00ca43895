"""Predict with a trained model, as text tools take their input: comments as arguments, one a
line on standard input, or from a file.

    absa-predict --ckpt PATH "Pin trâu, camera hơi mờ"           # a table
    echo "Pin trâu, camera hơi mờ" | absa-predict --ckpt PATH
    absa-predict --ckpt PATH --input comments.csv --output predictions.jsonl

The records (`--output`) are the JSON Lines that `data=jsonl` training reads, with probabilities
beside each label and two more fields: `truncated` and `line` (where the comment starts in the
input: the argument's number, or the line of standard input or of the file).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from absa_lightning.data.comments import (
    TEXT_COLUMNS,
    Comments,
    read_csv_comments,
    read_jsonl_comments,
    read_text_comments,
)
from absa_lightning.errors import AbsaUserError, printable, reports_user_errors
from absa_lightning.files import atomic_open
from absa_lightning.predictor import CommentPrediction, load_predictor

log = logging.getLogger(__name__)
POLARITY_STYLES = {"positive": "green", "negative": "red", "neutral": "yellow"}
SUFFIXES = ("csv", "jsonl", "txt")  # --input file kinds, by suffix


def read_comments(path: Path, text_column: str | None, text_field: str) -> Comments:
    """The comments of `path`, read by the reader for its suffix."""
    if not path.is_file():
        raise AbsaUserError("no such file", f"--input {path}", "check the path")
    kind = path.suffix.lstrip(".").lower()
    readers: dict[str, Callable[[Path], Comments]] = {
        "csv": lambda p: read_csv_comments(p, text_column),
        "jsonl": lambda p: read_jsonl_comments(p, text_field),
        "txt": read_text_comments,
    }
    if kind not in readers:
        raise AbsaUserError(
            f"unknown suffix {path.suffix!r}", f"--input {path}", f"use one of {list(SUFFIXES)}"
        )
    return readers[kind](path)


def read_lines(stream: TextIO) -> Comments:
    """Standard input, one comment a line."""
    comments = Comments()
    for line_no, raw in enumerate(stream, start=1):
        comments.add(line_no, raw.rstrip("\r\n"))
    return comments


def write_jsonl(path: Path, predictions: Sequence[CommentPrediction], lines: Sequence[int]) -> None:
    """One record a comment, written whole or not at all (the file's old contents stay)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        write_records(f, predictions, lines)


def write_records(
    out: TextIO, predictions: Sequence[CommentPrediction], lines: Sequence[int]
) -> None:
    for prediction, line in zip(predictions, lines, strict=True):
        record = {**prediction.to_record(), "line": line}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")  # control characters as \u


def print_table(predictions: Sequence[CommentPrediction]) -> None:
    table = Table(title="P(pol.) = P(polarity | mentioned), P(mentioned) = P(aspect mentioned)")
    for header in ("comment", "aspect", "polarity", "P(pol.)", "P(mentioned)"):
        table.add_column(header, justify="right" if header.startswith("P(") else "left")
    for prediction in predictions:
        # As typed, not as markup, and with no control character to reach the terminal.
        text = escape(printable(prediction.text))
        text += " [dim](truncated)[/dim]" if prediction.truncated else ""
        if not prediction.aspects:
            table.add_row(text, "[dim]none[/dim]", "", "", "")
        for i, a in enumerate(prediction.aspects):
            style = POLARITY_STYLES.get(a.polarity.lower(), "bold")
            table.add_row(
                text if i == 0 else "",
                escape(printable(a.aspect)),
                f"[{style}]{a.polarity}[/{style}]",
                f"{a.polarity_probability:.3f}",
                f"{a.mentioned_probability:.3f}",
            )
        table.add_section()
    Console().print(table)


def parse_threshold(value: str) -> float | dict[str, float]:
    """`--threshold 0.4` or `--threshold '{"PRICE": 0.3}'`."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
    try:
        mapping = json.loads(value)
    except json.JSONDecodeError:
        mapping = None
    if isinstance(mapping, dict):
        return mapping
    raise argparse.ArgumentTypeError(
        f"{value!r}: give a number in [0, 1] or a JSON object such as '{{\"PRICE\": 0.3}}'"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="absa-predict",
        description="The aspects a comment mentions and their polarity: comments as arguments, "
        "one a line on standard input, or --input FILE.",
        epilog='example: absa-predict --ckpt model/ "Pin trâu, camera hơi mờ"',
    )
    p.add_argument("comments", nargs="*", metavar="COMMENT", help="comments to predict")
    p.add_argument(
        "--ckpt", required=True, metavar="PATH", help="a checkpoint of train.py or an export"
    )
    p.add_argument(
        "-i",
        "--input",
        type=Path,
        metavar="FILE",
        help=f"comments from a file: {', '.join(SUFFIXES)} (by its suffix); - for stdin",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="JSON Lines, one record a comment (- for stdout); default: a table",
    )
    p.add_argument(
        "--threshold",
        type=parse_threshold,
        default=None,
        help="detect an aspect when P(mentioned) >= this (a number, or a JSON object per "
        "aspect); default: argmax, or the export's threshold",
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 …; default: cuda if any")
    p.add_argument(
        "--text-column",
        default=None,
        metavar="NAME",
        help=f"the CSV column of comments; default: the first of {list(TEXT_COLUMNS)}",
    )
    p.add_argument("--text-field", default="text", metavar="NAME", help="the JSON Lines field")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def gather_comments(args: argparse.Namespace, stdin: TextIO) -> tuple[Comments, str, str]:
    """The comments to predict, where they came from and what their numbers count."""
    if args.comments and args.input is not None:
        raise AbsaUserError("give comments as arguments or --input FILE, not both")
    if args.comments:
        comments = Comments()
        for i, text in enumerate(args.comments, start=1):
            comments.add(i, text)
        return comments, "arguments", "argument(s)"
    if args.input is None or str(args.input) == "-":
        if stdin.isatty():
            raise AbsaUserError(
                "no comments",
                fix='give them as arguments ("Pin trâu, camera hơi mờ"), '
                "one a line on standard input, or --input FILE",
            )
        return read_lines(stdin), "standard input", "line(s)"
    return read_comments(args.input, args.text_column, args.text_field), str(args.input), "line(s)"


def predict(args: argparse.Namespace, stdin: TextIO | None = None) -> list[CommentPrediction]:
    """The predictions of the comments `args` gives (`stdin`: standard input); written to
    `args.output` or printed."""
    if args.batch_size < 1:
        raise AbsaUserError(f"--batch-size {args.batch_size}", fix="give a number >= 1")
    to_stdout = args.output is not None and str(args.output) == "-"
    if args.output is not None and not to_stdout:
        folder = args.output.resolve().parent
        if args.output.is_dir():
            raise AbsaUserError("a folder", f"--output {args.output}", "give a file name")
        if not folder.is_dir():  # found now, not after every comment is predicted
            raise AbsaUserError(
                f"the folder {folder} does not exist", f"--output {args.output}", "create it first"
            )
        if not os.access(folder, os.W_OK):
            raise AbsaUserError(f"cannot write into {folder}", f"--output {args.output}")
    comments, source, unit = gather_comments(args, stdin or sys.stdin)
    if comments.blank_lines:
        shown = ", ".join(map(str, comments.blank_lines[:10]))
        more = "…" if len(comments.blank_lines) > 10 else ""
        log.warning(
            "%s: left out %d blank comment(s), %s %s%s",
            source,
            len(comments.blank_lines),
            unit,
            shown,
            more,
        )
    if not comments.texts:
        raise AbsaUserError(
            "every comment is blank: nothing to predict",
            fix="give the text of a comment (an empty one mentions no aspect)",
        )

    options: dict[str, Any] = {"batch_size": args.batch_size, "device": args.device}
    if args.threshold is not None:  # else the checkpoint's argmax, or the exported threshold
        options["threshold"] = args.threshold
    predictor = load_predictor(args.ckpt, **options)
    from_file = args.input is not None and str(args.input) != "-"
    predictions = predictor.predict(comments.texts, progress=from_file and not args.no_progress)
    truncated = sum(p.truncated for p in predictions)
    if truncated:
        log.warning(
            "%d comment(s) longer than %d tokens: only their start was read",
            truncated,
            predictor.max_length,
        )
    if to_stdout:
        write_records(sys.stdout, predictions, comments.lines)
    elif args.output is not None:
        write_jsonl(args.output, predictions, comments.lines)
        log.info("%d predictions -> %s", len(predictions), args.output)
    else:
        print_table(predictions)
    return predictions


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    reports_user_errors(predict)(parser().parse_args(argv))


if __name__ == "__main__":
    main()
