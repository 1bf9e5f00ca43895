"""Optional text preprocessing, `data.preprocess`: a name from `PREPROCESSORS`, with arguments.

`data.preprocess=segment_words`, or `{name: normalize_unicode, form: NFC}`. A checkpoint and an
exported model keep this plain data, and loading one looks the name up here: a model file can
pick one of these functions and its arguments (strings, numbers, booleans), nothing else. The
`{_target_: absa_lightning.data.preprocess.<name>, _partial_: true}` form of older checkpoints
is read the same way, by that exact name, and nothing is imported.
"""

from __future__ import annotations

import functools
import inspect
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from absa_lightning.errors import AbsaUserError

Preprocess = Callable[[str], str]
_LEGACY_PREFIX = "absa_lightning.data.preprocess."


def segment_words(text: str) -> str:
    """Vietnamese word segmentation (`điện thoại` -> `điện_thoại`), which PhoBERT expects.

    Uses pyvi's CRF segmenter, which ships its model: pip install -e '.[phobert]'.
    """
    try:
        from pyvi import ViTokenizer
    except ImportError as err:
        raise AbsaUserError(
            "data.preprocess=segment_words needs pyvi", fix="pip install -e '.[phobert]'"
        ) from err
    return ViTokenizer.tokenize(text)


def normalize_unicode(text: str, form: str = "NFC") -> str:
    """One Unicode form for every comment: Vietnamese typed on different keyboards spells the
    same letter composed (`ạ`) or decomposed (`a` + combining dot), which tokenize apart."""
    return unicodedata.normalize(form, text)


PREPROCESSORS: dict[str, Callable[..., str]] = {
    "segment_words": segment_words,
    "normalize_unicode": normalize_unicode,
}
_ARGUMENT_CHOICES = {("normalize_unicode", "form"): ("NFC", "NFD", "NFKC", "NFKD")}


def preprocess_spec(spec: Any, where: str = "data.preprocess") -> dict[str, Any] | None:
    """`spec` checked and in its stored form, `{"name": ..., **arguments}` (None: no
    preprocessing). `where` (the config key, or the file and field) heads any error."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise AbsaUserError(
            f"a {type(spec).__name__}, not a name or {{name: ..., arguments}}", where, _known()
        )
    spec = dict(spec)
    if "_target_" in spec and "name" not in spec:  # checkpoints written before the registry
        target = spec.pop("_target_")
        spec.pop("_partial_", None)
        if not (isinstance(target, str) and target.startswith(_LEGACY_PREFIX)):
            raise AbsaUserError(f"names {target!r}, which is not a preprocessor", where, _known())
        spec["name"] = target.removeprefix(_LEGACY_PREFIX)
    name = spec.pop("name", None)
    if name not in PREPROCESSORS:
        raise AbsaUserError(f"unknown preprocessor {name!r}", where, _known())
    function = PREPROCESSORS[name]
    for key, value in spec.items():
        if not isinstance(value, str | int | float | bool):
            raise AbsaUserError(
                f"argument {key!r} of {name} is a {type(value).__name__}",
                where,
                "arguments are strings, numbers or booleans",
            )
        choices = _ARGUMENT_CHOICES.get((name, key))
        if choices and value not in choices:
            raise AbsaUserError(f"{key}={value!r}", where, f"{name}'s {key} is one of {choices}")
    try:
        inspect.signature(function).bind("text", **spec)
    except TypeError as err:
        raise AbsaUserError(f"{name}: {err}", where) from None
    return {"name": name, **spec}


def build_preprocess(spec: Any, where: str = "data.preprocess") -> Preprocess | None:
    """The function that `spec` names, with its arguments bound; None for no preprocessing."""
    checked = preprocess_spec(spec, where)
    if checked is None:
        return None
    name = checked.pop("name")
    return functools.partial(PREPROCESSORS[name], **checked)


def _known() -> str:
    return f"use one of {sorted(PREPROCESSORS)} (absa_lightning.data.preprocess) or null"
