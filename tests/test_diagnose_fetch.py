"""`diagnose --metrics-url / --prometheus-url` against servers that answer forever, drip,
redirect, send malformed JSON or terminal escape sequences; and `diagnose` on files that
hold no traces. Each ends in one line on stderr and exit 2, in bounded time and memory."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from exporter.diagnose.fetch import SourceError, fetch, printable, prometheus_rows
from tests.raw_http import read_head, serve_forever

Respond = Callable[[socket.socket], None]


class RawServer:
    """Answers every connection with `respond` after reading the request head."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        serve_forever(self.sock, lambda c: threading.Thread(target=self._one, args=(c,), daemon=True).start())

    def _one(self, c: socket.socket) -> None:
        with c:
            if b"\r\n\r\n" not in read_head(c):
                return
            self.requests += 1
            with contextlib.suppress(OSError):
                self.respond(c)


@pytest.fixture
def serve() -> Iterator[Callable[[Respond], RawServer]]:
    made: list[RawServer] = []

    def make(respond: Respond) -> RawServer:
        made.append(RawServer(respond))
        return made[-1]

    yield make
    for s in made:
        s.sock.close()


def _endless(c: socket.socket) -> None:
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    line = b"inference_profiler_traces_total{model=\"m\",version=\"1\"} 1\n" * 1000
    while True:
        c.sendall(line)


def _drip(c: socket.socket) -> None:
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    while True:
        c.sendall(b"#")
        time.sleep(0.1)


def _json(doc: bytes) -> Respond:
    def respond(c: socket.socket) -> None:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(doc), doc))
    return respond


def test_an_endless_answer_stops_at_the_size_bound(serve: Callable[[Respond], RawServer]) -> None:
    s = serve(_endless)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"answer larger than 4194304 bytes"):
        fetch(s.url + "/metrics", limit=4 << 20)
    assert time.monotonic() - t0 < 10


def test_a_dripping_answer_stops_at_the_deadline(serve: Callable[[Respond], RawServer]) -> None:
    s = serve(_drip)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"no complete answer within 1 s"):
        fetch(s.url + "/metrics", seconds=1.0)
    assert 0.9 < time.monotonic() - t0 < 2.5


def test_a_redirect_is_not_followed(serve: Callable[[Respond], RawServer]) -> None:
    target = serve(_json(b"{}"))
    s = serve(lambda c: c.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s/x\r\nContent-Length: 0\r\n\r\n"
                                  % target.url.encode()))
    with pytest.raises(SourceError, match=r"HTTP 302 redirect to http://127.0.0.1:\d+/x not followed"):
        fetch(s.url + "/metrics")
    assert target.requests == 0


@pytest.mark.parametrize("doc, message", [
    (b'{"status": "success", "data": {"result": [{"metric": {}, "value": [1, "2"]}]}}', None),
    (b'{"status": "success", "data": {"result": [{"metric": {"a": "b"}}]}}', r"missing required field `value`"),
    (b'{"status": "success", "data": {"result": [{"metric": {}, "value": [1, 2]}]}}', r"Expected `str`"),
    (b'{"status": "success", "data": {"result": [{"metric": {}, "value": [1, "x"]}]}}', r"value x is not a number"),
    (b"[" * 100_000, r"not a Prometheus query answer"),
    (b'{"status": "error", "error": "bad \\u001b[31mquery"}', r"query failed: bad \\x1b\[31mquery"),
    (b"not json", r"not a Prometheus query answer"),
])
def test_malformed_prometheus_answers_are_one_line_errors(serve: Callable[[Respond], RawServer], doc: bytes,
                                                           message: str | None) -> None:
    s = serve(_json(doc))
    if message is None:
        assert prometheus_rows(s.url + "/api/v1/query") == [({}, 2.0)]
        return
    with pytest.raises(SourceError, match=message) as e:
        prometheus_rows(s.url + "/api/v1/query")
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter.cli", "diagnose", *args],
                          capture_output=True, text=True, timeout=60)


def test_the_cli_prints_one_line_and_no_escape_sequence(serve: Callable[[Respond], RawServer]) -> None:
    s = serve(_json(b'{"status": "success", "data": {"result": [{"metric": {}, "value": {"a": 1}}]}}'))
    r = cli("--prometheus-url", s.url)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    evil = json.dumps({"status": "success", "data": {"result": [
        {"metric": {"model": "\x1b]0;owned\x07m\x1b[2J", "version": "1", "segment": "queue"}, "value": [1, "5"]}]}})
    s = serve(_json(evil.encode()))
    r = cli("--prometheus-url", s.url)
    assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout + r.stderr
    metrics = serve(lambda c: c.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n"
        + b'inference_profiler_traces_total{model="\x1b[2Jm",version="1"} 1\n'[:60]))
    r = cli("--metrics-url", metrics.url + "/metrics", "--window", "0")
    assert "\x1b" not in r.stdout + r.stderr


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 64])
def test_diagnose_on_a_file_without_traces_exits_2_like_summary(tmp_path: object, content: bytes) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "trace.json"
    p.write_bytes(content)
    r = cli(str(p))
    assert r.returncode == 2 and r.stderr.strip() == f"inference-profiler: error: no complete traces found in {p}"
    summary = subprocess.run([sys.executable, "-m", "exporter.cli", "summary", "--no-progress", str(p)],
                             capture_output=True, text=True, timeout=60)
    assert summary.returncode != 0


def test_printable_escapes_control_characters() -> None:
    assert printable("model_a") == "model_a"
    assert printable("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\nc"
    assert printable("x" * 300).endswith("…") and len(printable("x" * 300)) == 201
