"""The suite cannot hang: every test runs under pyproject's timeout, which dumps every stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def test_every_test_has_a_timeout(pytestconfig: pytest.Config) -> None:
    assert 0 < float(pytestconfig.getini("timeout")) <= 900
    assert pytestconfig.getini("timeout_method") == "thread"


def test_a_hung_test_fails_with_its_stack(tmp_path: Path) -> None:
    """pyproject's settings, with the limit cut to 2 s, on a test that would block for a minute."""
    (tmp_path / "test_hangs.py").write_text(
        "import threading\n\ndef test_waits_forever():\n    threading.Event().wait(60)\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(REPO / "pyproject.toml"),
            "-o",
            "timeout=2",
            "-p",
            "no:cacheprovider",
            "-q",
            str(tmp_path / "test_hangs.py"),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Timeout" in result.stdout + result.stderr
    assert "in test_waits_forever" in result.stdout + result.stderr  # the hung frame is named
