"""Make sure a dataset's files are on disk, downloading and unpacking its archive if needed.

Training runs call :func:`ensure_dataset` before reading CSVs so that a fresh machine can fetch
the data once, while a prepared (possibly read-only) data folder is used as is and never
triggers network access. Downloads go only into the dataset's own folder (`into`): a folder of
the user's with a file missing is reported, never topped up with upstream's files.

The download is `torch.hub.download_url_to_file` (already there with torch; it writes beside the
target and renames); pooch would do the same but bring requests and platformdirs with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
import urllib.error
import uuid
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch.hub import download_url_to_file

from absa_lightning.errors import AbsaUserError

logger = logging.getLogger(__name__)

_CHUNK_SIZE = 1 << 20


class DatasetNotFoundError(AbsaUserError, FileNotFoundError):
    """The dataset files are missing and could not be obtained; the message says how to fix it."""


class ChecksumError(AbsaUserError):
    """The downloaded archive is not the one expected, so nothing was extracted from it."""


def ensure_dataset(
    root: str | Path,
    files: Sequence[str],
    url: str | Mapping[str, str] | None = None,
    sha256: str | Mapping[str, str] | None = None,
    timeout: float = 60.0,
    into: str | Path | None = None,
) -> Path:
    """Return ``root`` once every name in ``files`` exists there.

    Files already present are trusted and the network is never touched, so ``root`` may be
    read-only. Otherwise, when ``root`` is ``into`` (the dataset's own folder; None: any
    ``root``), the zip archive at ``url`` is downloaded into ``root``, checked against
    ``sha256`` when given, and the members whose base name is in ``files`` are extracted into
    ``root``. With ``url`` a mapping {file name: URL} (files served one by one, e.g. MAMS),
    each missing file is downloaded from its own URL and checked against its entry in the
    mapping ``sha256``. Another folder with files missing is an error that names them.

    Raises:
        DatasetNotFoundError: files are missing and there is no ``url``, the download failed,
            ``root`` cannot be written, or the archive lacks some of the files or is corrupt.
        ChecksumError: the downloaded archive does not match ``sha256``.
    """
    root = Path(root).expanduser()
    files = list(files)
    missing = [name for name in files if not (root / name).is_file()]
    if not missing:
        return root
    if url is None:
        raise DatasetNotFoundError(
            f"{_expected(root, files, missing)} Put the files there, or point data.root=... or "
            "the ABSA_DATA_DIR environment variable at a folder that holds them."
        )
    if into is not None and root.resolve() != Path(into).expanduser().resolve():
        present = [name for name in files if name not in missing]
        raise DatasetNotFoundError(
            f"missing {', '.join(missing)}"
            + (f" (it has {', '.join(present)})" if present else ""),
            f"data.root={root}",
            f"put the file(s) there; only the dataset's own folder {into} is downloaded into "
            "(unset data.root and ABSA_DATA_DIR to use it), so your files never mix with "
            "upstream's",
        )

    _make_writable_dir(root, files, missing)
    if isinstance(url, Mapping):
        _download_files(root, files, missing, url, sha256 or {}, timeout)
        return root
    logger.info("Downloading %s into %s (missing: %s)", url, root.resolve(), ", ".join(missing))
    archive = root / f".download-{uuid.uuid4().hex}.zip"
    try:
        _download(url, archive, timeout, root, files, missing)
        _check_sha256(archive, sha256, url, f"nothing was extracted into {root.resolve()}")
        _extract(archive, root, missing, url)
    finally:
        # The archive is removed: once the CSVs exist it is never read again, and keeping it
        # would double the space used in a data folder that may be shared.
        archive.unlink(missing_ok=True)
    logger.info("Extracted %s into %s", ", ".join(missing), root.resolve())
    return root


def _expected(root: Path, files: Sequence[str], missing: Sequence[str]) -> str:
    return (
        f"Expected dataset files {', '.join(files)} in folder {root.resolve()}; "
        f"missing: {', '.join(missing)}."
    )


def _manual_hint(root: Path) -> str:
    return (
        f"Download the archive by hand and unzip it into {root.resolve()}, or set data.root=... "
        "or the ABSA_DATA_DIR environment variable to a folder that holds the files."
    )


def _make_writable_dir(root: Path, files: Sequence[str], missing: Sequence[str]) -> None:
    """Fail early, naming the folder, rather than with a bare OSError mid-download."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        raise DatasetNotFoundError(
            f"Cannot write to the data folder {root.resolve()} ({err}). "
            f"{_expected(root, files, missing)} {_manual_hint(root)}"
        ) from err


def _download(
    url: str,
    archive: Path,
    timeout: float,
    root: Path,
    files: Sequence[str],
    missing: Sequence[str],
) -> None:
    """``url`` into ``archive``; a failure names the files, the folder and how to fix it."""
    default_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # download_url_to_file takes none: a stalled server hangs
    try:
        download_url_to_file(url, str(archive), progress=False)
    except (OSError, ValueError) as err:
        if isinstance(err, urllib.error.HTTPError):
            reason = f"HTTP {err.code} {err.reason}"
        elif isinstance(err, urllib.error.URLError):
            reason = str(err.reason)
        else:
            reason = str(err) or type(err).__name__
        raise DatasetNotFoundError(
            f"Could not download {url}: {reason}. {_expected(root, files, missing)} "
            f"{_manual_hint(root)}"
        ) from err
    finally:
        socket.setdefaulttimeout(default_timeout)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None, url: str, consequence: str) -> None:
    """A download whose SHA-256 is not `expected` (None: not checked) is refused."""
    if expected is None:
        return
    digest = _sha256(path)
    if digest != expected.lower():
        raise ChecksumError(
            f"Checksum mismatch for {url}: expected sha256 {expected.lower()}, got {digest}. "
            f"The download was discarded; {consequence}."
        )


def _extract(archive: Path, root: Path, names: Sequence[str], url: str) -> None:
    """Extract members by base name; each file appears under its final name only when complete."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members: dict[str, zipfile.ZipInfo] = {}
            for info in zf.infolist():
                base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
                if not info.is_dir() and base in names:
                    members.setdefault(base, info)
            absent = [name for name in names if name not in members]
            if absent:
                raise DatasetNotFoundError(
                    f"The archive from {url} does not contain {', '.join(absent)} "
                    f"(it has: {', '.join(i.filename for i in zf.infolist()) or 'nothing'}). "
                    f"{_manual_hint(root)}"
                )
            for name in names:
                _extract_member(zf, members[name], root / name)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DatasetNotFoundError(
            f"The archive downloaded from {url} is corrupt ({err}). {_manual_hint(root)}"
        ) from err


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            shutil.copyfileobj(src, out, _CHUNK_SIZE)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _download_files(
    root: Path,
    files: Sequence[str],
    missing: Sequence[str],
    urls: Mapping[str, str],
    sha256: Mapping[str, str],
    timeout: float,
) -> None:
    """Each missing file from its own URL; it appears under its name only once complete and
    checked against its SHA-256."""
    absent = [name for name in missing if name not in urls]
    if absent:
        raise DatasetNotFoundError(
            f"No download URL for {', '.join(absent)}. {_expected(root, files, missing)} "
            "Put the files there, or set data.root=... to a folder that holds them."
        )
    for name in missing:
        url, expected = urls[name], sha256.get(name)
        logger.info("Downloading %s into %s", url, (root / name).resolve())
        part = root / f".{name}.{uuid.uuid4().hex}.part"
        try:
            _download(url, part, timeout, root, files, missing)
            _check_sha256(part, expected, url, f"{(root / name).resolve()} was not written")
            os.replace(part, root / name)
        finally:
            part.unlink(missing_ok=True)
