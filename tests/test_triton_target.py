"""TritonTarget's scrape-time logic (cache, shared fetch, deadline, partial failures) against a
loopback HTTP server that answers with real Triton 2.51 outputs and counts the requests."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from exporter.source import ErrorCounts
from exporter.triton.target import TritonTarget


class FakeTriton:
    def __init__(self, samples: Path) -> None:
        api = json.loads((samples / "triton-2.51" / "api-outputs.json").read_text())
        self.metrics = (samples / "triton-2.51" / "metrics.txt").read_text()
        self.answers: dict[str, Any] = {
            "/v2/models/stats": api["http_stats_all"],
            "/v2/repository/index": api["http_repository_index"],
            "/v2/models/add_sub/versions/1/config": api["http_model_config"],
        }
        self.hits: Counter[str] = Counter()
        self.delay = 0.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                path = self.path.split("?")[0]
                fake.hits[path] += 1
                time.sleep(fake.delay)
                if path == "/metrics":
                    body, ctype = fake.metrics.encode(), "text/plain"
                elif path in fake.answers:
                    body, ctype = json.dumps(fake.answers[path]).encode(), "application/json"
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting: that is what the timeout test wants

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def target(self, errors: ErrorCounts, timeout: float = 2.0, cache: float = 1.0) -> TritonTarget:
        return TritonTarget(f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.port}/metrics",
                            timeout, cache, on_error=lambda r: errors.inc("triton", r))


@pytest.fixture
def fake(samples: Path) -> Iterator[FakeTriton]:
    f = FakeTriton(samples)
    try:
        yield f
    finally:
        f.httpd.shutdown()
        f.httpd.server_close()


def test_two_scrapes_in_a_row_hit_triton_once(fake: FakeTriton) -> None:
    errors = ErrorCounts()
    t = fake.target(errors, cache=0.5)
    try:
        a, b = t.snapshot(), t.snapshot()
        assert a is b and a.up
        assert fake.hits["/metrics"] == 1 and fake.hits["/v2/models/stats"] == 1
        assert fake.hits["/v2/models/add_sub/versions/1/config"] == 1
        time.sleep(0.6)
        c = t.snapshot()
        assert c is not a and c.up
        assert fake.hits["/metrics"] == 2
        # the repository index did not change: the config is not read again
        assert fake.hits["/v2/models/add_sub/versions/1/config"] == 1
        assert c.configs == a.configs and a.stats is not None
        assert sum(b.executions for b in a.stats[("add_sub", "1")].batches.values()) == 218
        assert errors.snapshot() == {}
    finally:
        t.close()


def test_concurrent_scrapes_share_one_fetch(fake: FakeTriton) -> None:
    fake.delay = 0.2
    t = fake.target(ErrorCounts(), cache=0.0)
    try:
        out: list[bool] = []
        threads = [threading.Thread(target=lambda: out.append(t.snapshot().up)) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert out == [True] * 8
        assert fake.hits["/metrics"] == 1
    finally:
        t.close()


def test_a_slow_triton_never_makes_a_scrape_slower_than_the_timeout(fake: FakeTriton) -> None:
    errors = ErrorCounts()
    fake.delay = 1.5
    t = fake.target(errors, timeout=0.4, cache=0.0)
    try:
        t0 = time.monotonic()
        s = t.snapshot()
        took = time.monotonic() - t0
        assert not s.up and s.metrics is None and took < 0.6, took
        # the fetch ends itself inside the timeout: /metrics and the API each count their own
        assert errors.snapshot() == {("triton", "timeout"): 2}
    finally:
        t.close()


def test_bad_metrics_text_is_counted_and_the_api_part_still_served(fake: FakeTriton) -> None:
    errors = ErrorCounts()
    fake.metrics = "<html>proxy error</html>\n"
    t = fake.target(errors)
    try:
        s = t.snapshot()
        assert not s.up and s.metrics is None
        assert s.stats is not None and s.configs  # what did answer is still exposed
        assert errors.get("triton", "bad_response") == 1
    finally:
        t.close()


def test_unreachable_target(fake: FakeTriton) -> None:
    errors = ErrorCounts()
    port = fake.port
    fake.httpd.shutdown()
    fake.httpd.server_close()
    t = TritonTarget(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/metrics", 1.0, 0.0,
                     on_error=lambda r: errors.inc("triton", r))
    try:
        s = t.snapshot()
        assert not s.up and s.metrics is None and s.stats is None
        assert errors.get("triton", "unreachable") == 2  # /metrics and the API
    finally:
        t.close()
