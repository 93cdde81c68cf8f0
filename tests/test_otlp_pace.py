"""Reply pacing on a real `serve --otlp-listen`: POSTs smaller than the connection's largest, sent
back to back on one keep-alive connection, are answered --otlp-pace-seconds apart, each committed
before its answer; a POST as large as the largest so far (a full batch, whatever the sender's
batch size) or of 512 spans, and the first POST of a connection, are answered at once."""

from __future__ import annotations

import http.client
import itertools
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.otlp_payloads import T0, export_request, request_spans, to_json

PACE = 0.8  # seconds: far above a commit's time, so a paced answer and an immediate one cannot be confused


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(base: str, family: str, result: str = "") -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith((family + "{", family + " ")) and (not result or f'result="{result}"' in ln))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[str, int]]:
    port, otlp_port = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", "--triton", "none", "--ebpf", "off",
                             "--state-dir", str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}",
                             "--otlp-listen", f"127.0.0.1:{otlp_port}", "--otlp-pace-seconds", str(PACE)],
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                if urllib.request.urlopen(base + "/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serve did not get ready in 30 s"
            time.sleep(0.1)
        yield base, otlp_port
    finally:
        proc.terminate()
        proc.wait(20)


def _body(requests: int, first: int) -> bytes:
    spans = []
    for i in range(requests):
        spans += request_spans(T0 + (first + i) * 10**6, request_id=f"p{first + i}")  # 3 spans a request
    return to_json(export_request(spans))


def _post(conn: http.client.HTTPConnection, body: bytes) -> float:
    """Seconds until the answer, which must be 200."""
    t = time.monotonic()
    conn.request("POST", "/v1/traces", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    return time.monotonic() - t


def test_small_posts_are_paced_full_ones_and_new_connections_answered_at_once(serve: tuple[str, int]) -> None:
    base, otlp_port = serve
    conn = http.client.HTTPConnection("127.0.0.1", otlp_port, timeout=10)
    other = http.client.HTTPConnection("127.0.0.1", otlp_port, timeout=10)
    try:
        requests = 0
        assert _post(conn, _body(4, requests)) < PACE * 0.6  # the first: at once (12 spans, the largest)
        requests += 4
        answers = [time.monotonic()]
        for _ in range(3):  # 6 spans each, sent the moment the previous answer came: paced
            _post(conn, _body(2, requests))  # built after the answer, but small: at most a few ms
            requests += 2
            answers.append(time.monotonic())
            # committed before its answer: counted already
            assert _scrape(base, "inference_profiler_traces_total") == requests
        gaps = [b - a for a, b in itertools.pairwise(answers)]
        assert all(g >= PACE - 0.02 for g in gaps), gaps

        assert _post(conn, _body(4, requests)) < PACE * 0.6  # as large as the largest: a full batch, at once
        requests += 4
        assert _post(other, _body(1, requests)) < PACE * 0.6  # another connection: its own pace, none yet
        requests += 1
        # both bodies built first: the pace counts from the server's answer, so time spent building the
        # next body after it would shorten the wait the client sees
        full, smaller = _body(171, requests), _body(100, requests + 171)
        assert _post(conn, full) < PACE * 0.6  # 513 spans: at once whatever came before
        requests += 171
        assert _post(conn, smaller) >= PACE - 0.05  # 300 spans, below the largest: paced
        requests += 100
    finally:
        conn.close()
        other.close()
    assert _scrape(base, "inference_profiler_traces_total") == requests
    assert _scrape(base, "inference_profiler_otlp_spans_total", "accepted") == 3 * requests
