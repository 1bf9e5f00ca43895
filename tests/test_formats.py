"""The UIT-ViSFD CSV and JSON Lines readers: labels, located errors, skipping, encodings."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from absa_lightning.data import DataError, read_csv, read_jsonl
from absa_lightning.data.formats import split_label_string

POLARITIES = ("Positive", "Negative", "Neutral")


def write(path: Path, text: str, newline: str = "\n") -> Path:
    """`text` (written with \\n) to `path` as UTF-8 with the given line ending, byte for byte."""
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def assert_located(err: DataError, path: Path, line: int, text: str, problem: str) -> None:
    """The error names the file, the line and the offending text, in its message and fields."""
    message = str(err)
    assert str(path) in message
    assert f"{path}:{line}:" in message
    assert repr(text) in message
    assert problem in message
    assert err.line == line
    assert err.path == str(path)
    assert err.text == text


# --- labels -------------------------------------------------------------------------------


def test_csv_reads_visfd_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "Train.csv",
        "index,comment,n_star,date_time,label\n"
        "0,  Pin trâu chụp ảnh đẹp  ,5,2 tuần trước,"
        "{CAMERA#Positive};{BATTERY#Negative};{OTHERS};\n"
        "1,Máy ổn,4,14/09/2019,{OTHERS};\n",
        newline="\r\n",  # as in the real files
    )
    examples = read_csv(path, POLARITIES)
    assert [ex.text for ex in examples] == ["Pin trâu chụp ảnh đẹp", "Máy ổn"]
    assert examples[0].labels == {"CAMERA": "Positive", "BATTERY": "Negative"}
    assert "OTHERS" not in examples[0].labels
    assert examples[1].labels == {}  # a comment about none of the aspects is kept, unlabelled
    assert [ex.line for ex in examples] == [2, 3]


@pytest.mark.parametrize(
    ("label", "items"),
    [
        (
            "{CAMERA#Positive};{BATTERY#Negative};{OTHERS};",
            [("CAMERA", "Positive"), ("BATTERY", "Negative"), ("OTHERS", None)],
        ),
        ("{A#B#Negative};", [("A#B", "Negative")]),  # the polarity follows the LAST '#'
        (
            "{SER&ACC#Positive}; {SCREEN SIZE#Neutral}",
            [("SER&ACC", "Positive"), ("SCREEN SIZE", "Neutral")],
        ),
    ],
)
def test_split_label_string(label: str, items: list[tuple[str, str | None]]) -> None:
    assert split_label_string(label) == items


def test_aspect_names_with_hash_parse_by_last_hash(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.csv",
        "comment,label\nx,{SER&ACC#Positive};{A#B#Negative};{SCREEN SIZE#Neutral};{OTHERS};\n",
    )
    (example,) = read_csv(path, POLARITIES)
    assert example.labels == {"SER&ACC": "Positive", "A#B": "Negative", "SCREEN SIZE": "Neutral"}


@pytest.mark.parametrize(
    ("polarities", "label", "expected"),
    [
        (
            POLARITIES,
            "{CAMERA#positive};{BATTERY#NEGATIVE};{PRICE#nEuTrAl};",
            {"CAMERA": "Positive", "BATTERY": "Negative", "PRICE": "Neutral"},
        ),
        (("pos", "neg"), "{CAMERA#POS};{BATTERY#Neg};", {"CAMERA": "pos", "BATTERY": "neg"}),
    ],
)
def test_polarity_matches_case_insensitively_and_is_stored_as_configured(
    tmp_path: Path, polarities: tuple[str, ...], label: str, expected: dict[str, str]
) -> None:
    csv_path = write(tmp_path / "a.csv", f"comment,label\nx,{label}\n")
    assert read_csv(csv_path, polarities)[0].labels == expected
    pairs = [{"aspect": a, "polarity": p} for a, p in split_label_string(label)]
    jsonl_path = write(tmp_path / "a.jsonl", json.dumps({"text": "x", "labels": pairs}) + "\n")
    assert read_jsonl(jsonl_path, polarities)[0].labels == expected


def test_same_polarity_twice_for_one_aspect_is_not_a_conflict(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "comment,label\nx,{CAMERA#Positive};{CAMERA#positive};\n")
    assert read_csv(path, POLARITIES)[0].labels == {"CAMERA": "Positive"}


def test_custom_column_names(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "review,aspects,comment\nhay,{CAMERA#Positive};,ignored\n")
    (example,) = read_csv(path, POLARITIES, text_column="review", label_column="aspects")
    assert (example.text, example.labels) == ("hay", {"CAMERA": "Positive"})


# One structure written as both formats: None is a label without polarity ({OTHERS} / null).
SAME_DATA = [
    ("Pin trâu, chụp ảnh đẹp", [("CAMERA", "Positive"), ("BATTERY", "Positive")]),
    ("Nhân viên tư vấn nhiệt tình", [("SER&ACC", "positive"), ("OTHERS", None)]),
    ('quoted "text", with a comma', [("A#B", "Negative"), ("SCREEN SIZE", "NEUTRAL")]),
    ("a comment\nover two lines", [("GENERAL", "Neutral")]),
    ("nói chung chung", [("OTHERS", None)]),
]
SAME_EXPECTED = [
    ("Pin trâu, chụp ảnh đẹp", {"CAMERA": "Positive", "BATTERY": "Positive"}),
    ("Nhân viên tư vấn nhiệt tình", {"SER&ACC": "Positive"}),
    ('quoted "text", with a comma', {"A#B": "Negative", "SCREEN SIZE": "Neutral"}),
    ("a comment\nover two lines", {"GENERAL": "Neutral"}),
    ("nói chung chung", {}),
]


def test_csv_and_jsonl_give_the_same_examples(tmp_path: Path) -> None:
    csv_path, jsonl_path = tmp_path / "data.csv", tmp_path / "data.jsonl"
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "comment", "label"])
        for i, (text, labels) in enumerate(SAME_DATA):
            label = "".join(f"{{{a}#{p}}};" if p else f"{{{a}}};" for a, p in labels)
            writer.writerow([i, text, label])
    with open(jsonl_path, "w", encoding="utf-8") as f:
        for text, labels in SAME_DATA:
            pairs = [{"aspect": a, "polarity": p} for a, p in labels]
            f.write(json.dumps({"text": text, "labels": pairs}, ensure_ascii=False) + "\n")

    from_csv = read_csv(csv_path, POLARITIES)
    from_jsonl = read_jsonl(jsonl_path, POLARITIES)
    assert [(ex.text, ex.labels) for ex in from_csv] == SAME_EXPECTED
    assert [(ex.text, ex.labels) for ex in from_jsonl] == SAME_EXPECTED
    assert [ex.line for ex in from_jsonl] == [1, 2, 3, 4, 5]
    assert [ex.line for ex in from_csv] == [2, 3, 4, 5, 7]  # row 4 spans lines 5-6


def test_jsonl_absent_polarity_is_like_null(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.jsonl",
        '{"text": "x", "labels": [{"aspect": "OTHERS"}, '
        '{"aspect": "PRICE", "polarity": "Neutral"}]}'
        "\n\n"  # blank lines are allowed and still counted
        '{"text": "y", "labels": []}\n',
    )
    examples = read_jsonl(path, POLARITIES)
    assert [(ex.text, ex.labels, ex.line) for ex in examples] == [
        ("x", {"PRICE": "Neutral"}, 1),
        ("y", {}, 3),
    ]


# --- located errors: CSV ------------------------------------------------------------------

# A bad row on line 6, after a quoted comment over lines 3-5.
CSV_BEFORE = (
    "index,comment,label\n"
    "0,tốt,{CAMERA#Positive};\n"
    '1,"một bình luận\ntrên ba\ndòng",{BATTERY#Negative};\n'
)
CSV_AFTER = "3,cuối,{PRICE#Neutral};\n"


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize(
    ("row", "problem", "text"),
    [
        ("2,máy đẹp,{CAMERA#Positive", "malformed label", "{CAMERA#Positive"),
        ("2,máy đẹp,CAMERA#Positive;", "malformed label", "CAMERA#Positive;"),
        ("2,máy đẹp,{CAMERA#Positive}x;", "malformed label", "{CAMERA#Positive}x;"),
        ("2,máy đẹp,{CAMERA#Good};", "unknown polarity 'Good'", "{CAMERA#Good};"),
        ("2,máy đẹp,{CAMERA#};", "unknown polarity ''", "{CAMERA#};"),
        ("2,máy đẹp,{#Positive};", "empty aspect name", "{#Positive};"),
        ("2,máy đẹp,", "empty label", ""),
        ("2,   ,{CAMERA#Positive};", "empty comment", "2,   ,{CAMERA#Positive};"),
        (
            "2,máy đẹp,{CAMERA#Positive};{CAMERA#Negative};",
            "two polarities for aspect 'CAMERA'",
            "{CAMERA#Positive};{CAMERA#Negative};",
        ),
        ("2,lonely", "too few fields", "2,lonely"),
    ],
)
def test_csv_bad_row_is_located(
    tmp_path: Path, newline: str, row: str, problem: str, text: str
) -> None:
    path = write(tmp_path / "Train.csv", CSV_BEFORE + row + "\n" + CSV_AFTER, newline)
    with pytest.raises(DataError) as info:
        read_csv(path, POLARITIES)
    assert_located(info.value, path, 6, text, problem)


def test_csv_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.csv", "comment,label\nok,{CAMERA#Positive};\n\n\nbad,{CAMERA#Good};\n"
    )
    with pytest.raises(DataError) as info:
        read_csv(path, POLARITIES)
    assert_located(info.value, path, 5, "{CAMERA#Good};", "unknown polarity")


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        ("text,label", "['comment']"),
        ("comment,labels", "['label']"),
        ("a,b", "['comment', 'label']"),
    ],
)
def test_csv_missing_column(tmp_path: Path, header: str, missing: str) -> None:
    path = write(tmp_path / "Dev.csv", f"{header}\nx,{{CAMERA#Positive}};\n")
    with pytest.raises(DataError) as info:
        read_csv(path, POLARITIES)
    assert_located(info.value, path, 1, header, f"missing column(s) {missing}")


def test_empty_csv_is_a_missing_column_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "")
    with pytest.raises(DataError, match="missing column") as info:
        read_csv(path, POLARITIES)
    assert info.value.line == 1


# --- located errors: JSONL ----------------------------------------------------------------

JSONL_BEFORE = '{"text": "tốt", "labels": [{"aspect": "CAMERA", "polarity": "Positive"}]}\n\n'


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('{"text": "x", "labels": [}', "Expecting value"),
        ("[1, 2]", "not a JSON object"),
        ('{"labels": []}', "missing field 'text'"),
        ('{"text": 5, "labels": []}', "missing field 'text'"),
        ('{"text": "  ", "labels": []}', "empty comment"),
        ('{"text": "x"}', "field 'labels' must be a list"),
        ('{"text": "x", "labels": "CAMERA#Positive"}', "field 'labels' must be a list"),
        ('{"text": "x", "labels": [{"polarity": "Positive"}]}', "without an 'aspect'"),
        ('{"text": "x", "labels": [{"aspect": "A", "polarity": 1}]}', "'polarity' is not a string"),
        ('{"text": "x", "labels": [{"aspect": "A", "polarity": "Good"}]}', "unknown polarity"),
        ('{"text": "x", "labels": [{"aspect": "", "polarity": "Positive"}]}', "empty aspect"),
        (
            '{"text": "x", "labels": [{"aspect": "A", "polarity": "Positive"}, '
            '{"aspect": "A", "polarity": "Neutral"}]}',
            "two polarities for aspect 'A'",
        ),
    ],
)
def test_jsonl_bad_line_is_located(tmp_path: Path, row: str, problem: str) -> None:
    path = write(tmp_path / "Test.jsonl", JSONL_BEFORE + row + "\n" + JSONL_BEFORE)
    with pytest.raises(DataError) as info:
        read_jsonl(path, POLARITIES)
    assert_located(info.value, path, 3, row, problem)


# --- encodings ----------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [read_csv, read_jsonl])
def test_not_utf8_is_located(tmp_path: Path, reader) -> None:
    if reader is read_csv:
        good = "comment,label\nok,{CAMERA#Positive};\n"
        bad = "caf\xe9 ngon,{CAMERA#Positive};\n"
    else:
        good = '{"text": "ok", "labels": []}\n{"text": "ok", "labels": []}\n'
        bad = '{"text": "caf\xe9 ngon", "labels": []}\n'
    path = tmp_path / "Train.data"
    path.write_bytes(good.encode("utf-8") + bad.encode("latin-1"))
    with pytest.raises(DataError) as info:
        reader(path, POLARITIES)
    err = info.value
    assert err.line == 3
    assert f"{path}:3: not UTF-8 text" in str(err)
    assert "caf\ufffd ngon" in err.text and repr(err.text) in str(err)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    csv_path = tmp_path / "a.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + "comment,label\nđẹp,{CAMERA#Positive};\n".encode())
    assert [(ex.text, ex.labels) for ex in read_csv(csv_path, POLARITIES)] == [
        ("đẹp", {"CAMERA": "Positive"})
    ]
    jsonl_path = tmp_path / "a.jsonl"
    line = '{"text": "đẹp", "labels": [{"aspect": "CAMERA", "polarity": "Positive"}]}\n'
    jsonl_path.write_bytes(b"\xef\xbb\xbf" + line.encode())
    assert [(ex.text, ex.labels) for ex in read_jsonl(jsonl_path, POLARITIES)] == [
        ("đẹp", {"CAMERA": "Positive"})
    ]


# --- on_error="skip" ----------------------------------------------------------------------


def test_csv_skip_keeps_good_rows_and_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path / "Train.csv",
        "comment,label\n"
        "a,{CAMERA#Good};\n"
        '"b\nover\nlines",{CAMERA#Positive};\n'
        "c,{BATTERY#Good};\n"
        "d,{PRICE#Negative\n"
        " ,{PRICE#Negative};\n"
        "e,{SER&ACC#Neutral};{OTHERS};\n",
    )
    with caplog.at_level(logging.WARNING, logger="absa_lightning.data.formats"):
        examples = read_csv(path, POLARITIES, on_error="skip")
    assert [(ex.text, ex.labels, ex.line) for ex in examples] == [
        ("b\nover\nlines", {"CAMERA": "Positive"}, 3),
        ("e", {"SER&ACC": "Neutral"}, 9),
    ]
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert str(path) in message
    assert "skipped 4 rows" in message
    assert "2 unknown polarity 'Good'" in message
    assert "1 malformed label" in message
    assert "1 empty comment" in message
    # ... and each skipped row, located
    assert f"\n  {path}:2: unknown polarity 'Good'" in message and "'{CAMERA#Good};'" in message
    assert f"\n  {path}:7: malformed label" in message
    assert f"\n  {path}:8: empty comment" in message


def test_skip_lists_the_first_20_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = "".join(f"bad {i},{{CAMERA#Good}};\n" for i in range(25))
    path = write(tmp_path / "Train.csv", "comment,label\nok,{CAMERA#Positive};\n" + rows)
    with caplog.at_level(logging.WARNING, logger="absa_lightning.data.formats"):
        assert len(read_csv(path, POLARITIES, on_error="skip")) == 1
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped 25 rows (25 unknown polarity 'Good')" in message
    assert f"{path}:3: " in message and f"{path}:22: " in message
    assert f"{path}:23: " not in message
    assert message.endswith("… and 5 more")


def test_a_comment_over_csv_default_field_limit_is_read(tmp_path: Path) -> None:
    long = "pin trâu " * 20_000  # 180,000 characters: csv's default limit is 131,072
    path = write(tmp_path / "Train.csv", f'comment,label\n"{long}",{{BATTERY#Positive}};\n')
    (example,) = read_csv(path, POLARITIES)
    assert example.text == long.strip()


def test_jsonl_skip_keeps_good_lines_and_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path / "Dev.jsonl",
        '{"text": "a", "labels": [{"aspect": "CAMERA", "polarity": "Positive"}]}\n'
        "not json\n"
        '{"text": "b", "labels": [{"aspect": "CAMERA", "polarity": 3}]}\n'
        '{"text": "", "labels": []}\n'
        '{"text": "c", "labels": [{"aspect": "OTHERS", "polarity": null}]}\n',
    )
    with caplog.at_level(logging.WARNING, logger="absa_lightning.data.formats"):
        examples = read_jsonl(path, POLARITIES, on_error="skip")
    assert [(ex.text, ex.labels, ex.line) for ex in examples] == [
        ("a", {"CAMERA": "Positive"}, 1),
        ("c", {}, 5),
    ]
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert str(path) in message and "skipped 3 rows" in message
    assert "1 empty comment" in message and "1 Expecting value" in message


def test_skip_on_clean_file_warns_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "a.csv", "comment,label\nx,{CAMERA#Positive};\n")
    with caplog.at_level(logging.WARNING):
        assert len(read_csv(path, POLARITIES, on_error="skip")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_skip_does_not_cover_file_level_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "text,label\nx,{CAMERA#Positive};\n")
    with pytest.raises(DataError, match="missing column"):
        read_csv(path, POLARITIES, on_error="skip")
    path.write_bytes(b"comment,label\n\xff,{CAMERA#Positive};\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_csv(path, POLARITIES, on_error="skip")


@pytest.mark.parametrize("reader", [read_csv, read_jsonl])
def test_unknown_on_error_value_is_rejected(tmp_path: Path, reader) -> None:
    path = write(tmp_path / "a.csv", "comment,label\nx,{CAMERA#Positive};\n")
    with pytest.raises(ValueError, match="on_error"):
        reader(path, POLARITIES, on_error="ignore")
