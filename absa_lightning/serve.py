"""The model as a web service: `absa-serve ckpt=...` on http://127.0.0.1:8000/.

- `GET /`: a page where a person types a comment and sees its aspects coloured by polarity
  (`/?text=...` predicts on load, so a link or a screenshot shows a result);
- `POST /predict` with `{"texts": ["...", ...]}`: `{"predictions": [record, ...]}`, the records of
  `absa-predict` (text, labels with their probabilities, truncated); a refused request gets a
  4xx status and `{"error": "..."}`;
- `GET /info`: the aspects, polarities, max_length and threshold; `GET /health`: liveness and
  the queue; `GET /openapi.json` and `/docs`: the OpenAPI description.

FastAPI on uvicorn: one event loop reads every connection, so a slow client waits alone. The
comments of concurrent requests are merged by `MicroBatcher` into one predictor call, run on a
single worker thread (a fast tokenizer must not be called from two threads at once).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from importlib.resources import files
from typing import Any

import hydra
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from omegaconf import DictConfig
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from absa_lightning.config import CONF_DIR
from absa_lightning.errors import reports_user_errors
from absa_lightning.predictor import AspectSentimentPredictor, load_predictor

log = logging.getLogger(__name__)
PAGE = files("absa_lightning") / "static" / "index.html"


@dataclass(frozen=True)
class ServeSettings:
    """The keys of conf/serve.yaml that shape the server (their comments there say what each is)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_comments: int = 64
    max_wait_ms: float = 2.0
    max_queued_comments: int = 4096
    max_body_bytes: int = 1_000_000
    max_texts_per_request: int = 256
    max_comment_chars: int = 5000
    headers_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 512
    backlog: int = 2048

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ServeSettings:
        return cls(**{f.name: cfg[f.name] for f in fields(cls)})


class RequestError(Exception):
    """A request the server refuses: its HTTP status and why. `close`: the body was left unread,
    so the connection cannot carry another request."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.close = status, close


class JSONUTF8Response(JSONResponse):
    media_type = "application/json; charset=utf-8"


class Label(BaseModel):
    aspect: str
    polarity: str
    polarity_probability: float
    mentioned_probability: float


class Prediction(BaseModel):
    text: str
    labels: list[Label]
    truncated: bool


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    error: str


class ModelInfo(BaseModel):
    aspects: list[str]
    polarities: list[str]
    max_length: int
    threshold: float | dict[str, float] | None


class Health(BaseModel):
    status: str
    queued_comments: int
    forward_calls: int


@dataclass(eq=False)
class _Pending:
    """One request's comments in the queue: the next one to hand out, the records so far."""

    texts: list[str]
    future: asyncio.Future
    next: int = 0
    left: int = 0

    def __post_init__(self) -> None:
        self.records: list[dict[str, Any] | None] = [None] * len(self.texts)
        self.left = len(self.texts)


class MicroBatcher:
    """The comments of concurrent requests, merged into one call of `predict` at a time.

    A batch starts when a request arrives and the worker is free; it waits up to `max_wait_ms`
    for more comments (up to `max_batch_comments`). While a batch runs, new requests queue, so
    under load each call takes everything that arrived meanwhile. Each waiting request gets an
    equal share of a batch: one large request cannot hold back the small ones behind it.
    """

    def __init__(
        self,
        predict: Callable[[list[str]], list[dict[str, Any]]],
        max_batch_comments: int = 64,
        max_wait_ms: float = 2.0,
        max_queued_comments: int = 4096,
    ):
        if max_batch_comments < 1:
            raise ValueError(f"max_batch_comments must be >= 1, got {max_batch_comments}")
        self.predict_records = predict
        self.max_batch, self.max_wait_s = max_batch_comments, max_wait_ms / 1000
        self.max_queued = max_queued_comments
        self.forward_calls = 0  # how many calls of `predict`: fewer than requests when merged
        self.queued_comments = 0
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="absa-predict")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._worker.shutdown(wait=True)

    async def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        if not texts:
            return []
        if self.queued_comments + len(texts) > self.max_queued:
            raise RequestError(
                503, f"{self.queued_comments} comments already queued; try again shortly"
            )
        pending = _Pending(texts, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self.queued_comments += len(texts)
        self._arrived.set()
        return await pending.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            deadline = loop.time() + self.max_wait_s
            while self.queued_comments < self.max_batch and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            parts = self._take()
            self._arrived.clear()
            if self._queue:
                self._arrived.set()  # the rest goes in the next batch
            texts = [t for p, start, stop in parts for t in p.texts[start:stop]]
            self.forward_calls += 1
            try:
                records = await loop.run_in_executor(self._worker, self.predict_records, texts)
            except Exception as err:
                log.exception("prediction of %d comments failed", len(texts))
                for p, _, _ in parts:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            offset = 0
            for p, start, stop in parts:
                p.records[start:stop] = records[offset : offset + stop - start]
                offset += stop - start
                p.left -= stop - start
                if p.left == 0 and not p.future.done():  # done: its client went away
                    p.future.set_result(p.records)

    def _take(self) -> list[tuple[_Pending, int, int]]:
        """(request, start, stop): the comments of the next batch, an equal share from each."""
        parts, room = [], self.max_batch
        while room and self._queue:
            share = max(1, room // len(self._queue))
            for p in list(self._queue):
                n = min(share, len(p.texts) - p.next, room)
                parts.append((p, p.next, p.next + n))
                p.next += n
                room -= n
                if p.next == len(p.texts):
                    self._queue.remove(p)
                if not room:
                    break
        self.queued_comments -= self.max_batch - room
        return parts


def record_predictions(predictor: AspectSentimentPredictor) -> Callable[[list[str]], list[dict]]:
    def predict(texts: list[str]) -> list[dict[str, Any]]:
        return [p.to_record() for p in predictor.predict(texts)]

    return predict


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request's body, at most `max_bytes`, arrived within `timeout_s` (413, 408 if not)."""
    declared = request.headers.get("content-length", "0")  # the HTTP parser checked it is >= 0
    if not declared.isdigit():
        raise RequestError(400, f"Content-Length {declared!r} is not a number of bytes", True)
    if int(declared) > max_bytes:
        raise RequestError(413, f"body of {declared} bytes; at most {max_bytes}", close=True)

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise RequestError(413, f"body of over {max_bytes} bytes; at most that", True)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        message = f"the body did not arrive within {timeout_s:g} s"
        raise RequestError(408, message, close=True) from None
    except ClientDisconnect:
        raise RequestError(400, "the client went away before its body arrived", True) from None


def parse_texts(body: bytes, max_texts: int, max_chars: int) -> list[str]:
    """`{"texts": [...]}` -> the list; a RequestError says what is wrong with it."""
    try:
        content = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"body is not JSON: {err}") from None
    except RecursionError:
        raise RequestError(400, "body is not JSON this server reads: nested too deeply") from None
    texts = content.get("texts") if isinstance(content, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise RequestError(400, 'expected {"texts": ["a comment", ...]}: a list of strings')
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; at most {max_texts}")
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            raise RequestError(413, f"comment {i} has {len(text)} characters; at most {max_chars}")
    return texts


def create_app(predictor: AspectSentimentPredictor, settings: ServeSettings) -> FastAPI:
    batcher = MicroBatcher(
        record_predictions(predictor),
        settings.max_batch_comments,
        settings.max_wait_ms,
        settings.max_queued_comments,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="absa-lightning",
        summary="Aspect-based sentiment of comments: which aspects each one speaks of, and how.",
        lifespan=lifespan,
        default_response_class=JSONUTF8Response,
    )
    app.state.batcher = batcher
    page = PAGE.read_bytes()
    refused = {
        code: {"model": ErrorResponse, "description": why}
        for code, why in [
            (400, "not JSON, or not a list of strings"),
            (408, f"the body took over {settings.body_timeout_s:g} s to arrive"),
            (413, "too large: body, number of comments or a comment's length"),
            (503, "too many comments queued"),
        ]
    }
    request_schema = {
        "type": "object",
        "required": ["texts"],
        "properties": {
            "texts": {
                "type": "array",
                "maxItems": settings.max_texts_per_request,
                "items": {"type": "string", "maxLength": settings.max_comment_chars},
            }
        },
        "example": {"texts": ["Pin trâu, camera hơi mờ"]},
    }

    @app.exception_handler(RequestError)
    async def refuse(request: Request, err: RequestError) -> JSONUTF8Response:
        headers = {"Connection": "close"} if err.close else None
        return JSONUTF8Response({"error": str(err)}, err.status, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONUTF8Response:
        return JSONUTF8Response({"error": str(err.detail)}, err.status_code, err.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, media_type="text/html; charset=utf-8")

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "queued_comments": batcher.queued_comments,
            "forward_calls": batcher.forward_calls,
        }

    @app.get("/info", response_model=ModelInfo)
    async def info() -> dict[str, Any]:
        return {
            "aspects": predictor.aspects,
            "polarities": predictor.polarities,
            "max_length": predictor.max_length,
            "threshold": predictor.threshold,
        }

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=refused,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema}},
            }
        },
    )
    async def predict(request: Request) -> JSONUTF8Response:
        """The aspects each comment speaks of, with their polarities and probabilities.

        Comments of concurrent requests run together in one forward pass.
        """
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        texts = parse_texts(body, settings.max_texts_per_request, settings.max_comment_chars)
        return JSONUTF8Response({"predictions": await batcher.predict(texts)})

    return app


class HeadersTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline on each request's headers, which uvicorn lacks: a
    connection that sends nothing, or trickles its headers, is closed after `headers_timeout_s`
    (the body has its own, `body_timeout_s`; an idle kept-alive one, `keep_alive_s`)."""

    headers_timeout_s = 10.0
    _headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_headers_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_headers_timer()

    def on_headers_complete(self) -> None:
        self._disarm_headers_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_headers_timer()
        super().connection_lost(exc)

    def _arm_headers_timer(self) -> None:
        self._disarm_headers_timer()
        self._headers_timer = self.loop.call_later(self.headers_timeout_s, self._headers_too_slow)

    def _disarm_headers_timer(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


class PredictionServer:
    """`create_app` on uvicorn, on a socket bound at once (port 0: a free one; see `url`).

    `run()` serves until Ctrl+C; `start()`/`stop()` serve from a background thread (tests,
    benchmarks).
    """

    def __init__(self, predictor: AspectSentimentPredictor, settings: ServeSettings):
        self.app = create_app(predictor, settings)
        self.socket = socket.create_server((settings.host, settings.port), backlog=settings.backlog)
        protocol = type(
            "HeadersTimeoutProtocol",
            (HeadersTimeoutProtocol,),
            {"headers_timeout_s": settings.headers_timeout_s},
        )
        config = uvicorn.Config(
            self.app,
            http=protocol,
            loop="asyncio",
            lifespan="on",
            timeout_keep_alive=settings.keep_alive_s,
            limit_concurrency=settings.max_connections,
            backlog=settings.backlog,
            timeout_graceful_shutdown=5,
            access_log=False,
            log_config=None,  # the logging Hydra (or the caller) set up
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}/"

    @property
    def batcher(self) -> MicroBatcher:
        return self.app.state.batcher

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self, timeout_s: float = 30.0) -> PredictionServer:
        self._thread = threading.Thread(target=self.run, name="absa-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)


def serve(cfg: DictConfig) -> None:
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    options = {"batch_size": cfg.batch_size, "device": cfg.device}
    if cfg.threshold is not None:
        options["threshold"] = cfg.threshold
    predictor = load_predictor(hydra.utils.to_absolute_path(cfg.ckpt), **options)
    # The libraries and the model are loaded for good: a full collection walks their ~500k
    # objects (1 s on 2 busy cores), pausing every request; frozen, they are skipped.
    gc.collect()
    gc.freeze()
    server = PredictionServer(predictor, ServeSettings.from_config(cfg))
    # The line a person (or a test that asked for port 0) reads the address from.
    print(f"Serving {cfg.ckpt} on {server.url} (Ctrl+C stops)", flush=True)
    server.run()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="serve")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
