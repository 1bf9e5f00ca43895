"""Errors a person can fix (bad data, config, files) and how the commands report them.

A user error is `AbsaUserError`: each command's entry point (`reports_user_errors`) prints it as
one line, `error: <where>: <what>; <what to do>`, on stderr, writes the same line to the run's
log file, and exits with status 2. `HYDRA_FULL_ERROR=1` shows the traceback instead. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

USER_ERROR_STATUS = 2  # as argparse and most command-line tools exit on bad usage
F = TypeVar("F", bound=Callable[..., Any])

# C0 and C1 control characters but tab and newline, and DEL: ESC sequences recolour, move the
# cursor or retitle a terminal; NUL and the others garble it.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class AbsaUserError(ValueError):
    """A mistake in the input, the config or a file: `where: what; fix`, no traceback needed.

    A ValueError (a value the user gave is wrong), so callers of the Python API that catch
    those catch it too.
    """

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
            if _in_multirun():
                raise  # the sweep goes on with its other jobs; its summary lists this one
            sys.exit(USER_ERROR_STATUS)

    return wrapper  # type: ignore[return-value]


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_arguments(settings: Mapping[str, Any], key: str) -> None:
    """Each setting of a `_target_` config group that its target's type hints rule out, as a
    user error before any work starts (`trainer.max_epochs=abc` would fail deep in Lightning,
    after the data has loaded). Settings whose hints this cannot judge pass."""
    from hydra.utils import get_method  # the user's own config names the target: it may import

    target = settings.get("_target_")
    if not isinstance(target, str):
        return
    function = get_method(target)
    try:
        hints = typing.get_type_hints(function.__init__ if inspect.isclass(function) else function)
    except Exception:  # hints that do not resolve here: nothing to check against
        return
    for name, value in settings.items():
        if name.startswith("_") or name not in hints:
            continue
        if _fits(value, hints[name]) is False:
            raise AbsaUserError(
                f"{value!r} is not {_describe(hints[name])}",
                f"{key}.{name}={value}",
                f"give {key}.{name} a value of that kind",
            )


def _fits(value: Any, hint: Any) -> bool | None:
    """Whether `value` (a config value) fits `hint`; None when this cannot tell."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        fits = [_fits(value, arg) for arg in args]
        return True if True in fits else None if None in fits else False
    if origin is typing.Literal:
        return value in args
    simple = {
        type(None): value is None,
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    return simple.get(hint) if isinstance(hint, type) else None


def _describe(hint: Any) -> str:
    names = {
        type(None): "null",
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
    }
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    return names.get(hint, getattr(hint, "__name__", str(hint)))
