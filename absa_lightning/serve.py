"""A small web demo of a trained model: `absa-serve ckpt=...` on http://127.0.0.1:8000/.

- `GET /`: a page where a person types a comment and sees its aspects coloured by polarity
  (`/?text=...` predicts on load, so a link or a screenshot shows a result);
- `POST /predict` with `{"texts": ["...", ...]}`: `{"predictions": [record, ...]}`, the records of
  `absa-predict` (text, labels with their probabilities, truncated);
- `GET /info`: the aspects, polarities, max_length and threshold.

The standard library's threaded server: enough for a demo, not hardened for the open internet,
hence 127.0.0.1 by default. Predictions run one request at a time (a fast tokenizer must not be
called from two threads at once).
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any

import hydra
from omegaconf import DictConfig

from absa_lightning.config import CONF_DIR
from absa_lightning.predictor import AspectSentimentPredictor, load_predictor

log = logging.getLogger(__name__)
PAGE = files("absa_lightning") / "static" / "index.html"


class RequestError(ValueError):
    """A request the server refuses, with the HTTP status that says why."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class PredictionServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow client does not keep the process alive

    def __init__(
        self,
        address: tuple[str, int],
        predictor: AspectSentimentPredictor,
        max_body_bytes: int = 1_000_000,
        max_texts: int = 256,
    ):
        super().__init__(address, PredictionHandler)
        self.predictor, self.max_body_bytes, self.max_texts = predictor, max_body_bytes, max_texts
        self.page = PAGE.read_bytes()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def info(self) -> dict[str, Any]:
        p = self.predictor
        return {
            "aspects": p.aspects,
            "polarities": p.polarities,
            "max_length": p.max_length,
            "threshold": p.threshold,
        }

    def predict(self, body: bytes) -> dict[str, Any]:
        """`{"texts": [...]}` -> `{"predictions": [...]}`; a bad body raises RequestError."""
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {err}") from None
        texts = request.get("texts") if isinstance(request, dict) else None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, 'expected {"texts": ["a comment", ...]}: a list of strings'
            )
        if len(texts) > self.max_texts:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(texts)} texts in one request; at most {self.max_texts}",
            )
        with self.lock:
            predictions = self.predictor.predict(texts)
        return {"predictions": [p.to_record() for p in predictions]}


class PredictionHandler(BaseHTTPRequestHandler):
    server: PredictionServer
    protocol_version = "HTTP/1.1"  # keep-alive: a client may send many requests on one socket

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/info":
            self._send_json(HTTPStatus.OK, self.server.info())
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

    def do_POST(self) -> None:
        try:
            if self.path != "/predict":
                raise RequestError(HTTPStatus.NOT_FOUND, f"POST to /predict, not {self.path}")
            self._send_json(HTTPStatus.OK, self.server.predict(self._body()))
        except RequestError as err:
            self._send_json(err.status, {"error": str(err)})

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header") from None
        if length > self.server.max_body_bytes:
            self.close_connection = True  # the body is left unread
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes; at most {self.server.max_body_bytes}",
            )
        return self.rfile.read(length)

    def _send_json(self, status: HTTPStatus, content: dict[str, Any]) -> None:
        body = json.dumps(content, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def serve(cfg: DictConfig) -> None:
    options = {"batch_size": cfg.batch_size, "device": cfg.device}
    if cfg.threshold is not None:
        options["threshold"] = cfg.threshold
    predictor = load_predictor(hydra.utils.to_absolute_path(cfg.ckpt), **options)
    server = PredictionServer(
        (cfg.host, cfg.port), predictor, cfg.max_body_bytes, cfg.max_texts_per_request
    )
    # The line a person (or a test that asked for port 0) reads the address from.
    print(f"Serving {cfg.ckpt} on {server.url} (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
