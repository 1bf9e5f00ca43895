"""Files written whole or not at all."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **options: Any) -> Iterator[IO]:
    """Write to a temporary file beside `path`, flush it to disk, rename it over `path`.

    An error or a kill while writing leaves the previous file as it was (or none), never a
    cut-off one: the rename is atomic within a file system, and the fsyncs make the new
    contents and the new name durable. The temporary name starts with a dot and ends in
    `.partial`, so nothing takes it for a result (`*.ckpt`, `*.jsonl`).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    target = Path(path)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, mode.replace("w", "x"), **options) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself
    finally:
        os.close(folder)
