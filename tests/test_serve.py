"""absa-serve: the JSON endpoint through a real HTTP client, the page in headless Chromium."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from absa_lightning import AspectSentimentPredictor
from absa_lightning.serve import PredictionServer

COMMENTS = ["Pin trâu, camera hơi mờ", "Máy đẹp 😍 giá rẻ", ""]
CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None
)


@pytest.fixture(scope="module")
def predictor(tiny_run: dict) -> AspectSentimentPredictor:
    return AspectSentimentPredictor.from_checkpoint(tiny_run["best_checkpoint"])


@pytest.fixture(scope="module")
def server(predictor: AspectSentimentPredictor) -> Iterator[PredictionServer]:
    server = PredictionServer(("127.0.0.1", 0), predictor, max_body_bytes=20_000, max_texts=4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def request(url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, or of a POST when there is a body."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def post_json(server: PredictionServer, content) -> tuple[int, dict]:
    status, _, body = request(server.url + "predict", json.dumps(content).encode("utf-8"))
    return status, json.loads(body)


def test_post_predict_answers_with_the_records_of_absa_predict(
    server: PredictionServer, predictor: AspectSentimentPredictor
) -> None:
    status, answer = post_json(server, {"texts": COMMENTS})
    assert status == 200
    assert answer["predictions"] == [p.to_record() for p in predictor.predict(COMMENTS)]
    assert answer["predictions"][2] == {"text": "", "labels": [], "truncated": False}


def test_page_and_info(server: PredictionServer, tiny_run: dict) -> None:
    status, content_type, page = request(server.url)
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b'id="result"' in page and b'fetch("/predict"' in page
    status, _, info = request(server.url + "info")
    assert json.loads(info)["aspects"] == tiny_run["aspects"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "body is not JSON"),
        (json.dumps({"text": "ok"}).encode(), 400, 'expected {"texts"'),
        (json.dumps({"texts": ["ok", 3]}).encode(), 400, "a list of strings"),
        (json.dumps({"texts": ["ok"] * 5}).encode(), 413, "at most 4"),
        (json.dumps({"texts": ["x" * 30_000]}).encode(), 413, "at most 20000"),
        ("\udcff".encode("utf-8", "surrogatepass"), 400, "body is not JSON"),
    ],
)
def test_bad_requests_get_a_status_and_a_reason(
    server: PredictionServer, body: bytes, status: int, message: str
) -> None:
    got, content_type, answer = request(server.url + "predict", body)
    assert (got, content_type) == (status, "application/json; charset=utf-8")
    assert message in json.loads(answer)["error"]


def test_unknown_paths_are_404(server: PredictionServer) -> None:
    assert request(server.url + "nope")[0] == 404
    assert request(server.url + "nope", b"{}")[0] == 404


def test_concurrent_requests_all_succeed(
    server: PredictionServer, predictor: AspectSentimentPredictor
) -> None:
    """Requests arrive on several threads; the predictor (a fast tokenizer) serves one at once."""
    expected = [p.to_record() for p in predictor.predict(COMMENTS[:2])]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: post_json(server, {"texts": COMMENTS[:2]}), range(16)))
    assert all(status == 200 for status, _ in answers)
    assert all(answer["predictions"] == expected for _, answer in answers)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: make install-browser (Debian package)")
def test_page_shows_the_aspects_in_headless_chromium(
    tiny_run: dict, predictor: AspectSentimentPredictor, tmp_path: Path
) -> None:
    """`absa-serve` as a user starts it; the page at /?text=... predicts on load."""
    text = "Pin trâu, camera hơi mờ, giá rẻ"
    ckpt = f"ckpt={tiny_run['best_checkpoint']}"
    # threshold 0: every aspect is shown, so the page has all its colours to show.
    server = subprocess.Popen(
        [sys.executable, "-m", "absa_lightning.serve", ckpt, "port=0", "threshold=0.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "Serving <ckpt> on http://127.0.0.1:<port>/ ..."
        assert "http://127.0.0.1:" in line, line + server.stderr.read()
        url = line.split(" on ")[1].split()[0] + "?" + urllib.parse.urlencode({"text": text})
        browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu"]
        browser += ["--window-size=1000,700", "--virtual-time-budget=20000"]
        dom = subprocess.run(
            [*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120
        ).stdout
        shot = tmp_path / "page.png"
        subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)

    all_aspects = AspectSentimentPredictor.from_checkpoint(
        tiny_run["best_checkpoint"], threshold=0.0
    ).predict([text])[0]
    for a in all_aspects.aspects:
        chip = f'class="aspect polarity-{a.polarity.lower()}" data-aspect="{html.escape(a.aspect)}"'
        assert chip in dom, (a, dom[-3000:])
    colours = {(227, 246, 229), (253, 230, 230), (255, 245, 214)}  # the three chip backgrounds
    pixels = Image.open(shot).convert("RGB").getdata()
    assert sum(p in colours for p in pixels) > 2000  # chips drawn, not only the DOM built
