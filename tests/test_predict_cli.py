"""absa-predict: comments as arguments, on stdin, in CSV, JSON Lines and text files; its
predictions scored by eval.py; its errors as one line."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from absa_lightning.data import DataError, read_jsonl
from absa_lightning.errors import AbsaUserError
from absa_lightning.evaluate import evaluate
from absa_lightning.predict import parser, predict, write_jsonl

LONG = "Pin trâu, camera hơi mờ, " * 99 + "pin ok"  # far past max_length (128 tokens)
COMMENTS = ["Pin trâu, camera hơi mờ", "Máy đẹp 😍 giá rẻ", LONG, "Giao hàng nhanh 中文 ok"]


def config(name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def predict_file(ckpt: str, path: Path, *flags: str) -> list[dict]:
    """`absa-predict --ckpt ... --input path --output <path>.predictions.jsonl` -> the records."""
    out = path.with_suffix(".predictions.jsonl")
    predict(
        parser().parse_args(["--ckpt", ckpt, "--input", str(path), "--output", str(out), *flags])
    )
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def absa_predict(*args: str, stdin: str | None = None, cwd: Path | None = None, **env: str):
    """The command as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "absa_lightning.predict", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **env},
    )


def write_inputs(folder: Path) -> dict[str, Path]:
    """The same comments as CSV (column `review`), JSON Lines and text, a blank one second."""
    rows = [COMMENTS[0], "", *COMMENTS[1:]]
    paths = {kind: folder / f"comments.{kind}" for kind in ("csv", "jsonl", "txt")}
    with open(paths["csv"], "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review"])
        writer.writerows([i, text] for i, text in enumerate(rows))
    lines = [json.dumps({"text": t, "id": i}, ensure_ascii=False) for i, t in enumerate(rows)]
    paths["jsonl"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths["txt"].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return paths


def test_csv_jsonl_and_text_give_the_same_records(tiny_run: dict, tmp_path: Path) -> None:
    ckpt = tiny_run["best_checkpoint"]
    paths = write_inputs(tmp_path)
    by_kind = {
        "csv": predict_file(ckpt, paths["csv"], "--text-column", "review"),
        "jsonl": predict_file(ckpt, paths["jsonl"]),
        "txt": predict_file(ckpt, paths["txt"]),
    }
    records = by_kind["txt"]
    assert [r["text"] for r in records] == COMMENTS  # the blank line is left out
    assert [r["line"] for r in records] == [1, 3, 4, 5]  # ... but the lines still point home
    assert [r["truncated"] for r in records] == [False, False, True, False]
    assert [r["line"] for r in by_kind["csv"]] == [2, 4, 5, 6]  # after the header
    strip = [{k: v for k, v in r.items() if k != "line"} for r in records]
    for kind in ("csv", "jsonl"):
        assert [{k: v for k, v in r.items() if k != "line"} for r in by_kind[kind]] == strip, kind
    labels = [label for r in records for label in r["labels"]]
    assert labels, "the tiny model predicts some aspects"
    assert set(labels[0]) == {"aspect", "polarity", "polarity_probability", "mentioned_probability"}
    # The checkpoint's decoding: P(mentioned) at least the aspect's tuned threshold, else argmax
    # (which reports an aspect only above 0.5).
    thresholds = tiny_run["thresholds"]
    for label in labels:
        assert thresholds.get(label["aspect"], 0.5) <= label["mentioned_probability"] <= 1


def test_comments_as_arguments_print_a_table(tiny_run: dict, capsys: pytest.CaptureFixture) -> None:
    args = parser().parse_args(
        ["--ckpt", tiny_run["best_checkpoint"], "Pin trâu, [b]camera[/b]", "Máy \x1b[31mđẹp\x00"]
    )
    predictions = predict(args)
    shown = capsys.readouterr().out
    assert "Pin trâu, [b]camera[/b]" in shown  # the comment as typed, with its comma, not markup
    assert "P(mentioned)" in shown
    assert all(a.aspect in shown for p in predictions for a in p.aspects)
    assert "\x1b" not in shown and "\x00" not in shown  # no control character reaches the terminal
    assert "Máy \\x1b[31mđẹp\\x00" in shown  # shown escaped instead


def test_comments_from_stdin_to_jsonl_on_stdout_or_a_table(
    tiny_run: dict, capsys: pytest.CaptureFixture
) -> None:
    args = parser().parse_args(["--ckpt", tiny_run["best_checkpoint"], "--output", "-"])
    predict(args, stdin=io.StringIO("Pin trâu, camera hơi mờ\n\nMáy đẹp\n"))
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["text"], r["line"]) for r in records] == [
        ("Pin trâu, camera hơi mờ", 1),
        ("Máy đẹp", 3),
    ]
    args = parser().parse_args(["--ckpt", tiny_run["best_checkpoint"]])  # no --output: a table
    predict(args, stdin=io.StringIO("Pin trâu, camera hơi mờ\n"))
    shown = capsys.readouterr().out
    assert "Pin trâu, camera hơi mờ" in shown and "P(mentioned)" in shown


def test_csv_with_a_text_column_needs_no_flag(tiny_run: dict, tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('id,text\n1,"Pin trâu, camera hơi mờ"\n2,Máy đẹp\n', encoding="utf-8")
    records = predict_file(tiny_run["best_checkpoint"], path)
    assert [r["text"] for r in records] == ["Pin trâu, camera hơi mờ", "Máy đẹp"]


def test_a_long_csv_field_is_read(tiny_run: dict, tmp_path: Path) -> None:
    """Over csv's default limit of 131,072 characters."""
    path = tmp_path / "long.csv"
    long = "pin trâu " * 20_000
    path.write_text(f'comment\n"{long}"\nok\n', encoding="utf-8")
    records = predict_file(tiny_run["best_checkpoint"], path)
    assert [r["line"] for r in records] == [2, 3]
    assert records[0]["truncated"]


def test_output_in_a_missing_folder_fails_before_predicting(
    tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("absa_lightning.predict.load_predictor", pytest.fail)  # never reached
    out = tmp_path / "nope" / "preds.jsonl"
    args = parser().parse_args(["--ckpt", tiny_run["best_checkpoint"], "--output", str(out), "x"])
    with pytest.raises(AbsaUserError, match=r"--output .*preds.jsonl: the folder .*nope does not"):
        predict(args)


def test_a_failed_write_keeps_the_previous_file(tiny_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    out.write_text("previous\n")
    good = predict(parser().parse_args(["--ckpt", tiny_run["best_checkpoint"], "ok"]))
    with pytest.raises(AttributeError):
        write_jsonl(out, [*good, "not a prediction"], [1, 2])  # fails on the second record
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["preds.jsonl"]  # no temporary file left
    write_jsonl(out, good, [1])
    assert json.loads(out.read_text())["text"] == "ok"


def test_blank_comments_say_why(tiny_run: dict) -> None:
    args = parser().parse_args(["--ckpt", tiny_run["best_checkpoint"], ""])
    with pytest.raises(AbsaUserError, match="every comment is blank: nothing to predict"):
        predict(args)


def test_predictions_round_trip_through_eval(
    tiny_run: dict, small_visfd: Path, tmp_path: Path
) -> None:
    """Predicting the test split and scoring the file gives the checkpoint's test metrics."""
    records = predict_file(tiny_run["best_checkpoint"], small_visfd / "Test.csv")
    predictions = small_visfd / "Test.predictions.jsonl"
    examples = read_jsonl(predictions, ["Positive", "Negative", "Neutral"])  # training's reader
    assert len(examples) == len(records)

    cfg = config(
        "eval", f"predictions={predictions}", f"data.root={small_visfd}", f"output_dir={tmp_path}"
    )
    scored = evaluate(cfg)
    for key, value in scored.items():
        assert value == pytest.approx(tiny_run["test"][key], abs=1e-6), key
    assert scored["test/aspect_f1"] > 0  # not a trivial match of two empty predictions
    written = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert written["predictions"] == str(predictions)
    assert set(written["per_aspect"]) == set(tiny_run["aspects"])


def test_eval_refuses_predictions_of_other_comments(
    tiny_run: dict, small_visfd: Path, tmp_path: Path
) -> None:
    predict_file(tiny_run["best_checkpoint"], small_visfd / "Dev.csv")
    cfg = config(
        "eval",
        f"predictions={small_visfd / 'Dev.predictions.jsonl'}",
        f"data.root={small_visfd}",
        f"output_dir={tmp_path}",
    )
    with pytest.raises((ValueError, DataError), match=r"comments, but the test split|not comment"):
        evaluate(cfg)

    shuffled = tmp_path / "shuffled.jsonl"
    records = predict_file(tiny_run["best_checkpoint"], small_visfd / "Test.csv")
    records[0], records[1] = records[1], records[0]
    shuffled.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    cfg.predictions = str(shuffled)
    with pytest.raises(DataError, match=r"shuffled.jsonl:1: not comment 1 of the test split"):
        evaluate(cfg)

    cfg.ckpt_path = tiny_run["best_checkpoint"]
    with pytest.raises(ValueError, match="not both"):
        evaluate(cfg)


@pytest.mark.parametrize(
    ("name", "content", "flags", "error", "message"),
    [
        ("c.csv", "id,review\n1,ok\n", [], DataError, r"c.csv:1: no column comment or text"),
        ("c.txt", b"ok\n\xff\xfe oops\n", [], DataError, r"c.txt:2: not UTF-8 text"),
        ("c.jsonl", '{"text": "ok"}\n{"body": "ok"}\n', [], DataError, r"c.jsonl:2: no string"),
        ("c.jsonl", '{"text": "ok"}\n{"text": \n', [], DataError, r"c.jsonl:2: not JSON"),
        ("c.xlsx", "ok\n", [], AbsaUserError, r"unknown suffix '.xlsx'"),
        ("c.txt", "ok\n", ["x"], AbsaUserError, "as arguments or --input FILE, not both"),
        ("c.txt", "ok\n", ["--threshold", '{"NOPE": 0.5}'], ValueError, "unknown aspect"),
        ("c.txt", "ok\n", ["--ckpt", "nope.ckpt"], AbsaUserError, "nope.ckpt: no such checkpoint"),
    ],
)
def test_bad_input_is_a_clear_error(
    tiny_run: dict, tmp_path: Path, name: str, content, flags, error, message: str
) -> None:
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(error, match=message):
        predict_file(tiny_run["best_checkpoint"], path, *flags)


def test_a_csv_field_over_the_limit_is_located(
    tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("absa_lightning.data.formats.CSV_FIELD_LIMIT", 100)
    path = tmp_path / "c.csv"
    path.write_text('comment\nok\n"' + "x" * 150 + '"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c.csv:3: not valid CSV .*a quote"):
        predict_file(tiny_run["best_checkpoint"], path)


@pytest.mark.slow
def test_command_line_writes_only_its_output(tiny_run: dict, tmp_path: Path) -> None:
    """As a user types it: no outputs/ folder, no .hydra/, no log file."""
    (tmp_path / "comments.txt").write_text("Pin trâu\n\nCamera mờ\n", encoding="utf-8")
    ckpt = tiny_run["best_checkpoint"]
    result = absa_predict("--ckpt", ckpt, "-i", "comments.txt", "-o", "preds.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comments.txt", "preds.jsonl"]
    assert len((tmp_path / "preds.jsonl").read_text().splitlines()) == 2
    assert "comments.txt: left out 1 blank comment(s), line(s) 2" in result.stderr


@pytest.mark.slow
def test_a_user_error_is_one_line_and_status_2(tiny_run: dict, tmp_path: Path) -> None:
    cut = tmp_path / "cut.ckpt"
    data = Path(tiny_run["best_checkpoint"]).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    result = absa_predict("--ckpt", str(cut), "Pin trâu")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {cut}: not a readable checkpoint, cut off")
    assert "copy the file again" in line  # HYDRA_FULL_ERROR=1: test_errors
