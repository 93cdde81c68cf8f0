"""The OTLP listener as a hostile client and a busy Triton see it: keep-alive connections live
from their last answer (not from accept), the header deadline holds on the OTLP port as on
/metrics (one mechanism, both listeners), decoding shares one budget in bytes, and bodies
that do not match their Content-Length are refused. Deadlines are shortened (Timeouts), so
each test takes a second or two, not the 60 s of the defaults."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client.registry import CollectorRegistry

from exporter.otlp.decode import DecodeBudget
from exporter.otlp.receiver import OtlpIngest, OtlpServer
from exporter.server import Listener, MetricsServer, Timeouts
from exporter.source import ErrorCounts, SelfCollector
from exporter.traces.tailer import TailerSettings, TraceTailer
from tests.otlp_payloads import T0, export_request, post, request_spans, to_json
from tests.raw_http import read_head

BOUNDS = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
QUICK = Timeouts(header=0.5, idle=1.0)


class Otlp:
    def __init__(self, state: Path | None, max_models: int = 100, budget: DecodeBudget | None = None) -> None:
        self.tailer = TraceTailer(TailerSettings([], str(state) if state else None, BOUNDS, max_models=max_models))
        self.ingest = OtlpIngest(self.tailer.aggregator, 60.0)
        self.server = OtlpServer(self.ingest, "127.0.0.1", 0, timeouts=QUICK, budget=budget)
        self.server.httpd.timeout = 0.05  # the accept loop's deadline checks run this often
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}/v1/traces"

    def counted(self) -> int:
        return sum(self.tailer.live.traces.values())


@pytest.fixture
def otlp(tmp_path: Path) -> Iterator[Otlp]:
    r = Otlp(tmp_path / "state")
    yield r
    r.server.stop()


def _metrics_server() -> MetricsServer:
    reg = CollectorRegistry()
    reg.register(SelfCollector(ErrorCounts()))
    s = MetricsServer(reg, "127.0.0.1", 0, timeouts=QUICK)
    s.httpd.timeout = 0.05
    s.start()
    return s


def _body(i: int) -> bytes:
    return export_request(request_spans(T0 + i * 10**6, request_id=f"k{i}")).SerializeToString()


def _raw_post(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (len(body), extra))


def _answer(s: socket.socket) -> bytes:
    s.settimeout(5)
    return read_head(s)


def test_keep_alive_connection_lives_from_its_last_answer_not_from_accept(otlp: Otlp) -> None:
    """Idle deadline 1 s: one connection posts every 0.4 s for 3 s (three times the deadline
    after it opened); every post is answered and counted once, nothing evicted."""
    c = http.client.HTTPConnection("127.0.0.1", otlp.server.port, timeout=5)
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < 3.0:
        c.request("POST", "/v1/traces", _body(n), {"Content-Type": "application/x-protobuf"})
        r = c.getresponse()
        assert r.status == 200, r.read()
        r.read()
        n += 1
        time.sleep(0.4)
    c.close()
    print(f"{n} posts on one connection over {time.monotonic() - t0:.1f} s (idle deadline 1 s): "
          f"{otlp.counted()} counted, {otlp.server.httpd.evicted} evicted")
    assert otlp.counted() == n and otlp.server.httpd.evicted == 0


def test_a_slow_post_is_not_cut_by_the_idle_deadline(otlp: Otlp) -> None:
    """A body trickled over 2 s (twice the idle deadline) is being served: answered 200, counted."""
    body = _body(0)
    with socket.create_connection(("127.0.0.1", otlp.server.port)) as s:
        s.sendall(_raw_post(body))
        for i in range(0, len(body), len(body) // 8 + 1):
            s.sendall(body[i:i + len(body) // 8 + 1])
            time.sleep(0.25)
        assert _answer(s).startswith(b"HTTP/1.1 200")
    assert otlp.counted() == 1 and otlp.server.httpd.evicted == 0


@pytest.mark.parametrize("which", ["otlp", "metrics"])
def test_both_listeners_drop_slow_headers_and_idle_connections(tmp_path: Path, which: str) -> None:
    """The same connection states on both ports: a request whose headers trickle is closed
    after the header deadline (0.5 s), a connection that sends nothing after the idle one (1 s)."""
    server: Listener = Otlp(tmp_path).server if which == "otlp" else _metrics_server()
    try:
        def closed_after(first: bytes, trickle: bool) -> float:
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                t0 = time.monotonic()
                if first:
                    s.sendall(first)
                s.settimeout(0.1)
                while time.monotonic() - t0 < 5:
                    try:
                        if trickle:
                            s.sendall(b"X")
                        if s.recv(1024) == b"":
                            return time.monotonic() - t0
                    except TimeoutError:
                        continue
                    except OSError:
                        return time.monotonic() - t0
                return float("inf")

        slow_headers = closed_after(b"POST /v1/traces HTTP/1.1\r\nX-Slow: ", trickle=True)
        idle = closed_after(b"", trickle=False)
        print(f"{which}: slow headers closed after {slow_headers:.2f} s, idle after {idle:.2f} s")
        assert 0.4 < slow_headers < 1.5 and 0.9 < idle < 2.0
        assert server.httpd.evicted == 2
    finally:
        server.stop()


def test_short_body_from_a_half_closing_client_is_400_not_counted(otlp: Otlp) -> None:
    body = _body(0)
    with socket.create_connection(("127.0.0.1", otlp.server.port)) as s:
        s.sendall(_raw_post(body) + body[: len(body) // 2])
        s.shutdown(socket.SHUT_WR)
        answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 400") and otlp.counted() == 0
    assert otlp.ingest.requests["malformed"] == 1


def test_two_content_length_headers_are_400(otlp: Otlp) -> None:
    body = _body(0)
    with socket.create_connection(("127.0.0.1", otlp.server.port)) as s:
        s.sendall(_raw_post(body, b"Content-Length: 5\r\n") + body)
        answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 400") and otlp.counted() == 0


def test_model_versions_past_the_cap_get_a_partial_success_notice(tmp_path: Path) -> None:
    """max_models 3, one post of 20 versions of one model: 200, 3 versions counted, the reply's
    partial_success names the 17 traces left out."""
    r = Otlp(tmp_path, max_models=3)
    try:
        def versions(vs: range) -> list[Any]:
            out = []
            for v in vs:
                for s in request_spans(T0 + v * 10**6, request_id=f"v{v}"):
                    for kv in s.attributes:
                        if kv.key == "triton.model_version":
                            kv.value.int_value = v + 1
                    out.append(s)
            return out

        status, answer = post(r.url, export_request(versions(range(20))).SerializeToString())
        resp = ExportTraceServiceResponse.FromString(answer)
        assert status == 200 and r.counted() == 3
        assert resp.partial_success.rejected_spans == 0
        assert "model_cap=17" in resp.partial_success.error_message
        status, answer = post(r.url, to_json(export_request(versions(range(30, 31)))), "application/json")
        assert status == 200 and "model_cap=1" in json.loads(answer)["partialSuccess"]["errorMessage"]
    finally:
        r.server.stop()


# --- one decode budget for every connection ---------------------------------------------------

def _gzip_json(n_requests: int) -> bytes:
    spans = [s for i in range(n_requests) for s in request_spans(T0 + i * 10**6, request_id=f"g{i}")]
    return gzip.compress(to_json(export_request(spans)))


def test_a_request_that_does_not_fit_the_budget_gets_503_with_retry_after(tmp_path: Path) -> None:
    budget = DecodeBudget(total=8 << 20, wait=0.2)
    r = Otlp(tmp_path, budget=budget)
    try:
        body = _gzip_json(20)
        with budget.hold(8 << 20):  # other connections hold the whole budget
            status, answer = post(r.url, body, "application/json", headers={"Content-Encoding": "gzip"})
        assert status == 503 and r.ingest.requests["throttled"] == 1 and r.counted() == 0
        assert json.loads(answer)["code"] == 14  # UNAVAILABLE: OTLP exporters retry it
        c = http.client.HTTPConnection("127.0.0.1", r.server.port, timeout=5)
        with budget.hold(8 << 20):
            c.request("POST", "/v1/traces", body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
            resp = c.getresponse()
            resp.read()
        assert resp.status == 503 and resp.getheader("Retry-After") == "1"
        c.request("POST", "/v1/traces", body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        resp = c.getresponse()  # the same connection, once there is room
        resp.read()
        assert resp.status == 200 and r.counted() == 20 and budget.used == 0
    finally:
        r.server.stop()


def test_concurrent_gzip_posts_share_the_budget(tmp_path: Path) -> None:
    """8 connections post gzip JSON at once (each ~0.9 MB inflated, a ~5 MB share with the
    decoder's working set) against a 12 MiB budget: what is held at once never passes it;
    every post is answered 200 (it waited for room) or 503, each 200 counted once."""
    budget = DecodeBudget(total=12 << 20, wait=2.0)
    r = Otlp(tmp_path, budget=budget)
    body = _gzip_json(400)
    answers: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status, _ = post(r.url, body, "application/json", headers={"Content-Encoding": "gzip"}, timeout=30)
        with lock:
            answers.append(status)

    try:
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        ok = answers.count(200)
        print(f"8 concurrent gzip posts: {ok} answered 200, {answers.count(503)} 503; "
              f"budget peak {budget.peak / 2**20:.1f} MiB of {budget.total / 2**20:.0f} MiB")
        assert len(answers) == 8 and set(answers) <= {200, 503} and ok >= 1
        assert budget.peak <= budget.total and budget.used == 0
        assert r.counted() == 400  # one post counted, the same spans posted again are duplicates
        assert r.ingest.spans["accepted"] == 400 * 3 and r.ingest.spans["duplicate"] == 400 * 3 * (ok - 1)
    finally:
        r.server.stop()


def test_a_request_bigger_than_the_budget_runs_alone() -> None:
    budget = DecodeBudget(total=1 << 20, wait=0.2)
    with budget.hold(4 << 20) as charge:  # alone: allowed past the total
        charge(1 << 20)
        assert budget.used == 5 << 20
        got: list[Any] = []

        def other() -> None:
            try:
                with budget.hold(1):
                    got.append("ran")
            except Exception as e:
                got.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(got) == 1 and getattr(got[0], "status", None) == 503
    assert budget.used == 0 and budget.refused == 1
