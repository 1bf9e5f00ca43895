"""Unlabelled comments to predict on: a CSV column, a JSON Lines field, or plain text one comment a
line. Each comment keeps the line it starts on, so predictions can be matched to their input.

Blank comments are left out (a model has nothing to read in them, and a record with an empty text
is not valid training data) and their lines counted in `Comments.blank_lines`. Bad input raises
`DataError` with the file, the line and the offending text, as the training readers do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from absa_lightning.data.formats import DataError, _read_utf8, csv_records


@dataclass
class Comments:
    texts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # where each comment starts in its file
    blank_lines: list[int] = field(default_factory=list)

    def add(self, line: int, text: str) -> None:
        if text.strip():
            self.texts.append(text.strip())
            self.lines.append(line)
        else:
            self.blank_lines.append(line)


TEXT_COLUMNS = ("comment", "text")  # UIT-ViSFD's name, and the common one


def read_csv_comments(path: str | Path, text_column: str | None = None) -> Comments:
    """The `text_column` of a CSV with a header row (None: the first of `TEXT_COLUMNS` that
    the header has); other columns are ignored."""
    path = Path(path)
    comments = Comments()
    records = csv_records(path)
    header = next(records, (1, []))[1]
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMNS if c in header), None)
    if text_column not in header:
        wanted = f"column {text_column!r}" if text_column else f"column {' or '.join(TEXT_COLUMNS)}"
        raise DataError(
            path,
            1,
            f"no {wanted} in the header {header}",
            None,
            "name the column of comments (absa-predict --text-column NAME)",
        )
    column = header.index(text_column)
    for line, values in records:
        if values and len(values) <= column:
            raise DataError(path, line, "too few fields", ",".join(values))
        comments.add(line, values[column] if values else "")
    return comments


def read_jsonl_comments(path: str | Path, text_field: str = "text") -> Comments:
    """The `text_field` of one JSON object a line (other fields, such as labels, are ignored)."""
    path = Path(path)
    comments = Comments()
    with _read_utf8(path) as lines:
        for line_no, raw in enumerate(lines, start=1):
            if not raw.strip():
                comments.add(line_no, "")
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(path, line_no, f"not JSON ({err.msg})", raw.strip()) from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(
                    path, line_no, f"no string field {text_field!r} (set text_field=…)", raw.strip()
                )
            comments.add(line_no, text)
    return comments


def read_text_comments(path: str | Path) -> Comments:
    """Plain text, one comment a line."""
    path = Path(path)
    comments = Comments()
    with _read_utf8(path) as lines:
        for line_no, raw in enumerate(lines, start=1):
            comments.add(line_no, raw.rstrip("\r\n"))
    return comments
