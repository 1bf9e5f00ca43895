"""Readers for aspect-category sentiment files: the UIT-ViSFD CSV, JSON Lines, SemEval XML.

Both give `Example`s whose labels map an aspect name to a polarity spelled as in the configured
polarity list. A label without polarity (UIT-ViSFD's `{OTHERS}`) is parsed and dropped: it names
no aspect the model scores. Every bad row names its file, line and text; with `on_error="skip"`
it is counted instead and the reader reports how many rows it skipped and why.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.parsers import expat

from absa_lightning.errors import AbsaUserError, printable

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
_LABEL_ITEM = re.compile(r"\{([^{}]*)\}")


class DataError(AbsaUserError):
    """A bad row, located: `file:line: problem: 'offending text'; what to do`."""

    def __init__(
        self,
        path: str | Path,
        line: int,
        problem: str,
        text: str | None,
        fix: str | None = None,
    ):
        """`text`: the offending text, None where there is none to show."""
        self.path, self.line, self.problem, self.text = str(path), line, problem, text or ""
        what = problem if text is None else f"{problem}: {_shown(text)}"
        super().__init__(what, f"{path}:{line}", fix)


def _shown(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


@dataclass(frozen=True)
class Example:
    text: str
    labels: dict[str, str]  # aspect -> polarity, as spelled in the configured polarity list
    line: int  # where the row starts in its file, for errors found later (unknown aspects)


@dataclass
class RowErrors:
    """Raise on the first bad row, or skip it (`on_error="skip"`): the report gives the count
    per reason and the first `SHOWN` skipped rows, each `file:line: problem: text`."""

    SHOWN = 20

    path: Path
    on_error: OnError = "raise"
    skipped: Counter[str] = field(default_factory=Counter)
    rows: list[str] = field(default_factory=list)  # the first SHOWN, located

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise AbsaUserError(
                f"data.on_error={self.on_error!r}",
                fix="use raise (stop at the first bad row) "
                "or skip (leave bad rows out and list them)",
            )

    def bad_row(self, line: int, problem: str, text: str, fix: str | None = None) -> None:
        if self.on_error == "raise":
            raise DataError(self.path, line, problem, text, fix)
        self.skipped[problem.split(" (")[0]] += 1
        if len(self.rows) < self.SHOWN:
            self.rows.append(f"{self.path}:{line}: {problem}: {printable(_shown(text, 80))}")

    def report(self) -> None:
        if not self.skipped:
            return
        total = self.skipped.total()
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        shown = "".join(f"\n  {row}" for row in self.rows)
        more = f"\n  … and {total - len(self.rows)} more" if total > len(self.rows) else ""
        log.warning("%s: skipped %d rows (%s):%s%s", self.path, total, reasons, shown, more)


def parse_labels(
    items: Sequence[tuple[str, str | None]], polarities: Sequence[str]
) -> dict[str, str]:
    """(aspect, polarity or None) pairs -> {aspect: canonical polarity}; raises ValueError."""
    canonical = {p.lower(): p for p in polarities}
    labels: dict[str, str] = {}
    for aspect, polarity in items:
        if not aspect.strip():
            raise ValueError("empty aspect name")
        if polarity is None:
            continue  # {OTHERS}: no polarity, nothing to score
        if polarity.strip().lower() not in canonical:
            raise ValueError(f"unknown polarity {polarity!r} (expected one of {list(polarities)})")
        polarity = canonical[polarity.strip().lower()]
        if labels.setdefault(aspect, polarity) != polarity:
            raise ValueError(f"two polarities for aspect {aspect!r}: {labels[aspect]}, {polarity}")
    return labels


def split_label_string(label: str) -> list[tuple[str, str | None]]:
    """`{CAMERA#Positive};{OTHERS};` -> [("CAMERA", "Positive"), ("OTHERS", None)].

    The polarity is what follows the last `#`, so aspect names may contain `#`, `&` or spaces.
    """
    if _LABEL_ITEM.sub("", label).replace(";", "").strip():
        raise ValueError("malformed label (expected items like {ASPECT#Polarity}; )")
    items = []
    for body in _LABEL_ITEM.findall(label):
        aspect, sep, polarity = body.rpartition("#")
        items.append((aspect, polarity) if sep else (body, None))
    if not items:
        raise ValueError("empty label")
    return items


def read_csv(
    path: str | Path,
    polarities: Sequence[str],
    on_error: OnError = "raise",
    text_column: str = "comment",
    label_column: str = "label",
) -> list[Example]:
    """A CSV with a text column and a `{ASPECT#Polarity};…` label column (UIT-ViSFD's format)."""
    path = Path(path)
    errors = RowErrors(path, on_error)
    examples = []
    records = csv_records(path)
    header = next(records, (1, []))[1]
    missing = {text_column, label_column} - set(header)
    if missing:
        raise DataError(path, 1, f"missing column(s) {sorted(missing)}", ",".join(header))
    for line, values in records:
        if not values:
            continue  # a blank line
        row = dict(zip(header, values, strict=False))
        text, label = row.get(text_column), row.get(label_column)
        if text is None or label is None:
            errors.bad_row(line, "too few fields", ",".join(values))
            continue
        try:
            if not text.strip():
                raise ValueError("empty comment")
            examples.append(
                Example(text.strip(), parse_labels(split_label_string(label), polarities), line)
            )
        except ValueError as err:
            errors.bad_row(line, str(err), label if text.strip() else ",".join(values))
    errors.report()
    return examples


def read_jsonl(
    path: str | Path,
    polarities: Sequence[str],
    on_error: OnError = "raise",
    text_column: str = "text",
    label_column: str = "labels",
) -> list[Example]:
    """One `{"text": ..., "labels": [{"aspect": ..., "polarity": ...}]}` object a line.

    `"polarity": null` (or absent) is the JSON form of a label without polarity. The two field
    names are configurable, and named like `read_csv`'s columns, so both readers take the same
    arguments.
    """
    path = Path(path)
    errors = RowErrors(path, on_error)
    examples = []
    with _read_utf8(path) as lines:
        for line_no, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                text, items = record.get(text_column), record.get(label_column)
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(
                        "empty comment"
                        if isinstance(text, str)
                        else f"missing field {text_column!r}"
                    )
                if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                    raise ValueError(
                        f"field {label_column!r} must be a list of {{aspect, polarity}} objects"
                    )
                if any(not isinstance(i.get("aspect"), str) for i in items):
                    raise ValueError("a label without an 'aspect' string")
                if any(not isinstance(i.get("polarity"), str | None) for i in items):
                    raise ValueError("a label whose 'polarity' is not a string or null")
                pairs = [(i["aspect"], i.get("polarity")) for i in items]
                examples.append(Example(text.strip(), parse_labels(pairs, polarities), line_no))
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                errors.bad_row(line_no, str(err).split(": line")[0], raw.strip())
    errors.report()
    return examples


CSV_FIELD_LIMIT = 1 << 24  # characters; Python's default, 131,072, refuses some long reviews


def csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """The records of a UTF-8 CSV file, the header first, each with the line it starts on.

    A quoted field may hold line breaks, so a record may span lines; a blank line is `[]` (not
    skipped, as DictReader does, which shifts line numbers). Malformed CSV (a field over
    `CSV_FIELD_LIMIT` characters, mostly a quote left open) is a `DataError` at its record.
    """
    limit = csv.field_size_limit()
    with _read_utf8(path) as lines:
        reader = csv.reader(lines)
        start = 1
        while True:
            csv.field_size_limit(CSV_FIELD_LIMIT)  # process-wide: set only while reading
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                fix = None
                if "field limit" in str(err):
                    fix = (
                        f"a field from here on is over {CSV_FIELD_LIMIT:,} characters: look for a "
                        'quote (") that is opened and never closed'
                    )
                raise DataError(path, start, f"not valid CSV ({err})", None, fix) from None
            finally:
                csv.field_size_limit(limit)
            yield start, values
            start = reader.line_num + 1


def _read_utf8(path: Path) -> io.StringIO:
    """The file as UTF-8 text (a BOM is allowed); a decoding error becomes a located DataError."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        bad = raw[max(0, err.start - 20) : err.end + 20].decode("utf-8", errors="replace")
        raise DataError(path, line, "not UTF-8 text", bad) from None
    return io.StringIO(text, newline="")  # newline="": quoted CSV fields may hold line breaks


# SemEval ABSA XML: the aspect-category elements of 2014 (aspectCategory) and 2015/16 (Opinion)
_SEMEVAL_LABEL_ELEMENTS = ("aspectCategory", "Opinion")


def read_semeval_xml(
    path: str | Path,
    polarities: Sequence[str],
    on_error: OnError = "raise",
    text_column: str = "text",
    label_column: str = "category",
) -> list[Example]:
    """SemEval ABSA XML (2014-2016, MAMS): `<sentence>`s with a `<text>` and category labels.

    Labels are the `<aspectCategory category=… polarity=…/>` elements of SemEval-2014 and MAMS,
    or the `<Opinion category=… polarity=…/>` elements of SemEval-2015/16, wherever they sit
    inside the sentence. `text_column` names the text element and `label_column` the attribute
    that names the aspect (the names of `read_csv`'s arguments, so the readers take the same
    ones). A polarity outside `polarities`, e.g. SemEval's `conflict`, is an error at the line
    of its element: skip those sentences with `on_error="skip"`, or add `conflict` to the
    polarities to learn it as a class. Two polarities for one category in a sentence (two
    Opinions of 2015/16 with different targets) is an error at the sentence's line. A document
    type declaration (DTD, entities) is refused: the format has none, and entities expand.
    """
    path = Path(path)
    errors = RowErrors(path, on_error)
    with _read_utf8(path) as stream:
        source = stream.read()
    lines = source.splitlines()

    def line_text(line: int) -> str:
        return lines[line - 1].strip() if 0 < line <= len(lines) else ""

    examples: list[Example] = []
    sentence: dict | None = None  # the open <sentence>: line, text parts, labels, first error
    text_parts: list[str] | None = None  # collecting the open text element's characters
    parser = expat.ParserCreate(encoding="utf-8")

    def fail(line: int, problem: str) -> None:
        """A problem in the open sentence: raise now, or mark the sentence to be skipped."""
        errors.bad_row(line, problem, line_text(line))  # raises unless on_error="skip"
        if sentence is not None:
            sentence["bad"] = True

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal sentence, text_parts
        line = parser.CurrentLineNumber
        if name == "sentence":
            sentence = {"line": line, "text": None, "labels": [], "bad": False}
        elif sentence is None or sentence["bad"]:
            return
        elif name == text_column:
            text_parts = []
        elif name in _SEMEVAL_LABEL_ELEMENTS:
            aspect, polarity = attrs.get(label_column), attrs.get("polarity")
            if aspect is None or polarity is None:
                missing = label_column if aspect is None else "polarity"
                return fail(line, f"<{name}> without a {missing!r} attribute")
            try:
                parse_labels([(aspect, polarity)], polarities)
            except ValueError as err:
                return fail(line, str(err))
            sentence["labels"].append((aspect, polarity))

    def end(name: str) -> None:
        nonlocal sentence, text_parts
        if name == text_column and text_parts is not None and sentence is not None:
            sentence["text"], text_parts = "".join(text_parts).strip(), None
        elif name == "sentence" and sentence is not None:
            done, sentence = sentence, None
            if done["bad"]:
                return
            line = done["line"]
            try:
                if not done["text"]:
                    raise ValueError(f"sentence without <{text_column}> or with an empty one")
                examples.append(
                    Example(done["text"], parse_labels(done["labels"], polarities), line)
                )
            except ValueError as err:
                errors.bad_row(line, str(err), done["text"] or line_text(line))

    def characters(data: str) -> None:
        if text_parts is not None:
            text_parts.append(data)

    def no_dtd(*_args: object) -> None:
        line = parser.CurrentLineNumber
        raise DataError(path, line, "a document type declaration (not allowed)", line_text(line))

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = characters
    parser.StartDoctypeDeclHandler = no_dtd
    parser.EntityDeclHandler = no_dtd
    try:
        parser.Parse(source, True)
    except expat.ExpatError as err:
        problem = f"malformed XML ({expat.errors.messages[err.code]}, column {err.offset + 1})"
        raise DataError(path, err.lineno, problem, line_text(err.lineno)) from None
    if not examples and not errors.skipped:
        raise DataError(path, 1, "no <sentence> elements (not SemEval ABSA XML?)", line_text(1))
    errors.report()
    return examples
