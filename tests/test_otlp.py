"""The OTLP receiver in process: regrouping, the same numbers as the trace-file path,
protobuf/JSON/gzip, resends, held spans across restarts, hostile input, forwarding."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from exporter.demo.launcher import free_port
from exporter.otlp.decode import MAX_BODY_BYTES, MAX_INFLATED_BYTES
from exporter.otlp.forward import Forwarder
from exporter.otlp.receiver import OtlpIngest, OtlpServer
from exporter.traces.aggregate import TraceAggregate
from exporter.traces.tailer import STATE_FILE, TailerSettings, TraceTailer
from exporter.webconfig import BasicAuth
from tests.otlp_payloads import (
    T0,
    export_request,
    post,
    request_spans,
    span_dicts,
    to_json,
    trace_file_objects,
)
from tests.test_webconfig import PASSWORD, _client_ctx, pki  # noqa: F401 (pki: the fixture)

BOUNDS = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
SAMPLE = Path(__file__).parent / "samples" / "otlp" / "triton-2.51-stream.json"


class Receiver:
    def __init__(self, state_dir: Path | None, hold_seconds: float = 60.0, auth: Any = None,
                 forwarder: Forwarder | None = None) -> None:
        self.tailer = TraceTailer(TailerSettings([], str(state_dir) if state_dir else None, BOUNDS))
        self.ingest = OtlpIngest(self.tailer.aggregator, hold_seconds)
        self.server = OtlpServer(self.ingest, "127.0.0.1", 0, forwarder, None, auth)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}/v1/traces"

    @property
    def live(self) -> TraceAggregate:
        return self.tailer.live

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path / "state")
    yield r
    r.close()


def traces(agg: TraceAggregate) -> dict[tuple[str, ...], int]:
    return dict(agg.traces)


def sums(agg: TraceAggregate) -> dict[tuple[str, ...], tuple[int, int, list[int]]]:
    return {k: (h.count, h.total, list(h.counts)) for k, h in agg.histograms.items()}


def file_aggregate(tmp_path: Path, spans: list[dict[str, Any]]) -> TraceAggregate:
    """The same requests through the trace-file path."""
    d = tmp_path / "files"
    d.mkdir(exist_ok=True)
    (d / "trace.json").write_text(json.dumps(trace_file_objects(spans)))
    t = TraceTailer(TailerSettings([str(d / "trace.json")], None, BOUNDS, settle_seconds=0))
    t.poll()
    return t.live


def mixed_requests() -> list[Any]:
    return [
        *request_spans(T0, protocol="http", request_id="a"),
        *request_spans(T0 + 10**6, protocol="grpc", request_id="b"),
        *request_spans(T0 + 2 * 10**6, protocol="http", ensemble="add_sub_ensemble", request_id="c"),
        *request_spans(T0 + 3 * 10**6, model="stream", protocol="grpc", responses=4, request_id="d"),
        *request_spans(T0 + 4 * 10**6, model="stream", protocol="http", responses=3, boot_sends=True),
    ]


def test_spans_split_over_requests_count_once_their_root_arrives_and_match_the_file_path(
        receiver: Receiver, tmp_path: Path) -> None:
    spans = mixed_requests()
    roots = [s for s in spans if not s.parent_span_id]
    rest = [s for s in spans if s.parent_span_id]
    status, _ = post(receiver.url, export_request(rest).SerializeToString())
    assert status == 200 and traces(receiver.live) == {}  # nothing is complete yet
    assert sum(len(t) for t, _ in receiver.ingest.held.values()) == len(rest)
    status, body = post(receiver.url, export_request(roots).SerializeToString())
    assert status == 200 and not receiver.ingest.held
    resp = ExportTraceServiceResponse()
    resp.ParseFromString(body)
    assert resp.partial_success.rejected_spans == 0
    assert traces(receiver.live) == {
        ("add_sub", "1", "http"): 2, ("add_sub", "1", "grpc"): 1, ("add_sub_ensemble", "1", "http"): 1,
        ("stream", "1", "grpc"): 1, ("stream", "1", "http"): 1,
    }
    want = file_aggregate(tmp_path, span_dicts(to_json(export_request(spans))))
    assert traces(want) == traces(receiver.live)
    assert sums(want) == sums(receiver.live)
    assert dict(want.timeline) == dict(receiver.live.timeline)
    assert {k: list(h.counts) for k, h in want.responses.items()} == \
        {k: list(h.counts) for k, h in receiver.live.responses.items()}
    # the boot-time sends were not captured: no http_send for that stream, its 3 responses timed
    assert ("stream", "1", "http", "http_send") not in receiver.live.histograms
    assert receiver.live.responses[("stream", "1", "http")].total == 3
    # exemplars carry the W3C trace id of their request
    w3c = {s.trace_id.hex() for s in spans}
    ex = [e for per in receiver.live.exemplars.values() for e in per.values()]
    assert ex and all(e.trace_id in w3c and len(e.trace_id) == 32 for e in ex)


def test_real_triton_body_decodes_like_its_trace_file(receiver: Receiver, tmp_path: Path) -> None:
    body = SAMPLE.read_bytes()  # Triton 2.51, OpenTelemetry mode: a gRPC stream and an HTTP generate_stream
    status, reply = post(receiver.url, body, "application/json")
    assert status == 200 and json.loads(reply) == {}
    assert traces(receiver.live) == {("stream", "1", "grpc"): 1, ("stream", "1", "http"): 1}
    want = file_aggregate(tmp_path, span_dicts(body))
    assert sums(want) == sums(receiver.live)
    assert receiver.live.responses[("stream", "1", "grpc")].total == 3
    assert ("stream", "1", "http", "http_send") not in receiver.live.histograms  # sends at boot: dropped


@pytest.mark.parametrize("form", ["protobuf", "json", "protobuf+gzip", "json+gzip"])
def test_every_encoding_counts_the_same(form: str, tmp_path: Path) -> None:
    spans = mixed_requests()
    req = export_request(spans)
    r = Receiver(None)
    try:
        body = to_json(req) if form.startswith("json") else req.SerializeToString()
        ctype = "application/json" if form.startswith("json") else "application/x-protobuf"
        status, reply = post(r.url, body, ctype, "gzip" if form.endswith("gzip") else None)
        assert status == 200
        if ctype == "application/json":
            assert json.loads(reply) == {}
        want = file_aggregate(tmp_path, span_dicts(to_json(req)))
        assert sums(r.live) == sums(want) and traces(r.live) == traces(want)
    finally:
        r.close()


def test_a_resent_batch_is_not_counted_twice_also_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spans = mixed_requests()
    first, second = spans[:7], spans[7:]
    r = Receiver(state)
    body1 = export_request(first).SerializeToString()
    assert post(r.url, body1)[0] == 200
    counted = traces(r.live)
    held = sum(len(t) for t, _ in r.ingest.held.values())
    assert held > 0  # part of a request waits for its root
    assert post(r.url, body1)[0] == 200  # Triton resends
    assert traces(r.live) == counted and r.ingest.spans["duplicate"] == len(first)
    r.close()
    # a new process: held spans and the recent span ids come back from the state file
    r2 = Receiver(state)
    try:
        assert traces(r2.live) == counted
        assert sum(len(t) for t, _ in r2.ingest.held.values()) == held
        assert post(r2.url, body1)[0] == 200
        assert r2.ingest.spans["duplicate"] == len(first)
        assert post(r2.url, export_request(second).SerializeToString())[0] == 200
        want = file_aggregate(tmp_path, span_dicts(to_json(export_request(spans))))
        assert traces(r2.live) == traces(want) and sums(r2.live) == sums(want)
    finally:
        r2.close()


def test_spans_whose_root_never_comes_are_counted_after_the_hold(tmp_path: Path) -> None:
    r = Receiver(None, hold_seconds=0.2)
    try:
        spans = [s for s in request_spans(T0, protocol="grpc") if s.parent_span_id]
        assert post(r.url, export_request(spans).SerializeToString())[0] == 200
        assert traces(r.live) == {}
        time.sleep(0.3)
        assert r.ingest.expire() == 1
        assert traces(r.live) == {("add_sub", "1", "none"): 1}  # no frontend events: protocol none
    finally:
        r.close()


def _rejects(r: Receiver) -> dict[str, int]:
    return {k: v for k, v in r.live.rejected.items() if v}


def test_bad_spans_are_rejected_by_reason_with_partial_success(receiver: Receiver) -> None:
    good = request_spans(T0, protocol="http")
    no_version = request_spans(T0, protocol="http")
    for s in no_version:
        if s.attributes:
            del s.attributes[1]  # triton.model_version
    at_zero = request_spans(T0, protocol="grpc")
    at_zero[0].events[0].time_unix_nano = 0
    bad_id = request_spans(T0, protocol="grpc")
    bad_id[1].span_id = b"\x01" * 7
    status, body = post(receiver.url, export_request(good + no_version + at_zero + bad_id).SerializeToString())
    assert status == 200
    resp = ExportTraceServiceResponse()
    resp.ParseFromString(body)
    assert resp.partial_success.rejected_spans == 3
    assert "missing_attribute=1" in resp.partial_success.error_message
    rej = _rejects(receiver)
    assert rej["missing_attribute"] == 1 and rej["implausible_time"] == 1 and rej["bad_span_id"] == 1
    assert rej["orphan_span"] >= 3  # the other spans of the requests that lost their model span
    assert traces(receiver.live)[("add_sub", "1", "http")] == 1
    assert receiver.ingest.requests["partial"] == 1 and receiver.ingest.spans["rejected"] == 3


def _bomb() -> bytes:
    z = gzip.compress(b"\0" * (MAX_INFLATED_BYTES + 1024), compresslevel=9)
    assert len(z) < MAX_BODY_BYTES
    return z


@pytest.mark.parametrize(("case", "status", "result"), [
    ("content_type", 415, "unsupported_media_type"),
    ("encoding", 415, "unsupported_media_type"),
    ("protobuf", 400, "malformed"),
    ("json", 400, "malformed"),
    ("json_not_object", 400, "malformed"),
    ("json_bad_hex", 400, "malformed"),
    ("gzip_corrupt", 400, "malformed"),
    ("gzip_bomb", 413, "too_large"),
    ("too_long", 413, "too_large"),
    ("path", 404, "not_found"),
])
def test_bad_requests_are_refused_and_counted(receiver: Receiver, case: str, status: int, result: str) -> None:
    url, ctype, enc, extra = receiver.url, "application/x-protobuf", None, {}
    body = export_request(request_spans()).SerializeToString()
    if case == "content_type":
        ctype = "text/plain"
    elif case == "encoding":
        extra = {"Content-Encoding": "br"}
    elif case == "protobuf":
        body = b"\x0a\xff\xff\xff\xff\x0f garbage"
    elif case == "json":
        ctype, body = "application/json", b'{"resourceSpans": ['
    elif case == "json_not_object":
        ctype, body = "application/json", b"[1, 2]"
    elif case == "json_bad_hex":
        ctype, body = "application/json", b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}'
    elif case == "gzip_corrupt":
        body, extra = gzip.compress(body)[:-9] + b"123456789", {"Content-Encoding": "gzip"}
    elif case == "gzip_bomb":
        body, extra = _bomb(), {"Content-Encoding": "gzip"}
    elif case == "too_long":
        body = b"\0" * (MAX_BODY_BYTES + 1)
    elif case == "path":
        url = url.replace("/v1/traces", "/v1/metrics")
    got, _ = post(url, body, ctype, enc, extra)
    assert got == status
    assert receiver.ingest.requests[result] == 1
    assert traces(receiver.live) == {}
    # the receiver goes on
    assert post(receiver.url, export_request(request_spans()).SerializeToString())[0] == 200
    assert sum(receiver.live.traces.values()) == 1


def test_basic_auth_from_the_web_config(tmp_path: Path) -> None:
    auth = BasicAuth({"triton": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))})
    r = Receiver(None, auth=auth)
    try:
        body = export_request(request_spans()).SerializeToString()
        assert post(r.url, body)[0] == 401
        import base64

        ok = {"Authorization": "Basic " + base64.b64encode(b"triton:s3cret").decode()}
        assert post(r.url, body, headers=ok)[0] == 200
        assert r.ingest.requests["unauthorized"] == 1 and sum(r.live.traces.values()) == 1
    finally:
        r.close()


_VALID = export_request(request_spans()).SerializeToString()


@pytest.fixture(scope="module")
def fuzz_receiver() -> Iterator[Receiver]:
    r = Receiver(None)
    yield r
    r.close()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(
    st.binary(max_size=400),
    st.builds(lambda pos, b: _VALID[:pos] + b + _VALID[pos + len(b):],
              st.integers(0, len(_VALID)), st.binary(min_size=1, max_size=8)),
), as_json=st.booleans())
def test_fuzzed_bodies_are_answered_never_crash(fuzz_receiver: Receiver, data: bytes, as_json: bool) -> None:
    before = dict(fuzz_receiver.ingest.requests)
    status, _ = post(fuzz_receiver.url, data, "application/json" if as_json else "application/x-protobuf")
    assert status in (200, 400)
    after = fuzz_receiver.ingest.requests
    assert sum(after.values()) == sum(before.values()) + 1
    if status == 400:
        assert after["malformed"] == before.get("malformed", 0) + 1
    # and it still counts a good request after whatever came before
    n = sum(fuzz_receiver.live.traces.values())
    assert post(fuzz_receiver.url, export_request(request_spans()).SerializeToString())[0] == 200
    assert sum(fuzz_receiver.live.traces.values()) == n + 1


# --- forwarding ---------------------------------------------------------------------------

class Backend:
    """A trace backend that can be down, slow or fine; remembers every body it took."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.delay = 0.0
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    def up(self) -> None:
        backend = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(backend.delay)
                with backend.lock:
                    backend.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def test_forwarding_survives_a_dead_then_slow_backend_and_never_sends_twice() -> None:
    port = free_port()
    backend = Backend(port)
    fwd = Forwarder([f"http://127.0.0.1:{port}/v1/traces"], queue_size=2, timeout=5.0, first_backoff=0.01)
    fwd.start()
    r = Receiver(None, forwarder=fwd)
    payloads = [export_request(request_spans(request_id=f"p{i}")).SerializeToString() for i in range(20)]

    def send(batch: list[bytes], gap: float = 0.0) -> float:
        """The slowest ingestion reply of the batch."""
        worst = 0.0
        for p in batch:
            t = time.monotonic()
            assert post(r.url, p)[0] == 200
            worst = max(worst, time.monotonic() - t)
            time.sleep(gap)
        return worst

    def settle(n: int) -> None:
        deadline = time.monotonic() + 10
        while len(backend.bodies) + fwd.dropped < n and time.monotonic() < deadline:
            time.sleep(0.02)

    try:
        assert send(payloads[:6]) < 0.5  # backend down: ingestion unaffected
        settle(6)
        assert fwd.dropped == 6 and not backend.bodies  # queue overflow and given-up retries, each counted once
        backend.delay = 0.6
        backend.up()
        assert send(payloads[6:16]) < 0.4  # slow backend (0.6 s a payload): ingestion does not wait for it
        settle(16)
        dropped_slow = fwd.dropped - 6
        assert 0 < dropped_slow < 10  # some went through, the overflow was dropped
        backend.delay = 0.0
        send(payloads[16:], gap=0.1)
        settle(20)
        assert sum(r.live.traces.values()) == 20
        assert len(backend.bodies) + fwd.dropped == 20  # every payload either forwarded or counted dropped
        assert len(set(backend.bodies)) == len(backend.bodies)  # nothing twice
        assert set(backend.bodies) <= set(payloads) and set(payloads[16:]) <= set(backend.bodies)  # unchanged bytes
    finally:
        r.close()
        fwd.stop()
        backend.down()


# --- the real wiring: serve's trace source with TLS and basic auth from the web config ----

def test_tls_and_basic_auth_from_the_metrics_web_config(pki: Path, tmp_path: Path) -> None:  # noqa: F811
    import base64
    import http.client

    from exporter.config import build
    from exporter.daemon import build_sources
    from exporter.source import ErrorCounts

    port = free_port()
    cfg = build({}, {}, {"otlp_listen": f"127.0.0.1:{port}", "web_config_file": str(pki / "web.yml"),
                         "state_dir": str(tmp_path / "state"), "triton": ["none"],
                         "wire_join": "off"})  # its BCC compile would stay in this test process's RSS
    sources = build_sources(cfg, ErrorCounts())  # the trace source and its peer, the OTLP source
    for s in sources:
        s.start()
    src = sources[0]
    body = export_request(request_spans()).SerializeToString()

    def send(auth: str | None) -> int:
        conn = http.client.HTTPSConnection("localhost", port, context=_client_ctx(pki), timeout=5)
        headers = {"Content-Type": "application/x-protobuf", **({"Authorization": auth} if auth else {})}
        try:
            conn.request("POST", "/v1/traces", body=body, headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        good = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
        assert send(None) == 401
        assert send("Basic " + base64.b64encode(b"prometheus:wrong").decode()) == 401
        assert send(good) == 200
        with pytest.raises((ConnectionError, OSError)):
            post(f"http://127.0.0.1:{port}/v1/traces", body, timeout=3)  # no TLS: refused
        assert sum(src.tailer.live.traces.values()) == 1
    finally:
        for s in reversed(sources):
            s.stop()


@pytest.mark.parametrize(("values", "message"), [
    ({"otlp_listen": "4318"}, "otlp_listen must be HOST:PORT"),
    ({"otlp_listen": "0.0.0.0:4318", "otlp_forward": ["tempo:4318"]}, "otlp_forward must be an http"),
    ({"otlp_forward": ["http://tempo:4318/v1/traces"]}, "otlp_forward needs otlp_listen"),
])
def test_otlp_flags_are_validated(values: dict[str, Any], message: str) -> None:
    from exporter.config import ConfigError, build

    with pytest.raises(ConfigError, match=message):
        build({}, {}, values)


def test_a_payload_whose_commit_fails_gets_503_and_counts_once_when_resent(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = Receiver(state)
    try:
        blocker = state / STATE_FILE
        blocker.mkdir(parents=True)  # a directory where the state file goes: it cannot be written
        body = export_request(request_spans()).SerializeToString()
        status, _ = post(r.url, body)
        assert status == 503 and r.ingest.requests["failed"] == 1
        assert sum(r.live.traces.values()) == 0 and not r.ingest.seen
        blocker.rmdir()
        assert post(r.url, body)[0] == 200  # the sender retries: counted now, once
        assert sum(r.live.traces.values()) == 1 and r.ingest.spans["duplicate"] == 0
    finally:
        r.close()


def test_held_spans_are_bounded_in_bytes_oldest_counted_first() -> None:
    from exporter.otlp.decode import decode
    from exporter.otlp.held import HeldSpans, span_bytes
    from exporter.otlp.spans import spans_of

    rootless = [[s for s in request_spans(T0 + i * 10**6, protocol="grpc") if s.parent_span_id] for i in range(5)]
    parsed = [list(spans_of(decode(export_request(spans).SerializeToString(), "application/x-protobuf", None)[0],
                            lambda reason, n: None, T0)) for spans in rootless]
    per_request = sum(span_bytes(s) for s in parsed[0])
    held = HeldSpans(hold_seconds=60, max_bytes=2 * per_request)  # room for two requests' spans
    for i, spans in enumerate(parsed):
        plan = held.plan(spans, now=float(i))
        held.apply(plan)
        assert held.bytes <= 2 * per_request and len(held.waiting) == min(i + 1, 2)
        if i >= 2:
            assert [next(iter(t.values())).trace_id for t in plan.ready] == [rootless[i - 2][0].trace_id]
        else:
            assert plan.ready == []
