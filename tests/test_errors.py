"""User errors: one line (what, where, what to do), exit status 2, written to the run's log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUIET, REPO, TINY

from absa_lightning.checkpointing import read_checkpoint, resume_checkpoint
from absa_lightning.errors import (
    AbsaUserError,
    check_arguments,
    printable,
    report_user_error,
    reports_user_errors,
)


def test_control_characters_are_escaped() -> None:
    assert printable("a\x1b[31mb\x00c\x07\x9b\td\ne") == "a\\x1b[31mb\\x00c\\x07\\x9b\td\ne"
    assert printable("Pin trâu, camera hơi mờ 😍") == "Pin trâu, camera hơi mờ 😍"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", r"trainer.max_epochs=abc: 'abc' is not an integer or null"),
        (2.5, r"trainer.max_epochs=2.5: 2.5 is not an integer or null"),
    ],
)
def test_trainer_settings_are_checked_against_lightning(value, message: str) -> None:
    settings = {"_target_": "lightning.pytorch.Trainer", "max_epochs": value, "devices": "auto"}
    with pytest.raises(AbsaUserError, match=message):
        check_arguments(settings, "trainer")
    check_arguments({**settings, "max_epochs": 3}, "trainer")  # passes


def test_a_cut_checkpoint_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AbsaUserError, match=rf"{path}: not a readable checkpoint, cut off"):
        read_checkpoint(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(AbsaUserError, match=rf"{path}: not a checkpoint of train.py"):
        read_checkpoint(path)


def test_resuming_from_a_cut_checkpoint_names_it(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    assert resume_checkpoint(tmp_path, str(path), "auto") == str(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AbsaUserError, match=rf"ckpt_path={path}: not a readable checkpoint"):
        resume_checkpoint(tmp_path, str(path), "auto")


def test_the_line_goes_to_stderr_and_the_log_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        line = report_user_error(AbsaUserError("bad \x1b[2J", "data.root=x", "fix it"))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert line == "error: data.root=x: bad \\x1b[2J; fix it"
    assert capsys.readouterr().err == line + "\n"
    assert (tmp_path / "train.log").read_text() == line + "\n"


def train(*overrides: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *TINY, *QUIET, *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_a_bad_trainer_setting_is_one_line_before_the_data_loads(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = ["trainer.max_epochs=abc", f"data.root={tmp_path / 'nope'}"]  # no data needed
    result = train(*overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-3000:]
    line = "error: trainer.max_epochs=abc: 'abc' is not an integer or null; "
    assert result.stderr.splitlines()[-1].startswith(line)
    assert "Traceback" not in result.stderr
    assert line in (run_dir / "train.log").read_text()  # why the run failed, in its log


def test_every_command_reports_a_user_error_as_one_line_unless_hydra_full_error(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reports_user_errors`, which wraps train.py, eval.py and the absa-* commands: status 2
    and the line; HYDRA_FULL_ERROR=1 lets the error (and its traceback) through; a bug too."""

    @reports_user_errors
    def command(error: Exception) -> None:
        raise error

    with pytest.raises(SystemExit) as exit_info:
        command(AbsaUserError("no such file", "data.root=/x", "set it"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: data.root=/x: no such file; set it\n"
    with pytest.raises(KeyError):  # not a user error: a bug, with its traceback
        command(KeyError("k"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(AbsaUserError, match="no such file"):
        command(AbsaUserError("no such file", "data.root=/x", "set it"))
    assert capsys.readouterr().err == ""
