"""Offline tests for absa_lightning.data.download, served from a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import socket
import struct
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import write_synthetic_visfd

from absa_lightning.data.download import ChecksumError, DatasetNotFoundError, ensure_dataset

SHARED_DATA_DIR = Path(
    os.environ.get("ABSA_DATA_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "uit-visfd"
)
ARCHIVE_NAME = "UIT-ViSFD.zip"
ARCHIVE_SHA256 = "d3c068814d23b11473c6bf774a81ffe1916b304501ac10e0c99fcd15f11a16a8"
CSV_FILES = ("Train.csv", "Dev.csv", "Test.csv")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


class _Server:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: list[str] = []
        requests = self.requests

        class QuietHandler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

        handler = functools.partial(QuietHandler, directory=str(directory))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self._running = True

    def url(self, name: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)


@pytest.fixture
def server(tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    srv = _Server(served)
    yield srv
    srv.stop()


@pytest.fixture
def real_archive(server: _Server) -> Path:
    source = SHARED_DATA_DIR / ARCHIVE_NAME
    if not source.is_file() or not (SHARED_DATA_DIR / "SHA256SUMS").is_file():
        pytest.skip(
            f"UIT-ViSFD archive or SHA256SUMS not found in {SHARED_DATA_DIR} "
            "(set ABSA_DATA_DIR to the folder holding UIT-ViSFD.zip)"
        )
    return Path(shutil.copyfile(source, server.directory / ARCHIVE_NAME))


@pytest.fixture
def made_up_archive(server: _Server, tmp_path: Path) -> tuple[Path, str]:
    """UIT-ViSFD.zip of made-up comments in its format, deflated as upstream's: (path, SHA-256)."""
    files = write_synthetic_visfd(
        tmp_path / "made_up", {"Train.csv": 128, "Dev.csv": 48, "Test.csv": 48}
    )
    archive = server.directory / ARCHIVE_NAME
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in CSV_FILES:
            zf.write(files / name, name)
    return archive, _sha256(archive)


@pytest.fixture
def expected_sums() -> dict[str, str]:
    sums = {}
    for line in (SHARED_DATA_DIR / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


@pytest.fixture
def dead_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"


def test_downloads_and_extracts_real_archive(
    tmp_path: Path, server: _Server, real_archive: Path, expected_sums: dict[str, str]
) -> None:
    root = tmp_path / "data" / "nested"
    result = ensure_dataset(root, CSV_FILES, url=server.url(ARCHIVE_NAME), sha256=ARCHIVE_SHA256)

    assert result == root
    assert server.requests == [f"/{ARCHIVE_NAME}"]
    assert _leftovers(root) == sorted(CSV_FILES)
    for name in CSV_FILES:
        assert _sha256(root / name) == expected_sums[name]


def test_second_call_does_not_touch_network(
    tmp_path: Path, server: _Server, made_up_archive: tuple[Path, str], dead_url: str
) -> None:
    root = tmp_path / "data"
    ensure_dataset(root, CSV_FILES, url=server.url(ARCHIVE_NAME), sha256=made_up_archive[1])
    assert len(server.requests) == 1

    assert ensure_dataset(root, CSV_FILES, url=server.url(ARCHIVE_NAME)) == root
    assert len(server.requests) == 1

    server.stop()
    assert ensure_dataset(root, CSV_FILES, url=dead_url, sha256="0" * 64) == root
    assert ensure_dataset(str(root), CSV_FILES) == root


def test_corrupted_archive_is_refused(
    tmp_path: Path, server: _Server, made_up_archive: tuple[Path, str]
) -> None:
    archive, expected = made_up_archive
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    archive.write_bytes(bytes(data))
    actual = hashlib.sha256(data).hexdigest()
    root = tmp_path / "data"
    url = server.url(ARCHIVE_NAME)

    with pytest.raises(ChecksumError) as excinfo:
        ensure_dataset(root, CSV_FILES, url=url, sha256=expected)

    message = str(excinfo.value)
    assert "checksum" in message.lower()
    assert expected in message
    assert actual in message
    assert url in message
    assert _leftovers(root) == []


def test_corrupted_member_leaves_no_partial_file(
    tmp_path: Path, server: _Server, made_up_archive: tuple[Path, str]
) -> None:
    archive, _ = made_up_archive
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("Train.csv")
        expected = {name: hashlib.sha256(zf.read(name)).hexdigest() for name in CSV_FILES}
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    archive.write_bytes(bytes(data))
    root = tmp_path / "data"

    with pytest.raises(DatasetNotFoundError, match="corrupt"):
        ensure_dataset(root, ["Dev.csv", "Test.csv", "Train.csv"], url=server.url(ARCHIVE_NAME))

    assert _leftovers(root) == ["Dev.csv", "Test.csv"]
    for name in ("Dev.csv", "Test.csv"):
        assert _sha256(root / name) == expected[name]


def test_unreachable_url_names_files_and_folder(tmp_path: Path, dead_url: str) -> None:
    root = tmp_path / "data"

    with pytest.raises(DatasetNotFoundError) as excinfo:
        ensure_dataset(root, CSV_FILES, url=dead_url, timeout=5)

    message = str(excinfo.value)
    for name in CSV_FILES:
        assert name in message
    assert str(root.resolve()) in message
    assert dead_url in message
    assert "ABSA_DATA_DIR" in message
    assert isinstance(excinfo.value.__cause__, OSError)
    assert _leftovers(root) == []


def test_http_error_is_reported(tmp_path: Path, server: _Server) -> None:
    root = tmp_path / "data"
    url = server.url("missing.zip")

    with pytest.raises(DatasetNotFoundError, match="404") as excinfo:
        ensure_dataset(root, CSV_FILES, url=url)

    assert url in str(excinfo.value)
    assert _leftovers(root) == []


def test_missing_files_without_url(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "Train.csv").write_text("index,comment,n_star,date_time,label\n")

    with pytest.raises(DatasetNotFoundError) as excinfo:
        ensure_dataset(root, CSV_FILES)

    message = str(excinfo.value)
    expected_part, missing_part = message.split("missing:", 1)
    for name in CSV_FILES:
        assert name in expected_part
    assert "Train.csv" not in missing_part
    assert "Dev.csv" in missing_part
    assert "Test.csv" in missing_part
    assert str(root.resolve()) in message
    assert "data.root" in message
    assert "ABSA_DATA_DIR" in message


def test_archive_in_subfolder_and_missing_member(tmp_path: Path, server: _Server) -> None:
    archive = server.directory / "partial.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("UIT-ViSFD/Train.csv", "a,b\n1,2\n")
        zf.writestr("UIT-ViSFD/Dev.csv", "a,b\n3,4\n")
    url = server.url("partial.zip")

    missing_root = tmp_path / "missing"
    with pytest.raises(DatasetNotFoundError) as excinfo:
        ensure_dataset(missing_root, CSV_FILES, url=url)
    message = str(excinfo.value)
    assert "does not contain Test.csv" in message
    assert _leftovers(missing_root) == []

    ok_root = tmp_path / "ok"
    assert ensure_dataset(ok_root, ["Train.csv", "Dev.csv"], url=url) == ok_root
    assert _leftovers(ok_root) == ["Dev.csv", "Train.csv"]
    assert (ok_root / "Dev.csv").read_text() == "a,b\n3,4\n"


def test_only_missing_files_are_extracted(tmp_path: Path, server: _Server) -> None:
    archive = server.directory / "small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Train.csv", "from archive\n")
        zf.writestr("Dev.csv", "from archive\n")
    root = tmp_path / "data"
    root.mkdir()
    (root / "Train.csv").write_text("local\n")

    ensure_dataset(root, ["Train.csv", "Dev.csv"], url=server.url("small.zip"))

    assert (root / "Train.csv").read_text() == "local\n"
    assert (root / "Dev.csv").read_text() == "from archive\n"


def test_unwritable_root_names_the_folder(tmp_path: Path, server: _Server) -> None:
    root = tmp_path / "not-a-dir"
    root.write_text("")

    with pytest.raises(DatasetNotFoundError) as excinfo:
        ensure_dataset(root, CSV_FILES, url=server.url(ARCHIVE_NAME))

    assert "Cannot write" in str(excinfo.value)
    assert str(root.resolve()) in str(excinfo.value)
    assert server.requests == []


def test_a_user_folder_is_never_downloaded_into(tmp_path: Path, server: _Server) -> None:
    """A missing Dev.csv beside the user's own files: named, and nothing fetched."""
    archive = server.directory / "small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in CSV_FILES:
            zf.writestr(name, "from upstream\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("Train.csv", "Test.csv"):
        (mine / name).write_text("my own\n")

    with pytest.raises(DatasetNotFoundError) as excinfo:
        ensure_dataset(mine, CSV_FILES, url=server.url("small.zip"), into=tmp_path / "default")
    message = str(excinfo.value)
    assert message.startswith(f"data.root={mine}: missing Dev.csv (it has Train.csv, Test.csv)")
    assert "only the dataset's own folder" in message
    assert server.requests == []
    assert _leftovers(mine) == ["Test.csv", "Train.csv"]

    default = ensure_dataset(
        tmp_path / "default", CSV_FILES, url=server.url("small.zip"), into=tmp_path / "default"
    )
    assert _leftovers(default) == sorted(CSV_FILES)
