"""absa-serve: the JSON endpoint through real HTTP clients, the batcher, the page in Chromium.

Every client here has a socket timeout and every server a bounded start and stop: no test hangs.
"""

from __future__ import annotations

import asyncio
import html
import http.client
import json
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from absa_lightning import AspectSentimentPredictor
from absa_lightning.serve import MicroBatcher, PredictionServer, ServeSettings

COMMENTS = ["Pin trâu, camera hơi mờ", "Máy đẹp 😍 giá rẻ", ""]
CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None
)
TIMEOUT_S = 60  # any single client call


@pytest.fixture(scope="module")
def predictor(tiny_run: dict) -> AspectSentimentPredictor:
    return AspectSentimentPredictor.from_checkpoint(tiny_run["best_checkpoint"])


def start_server(predictor: AspectSentimentPredictor, **settings) -> PredictionServer:
    limits = {"max_body_bytes": 250_000, "max_texts_per_request": 4, "max_comment_chars": 1000}
    return PredictionServer(predictor, ServeSettings(port=0, **{**limits, **settings})).start()


@pytest.fixture(scope="module")
def server(predictor: AspectSentimentPredictor) -> Iterator[PredictionServer]:
    server = start_server(predictor, body_timeout_s=2.0, headers_timeout_s=1.0)
    yield server
    server.stop()


def request(url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, or of a POST when there is a body."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=TIMEOUT_S) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def post_json(server: PredictionServer, content) -> tuple[int, dict]:
    status, _, body = request(server.url + "predict", json.dumps(content).encode("utf-8"))
    return status, json.loads(body)


def raw_exchange(server: PredictionServer, data: bytes) -> bytes:
    """Send bytes as they are; what the server answers until it closes (or 64 KiB)."""
    host, port = server.socket.getsockname()[:2]
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as client:
        client.sendall(data)
        answer = b""
        while len(answer) < 65536 and (chunk := client.recv(65536)):
            answer += chunk
    return answer


def test_post_predict_answers_with_the_records_of_absa_predict(
    server: PredictionServer, predictor: AspectSentimentPredictor
) -> None:
    status, answer = post_json(server, {"texts": COMMENTS})
    assert status == 200
    assert answer["predictions"] == [p.to_record() for p in predictor.predict(COMMENTS)]
    assert answer["predictions"][2] == {"text": "", "labels": [], "truncated": False}
    assert post_json(server, {"texts": []}) == (200, {"predictions": []})


def test_one_kept_alive_connection_carries_many_requests(server: PredictionServer) -> None:
    host, port = server.socket.getsockname()[:2]
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        for text in COMMENTS:
            connection.request("POST", "/predict", json.dumps({"texts": [text]}))
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["predictions"][0]["text"] == text
    finally:
        connection.close()


def test_page_info_health_and_openapi(server: PredictionServer, tiny_run: dict) -> None:
    status, content_type, page = request(server.url)
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b'id="result"' in page and b'fetch("/predict"' in page
    assert json.loads(request(server.url + "info")[2])["aspects"] == tiny_run["aspects"]
    assert json.loads(request(server.url + "health")[2])["status"] == "ok"
    spec = json.loads(request(server.url + "openapi.json")[2])
    assert {"/predict", "/health", "/info"} <= set(spec["paths"])
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["texts"]["maxItems"] == 4  # the server's own limit


DEEP = b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "body is not JSON"),
        (json.dumps({"text": "ok"}).encode(), 400, 'expected {"texts"'),
        (json.dumps({"texts": ["ok", 3]}).encode(), 400, "a list of strings"),
        (json.dumps({"texts": "ok"}).encode(), 400, "a list of strings"),
        (json.dumps(["ok"]).encode(), 400, 'expected {"texts"'),
        (json.dumps({"texts": ["ok"] * 5}).encode(), 413, "at most 4"),
        (json.dumps({"texts": ["x" * 1001]}).encode(), 413, "1001 characters; at most 1000"),
        (json.dumps({"texts": ["x" * 300_000]}).encode(), 413, "at most 250000"),
        ("\udcff".encode("utf-8", "surrogatepass"), 400, "body is not JSON"),
        (DEEP, 400, "nested too deeply"),
    ],
)
def test_bad_requests_get_a_status_and_a_reason(
    server: PredictionServer, body: bytes, status: int, message: str
) -> None:
    got, content_type, answer = request(server.url + "predict", body)
    assert (got, content_type) == (status, "application/json; charset=utf-8")
    assert message in json.loads(answer)["error"]


def test_unknown_paths_are_404(server: PredictionServer) -> None:
    assert request(server.url + "nope")[:2] == (404, "application/json; charset=utf-8")
    assert request(server.url + "nope", b"{}")[0] == 404


def test_negative_content_length_is_400_not_a_dropped_connection(server: PredictionServer) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
    assert raw_exchange(server, head + b'{"texts": []}').startswith(b"HTTP/1.1 400 ")


def test_a_short_body_times_out_with_408_and_stalls_no_one(server: PredictionServer) -> None:
    """Content-Length says 100, 10 bytes come: 408 after body_timeout_s (2 s); meanwhile
    another client is answered."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    with socket.create_connection(server.socket.getsockname()[:2], timeout=TIMEOUT_S) as short:
        short.sendall(head + b'{"texts": ')
        time.sleep(0.2)  # the server is reading the rest
        assert post_json(server, {"texts": COMMENTS[:1]})[0] == 200
        assert select.select([short], [], [], 0)[0] == []  # answered before the 408
        answer = b""
        while len(answer) < 65536 and (chunk := short.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 2 s" in answer
    assert post_json(server, {"texts": COMMENTS[:1]})[0] == 200  # still serving


@pytest.mark.parametrize("sent", [b"", b"POST /predict HTTP/1.1\r\nHo"])
def test_a_connection_without_whole_headers_is_closed_after_headers_timeout_s(
    server: PredictionServer, sent: bytes
) -> None:
    start = time.monotonic()
    assert raw_exchange(server, sent) == b""  # closed, unanswered: nothing to answer yet
    assert 0.9 <= time.monotonic() - start < TIMEOUT_S


def test_concurrent_requests_are_merged_into_fewer_forward_calls(
    predictor: AspectSentimentPredictor,
) -> None:
    """16 clients at once; a batch waits 200 ms for company, so they share forward calls."""
    server = start_server(predictor, max_wait_ms=200)
    try:
        expected = {
            t: p.to_record() for t, p in zip(COMMENTS, predictor.predict(COMMENTS), strict=True)
        }
        start = threading.Barrier(16, timeout=TIMEOUT_S)

        def client(i: int) -> tuple[int, dict]:
            start.wait()
            return post_json(server, {"texts": [COMMENTS[i % 3]]})

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(client, range(16)))
        assert [a for _, a in answers] == [
            {"predictions": [expected[COMMENTS[i % 3]]]} for i in range(16)
        ]
        assert 1 <= server.batcher.forward_calls < 16
    finally:
        server.stop()


def test_batcher_splits_the_answers_back_and_shares_a_batch_fairly() -> None:
    """A 10-comment request, then a 1-comment one, at most 4 comments a call: the small one is
    in the first call, not behind the large one; each gets its own answers, in order."""
    calls: list[list[str]] = []

    def predict(texts: list[str]) -> list[dict]:
        calls.append(texts)
        return [{"text": t.upper()} for t in texts]

    async def scenario() -> tuple[list, list]:
        batcher = MicroBatcher(predict, max_batch_comments=4, max_wait_ms=50)
        batcher.start()
        try:
            large = [f"a{i}" for i in range(10)]
            answers = await asyncio.wait_for(
                asyncio.gather(batcher.predict(large), batcher.predict(["b"])), TIMEOUT_S
            )
        finally:
            await batcher.stop()
        return answers, large

    (large_answer, small_answer), large = asyncio.run(scenario())
    assert large_answer == [{"text": t.upper()} for t in large]
    assert small_answer == [{"text": "B"}]
    assert "b" in calls[0] and all(len(c) <= 4 for c in calls)
    assert sorted(t for c in calls for t in c) == sorted([*large, "b"])


def test_a_full_queue_answers_503() -> None:
    async def scenario() -> str:
        batcher = MicroBatcher(lambda texts: texts, max_queued_comments=2)  # never started
        try:
            await batcher.predict(["a", "b", "c"])
        except Exception as err:
            return f"{getattr(err, 'status', '')} {err}"
        finally:
            await batcher.stop()
        return "no error"

    assert asyncio.run(scenario()).startswith("503 0 comments already queued")


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


def test_load_test_checks_its_targets_with_margins() -> None:
    from benchmarks.serve_load import table, targets

    def row(clients: int, rps: float, p50: float, p99: float, errors: int = 0) -> dict:
        return {
            "clients": clients,
            "requests": 10,
            "requests_per_s": rps,
            "p50_ms": p50,
            "p95_ms": p99,
            "p99_ms": p99,
            "max_ms": p99,
            "comments_per_call": 1.0,
            "errors": errors,
            "error_examples": ["500"] * errors,
            "stalled": 0,
            "slow_client_requests": 3,
            "slow_client_max_ms": 400.0,
        }

    good = [row(1, 100, 10, 20), row(16, 400, 10, 40)]
    assert all(met for met, _ in targets(good, speedup=3, tail_ratio=5))
    assert "16 clients: 4.00x the requests/s of 1 (target >= 3x; margin +33%)" in [
        line for _, line in targets(good, 3, 5)
    ]
    bad = [row(1, 100, 10, 20), row(16, 250, 10, 60, errors=1)]
    missed = [line for met, line in targets(bad, 3, 5) if not met]
    assert len(missed) == 3 and "2.50x" in missed[0] and "6.00x p50" in missed[1]
    assert table(good).count("\n") == 3  # header, rule, two rows
