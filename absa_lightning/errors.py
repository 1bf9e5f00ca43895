"""Errors a person can fix (bad data, config, files) and how the commands report them.

A user error is `AbsaUserError`: each command's entry point (`reports_user_errors`) prints it as
one line, `error: <where>: <what>; <what to do>`, on stderr, writes the same line to the run's
log file, and exits with status 2. `HYDRA_FULL_ERROR=1` shows the traceback instead. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

USER_ERROR_STATUS = 2  # as argparse and most command-line tools exit on bad usage
F = TypeVar("F", bound=Callable[..., Any])

# C0 and C1 control characters but tab and newline, and DEL: ESC sequences recolour, move the
# cursor or retitle a terminal; NUL and the others garble it.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class AbsaUserError(Exception):
    """A mistake in the input, the config or a file: `where: what; fix`, no traceback needed."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        message = f"{where}: {what}" if where else what
        super().__init__(f"{message}; {fix}" if fix else message)


def printable(text: str) -> str:
    """`text` safe to show on a terminal: control characters as `\\x1b`-style escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def report_user_error(error: AbsaUserError) -> str:
    """The one line for `error`, printed on stderr and written to every log file in use."""
    line = printable(f"error: {error}".replace("\n", " "))
    print(line, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):  # the run's train.log / eval.log
            handler.emit(
                logging.makeLogRecord(
                    {"msg": line, "levelno": logging.ERROR, "levelname": "ERROR", "name": __name__}
                )
            )
            handler.flush()
    return line


def reports_user_errors(main: F) -> F:
    """Wrap a command's work: a user error becomes one line and exit status 2.

    Put it inside `@hydra.main`, so that the run's log file is open when the error is written.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except AbsaUserError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            report_user_error(error)
            sys.exit(USER_ERROR_STATUS)

    return wrapper  # type: ignore[return-value]
