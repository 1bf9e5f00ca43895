"""Load test of `absa-serve` on the loopback: requests/s and latency at 1, 4 and 16 clients.

    python -m benchmarks.serve_load [--ckpt PATH]      # or: make bench-serve [CKPT=path]

Starts `absa-serve` (conf/serve.yaml's defaults) on 127.0.0.1 in its own process, with `--ckpt`
or a tiny model trained for the purpose (`model=tiny debug=limit`: its speed, not its
quality, is what is measured). Then, for each number of clients, that many kept-alive
connections each send one comment a request, one request after another, for `--seconds` or
`--requests` per client, whichever ends first; a slow client sends its body a few bytes at a
time through the whole run. Prints a markdown table and the targets:

- 16 clients serve >= 3x the requests/s of 1 client (concurrent requests are batched);
- p99 <= 5x p50 at every number of clients;
- no error, and no stalled client (one whose request took over `--stall-s`, or that finished
  none), the slow client included.

Exits 1 when a target is missed. Every loop is bounded in count and time; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENTS = (1, 4, 16)
FALLBACK_COMMENTS = [
    "Pin trâu, camera hơi mờ",
    "Máy đẹp 😍 giá rẻ",
    "Giao hàng chậm, shop tư vấn nhiệt tình",
]
TINY_TRAINING = [
    "model=tiny",
    "debug=limit",
    "~callbacks.progress_bar",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


@dataclass
class ClientResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def train_tiny_model(folder: Path) -> str:
    """A tiny model's checkpoint, trained in `folder` (about a minute on 2 cores)."""
    run = folder / "tiny_run"
    command = [sys.executable, str(REPO / "train.py"), *TINY_TRAINING, f"hydra.run.dir={run}"]
    subprocess.run(command, check=True, capture_output=True, timeout=1200)
    return json.loads((run / "metrics.json").read_text())["best_checkpoint"]


def read_comments(path: Path | None, column: str) -> list[str]:
    if path is None or not path.is_file():
        return FALLBACK_COMMENTS
    with open(path, encoding="utf-8", newline="") as f:
        return [row[column] for row in csv.DictReader(f) if row[column].strip()][:2000]


class Server:
    """`python -m absa_lightning.serve` in its own process, on a free port of 127.0.0.1."""

    def __init__(self, ckpt: str, overrides: list[str], start_timeout_s: float = 300):
        command = [sys.executable, "-m", "absa_lightning.serve", f"ckpt={ckpt}"]
        command += ["host=127.0.0.1", "port=0", *overrides]
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        ready, _, _ = select.select([self.process.stdout], [], [], start_timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if " on http://" not in line:
            self.stop()
            raise RuntimeError(f"absa-serve did not start: {line!r}")
        address = line.split(" on http://")[1].split("/")[0]
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        deadline = time.monotonic() + start_timeout_s
        while self.health() is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("absa-serve did not answer /health")
            time.sleep(0.1)

    def health(self) -> dict | None:
        try:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=5)
            connection.request("GET", "/health")
            return json.loads(connection.getresponse().read())
        except OSError:
            return None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def client(
    server: Server,
    comments: list[str],
    offset: int,
    until: float,
    max_requests: int,
    timeout_s: float,
) -> ClientResult:
    """Requests one after another on one kept-alive connection."""
    result = ClientResult()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout_s)
    headers = {"Content-Type": "application/json"}
    for i in range(max_requests):
        if time.monotonic() > until:
            break
        text = comments[(offset + i) % len(comments)]
        start = time.perf_counter()
        try:
            connection.request("POST", "/predict", json.dumps({"texts": [text]}), headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or json.loads(body)["predictions"][0]["text"] != text:
                result.errors.append(f"{response.status} {body[:100]!r}")
                continue
        except (OSError, http.client.HTTPException, ValueError, KeyError) as err:
            result.errors.append(repr(err))
            connection.close()  # a new connection for the next request
            continue
        result.latencies_ms.append(1000 * (time.perf_counter() - start))
    connection.close()
    return result


def slow_client(
    server: Server, until: float, byte_delay_s: float, timeout_s: float
) -> ClientResult:
    """Requests whose bodies arrive 4 bytes at a time, `byte_delay_s` apart, on one connection."""
    result = ClientResult()
    body = json.dumps({"texts": ["Pin trâu, camera hơi mờ"]}).encode("utf-8")
    head = f"POST /predict HTTP/1.1\r\nHost: {server.host}\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection((server.host, server.port), timeout=timeout_s) as sock:
        answer = b""
        for _ in range(1000):
            if time.monotonic() > until:
                break
            start = time.perf_counter()
            try:
                sock.sendall(head.encode("ascii"))
                for i in range(0, len(body), 4):
                    sock.sendall(body[i : i + 4])
                    time.sleep(byte_delay_s)
                while b"\r\n\r\n" not in answer:
                    answer += receive(sock)
                header, _, answer = answer.partition(b"\r\n\r\n")
                length = int(header.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(answer) < length:
                    answer += receive(sock)
                answer = answer[length:]
                if not header.startswith(b"HTTP/1.1 200 "):
                    result.errors.append(header.split(b"\r\n")[0].decode())
                    break
            except (OSError, ValueError, IndexError) as err:
                result.errors.append(repr(err))
                break
            result.latencies_ms.append(1000 * (time.perf_counter() - start))
    return result


def receive(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection")
    return chunk


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def run_clients(server: Server, comments: list[str], n: int, args: argparse.Namespace) -> dict:
    """`n` clients and the slow one at once; their numbers."""
    until = time.monotonic() + args.seconds
    results: list[ClientResult] = [ClientResult() for _ in range(n + 1)]
    calls_before = server.health()["forward_calls"]

    def run(i: int) -> None:
        if i == n:
            results[i] = slow_client(server, until, args.slow_byte_delay_s, args.stall_s)
        else:
            offset = i * len(comments) // n
            results[i] = client(server, comments, offset, until, args.requests, args.stall_s)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n + 1)]
    start = time.perf_counter()
    for thread in threads[::-1]:  # the slow client first: it is there for the whole run
        thread.start()
    for thread in threads[:n]:
        thread.join(args.seconds + 2 * args.stall_s)
    elapsed = time.perf_counter() - start
    threads[n].join(args.seconds + 2 * args.stall_s)
    calls = server.health()["forward_calls"] - calls_before
    normal, slow = results[:n], results[n]
    latencies = [ms for r in normal for ms in r.latencies_ms]
    stalled = sum(not r.latencies_ms or max(r.latencies_ms) > 1000 * args.stall_s for r in normal)
    slow_budget_ms = 1000 * (args.stall_s + len(slow_body_pieces()) * args.slow_byte_delay_s)
    slow_stalled = not slow.latencies_ms or max(slow.latencies_ms) > slow_budget_ms
    return {
        "clients": n,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p95_ms": percentile(latencies, 95) if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) if latencies else float("nan"),
        "max_ms": max(latencies, default=float("nan")),
        "comments_per_call": (len(latencies) + len(slow.latencies_ms)) / max(calls, 1),
        "errors": sum(len(r.errors) for r in results),
        "error_examples": [e for r in results for e in r.errors][:3],
        "stalled": stalled + slow_stalled,
        "slow_client_requests": len(slow.latencies_ms),
        "slow_client_max_ms": max(slow.latencies_ms, default=float("nan")),
    }


def slow_body_pieces() -> range:
    return range(0, len(json.dumps({"texts": ["Pin trâu, camera hơi mờ"]}).encode()), 4)


def table(rows: list[dict]) -> str:
    columns = ["clients", "requests", "requests/s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    columns += ["comments / forward call", "errors", "stalled", "slow client: requests, max ms"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " ---: |" * len(columns)]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} "
            f"| {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
            f"| {r['comments_per_call']:.1f} | {r['errors']} | {r['stalled']} "
            f"| {r['slow_client_requests']}, {r['slow_client_max_ms']:.0f} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict], speedup: float, tail_ratio: float) -> list[tuple[bool, str]]:
    """(met, line) per target, with its margin."""
    by_clients = {r["clients"]: r for r in rows}
    one, many = by_clients[min(by_clients)], by_clients[max(by_clients)]
    gain = many["requests_per_s"] / one["requests_per_s"]
    checks = [
        (
            gain >= speedup,
            f"{many['clients']} clients: {gain:.2f}x the requests/s of {one['clients']} "
            f"(target >= {speedup:g}x; margin {gain / speedup - 1:+.0%})",
        )
    ]
    for r in rows:
        tail = r["p99_ms"] / r["p50_ms"]
        checks.append(
            (
                tail <= tail_ratio,
                f"{r['clients']} clients: p99 = {tail:.2f}x p50 "
                f"(target <= {tail_ratio:g}x; margin {1 - tail / tail_ratio:+.0%})",
            )
        )
    errors, stalled = sum(r["errors"] for r in rows), sum(r["stalled"] for r in rows)
    examples = [e for r in rows for e in r["error_examples"]][:3]
    checks.append(
        (errors == 0, f"errors: {errors} (target 0) {examples if examples else ''}".strip())
    )
    checks.append((stalled == 0, f"stalled clients: {stalled} (target 0)"))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ckpt", help="a checkpoint or exported folder (default: train a tiny one)"
    )
    data_dir = Path(os.environ.get("ABSA_DATA_DIR", REPO / "data/uit-visfd"))
    parser.add_argument("--comments", type=Path, default=data_dir / "Test.csv", help="a CSV")
    parser.add_argument("--text-column", default="comment")
    parser.add_argument("--seconds", type=float, default=5.0, help="each run's length")
    parser.add_argument("--requests", type=int, default=5000, help="at most, per client and run")
    parser.add_argument(
        "--stall-s", type=float, default=2.0, help="a request slower than this: stalled"
    )
    parser.add_argument(
        "--slow-byte-delay-s", type=float, default=0.02, help="the slow client's pace"
    )
    parser.add_argument("--speedup", type=float, default=3.0, help="target: 16 clients vs 1")
    parser.add_argument("--tail-ratio", type=float, default=5.0, help="target: p99 / p50")
    parser.add_argument("serve_overrides", nargs="*", help="for absa-serve, e.g. max_wait_ms=0")
    args = parser.parse_args()

    comments = read_comments(args.comments, args.text_column)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve_load_") as folder:
        ckpt = args.ckpt or train_tiny_model(Path(folder))
        server = Server(ckpt, args.serve_overrides)
        try:
            for n in (1, max(CLIENTS)):  # warm-up: first-call allocations, thread start-up
                run_clients(
                    server, comments, n, argparse.Namespace(**{**vars(args), "seconds": 1.0})
                )
            rows = [run_clients(server, comments, n, args) for n in CLIENTS]
        finally:
            server.stop()

    print(
        f"absa-serve {' '.join(args.serve_overrides)} on {args.ckpt or 'a tiny model'}; "
        f"{args.seconds:g} s a run; one comment a request; a slow client sending 4 bytes every "
        f"{1000 * args.slow_byte_delay_s:g} ms throughout; {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other jobs slow it down)\n"
    )
    print(table(rows) + "\n")
    checks = targets(rows, args.speedup, args.tail_ratio)
    for met, line in checks:
        print(f"- {'met' if met else 'MISSED'}: {line}")
    sys.exit(0 if all(met for met, _ in checks) else 1)


if __name__ == "__main__":
    main()
