"""The request head both listeners read (exporter/httphead.py instead of http.server's email
parser): the same limits and replies as before, stricter where a proxy could read a head
differently, and the HTTP/1.1 behaviour clients rely on (keep-alive, Connection: close,
HTTP/1.0, Expect: 100-continue, HEAD, one Date and Server header), on real sockets."""

from __future__ import annotations

import base64
import io
import socket
from collections.abc import Iterator

import bcrypt
import pytest
from prometheus_client.registry import CollectorRegistry

from exporter.httphead import MAX_HEADERS, MAX_LINE, HeadError, read_fields, request_line
from exporter.otlp.receiver import OtlpIngest, OtlpServer
from exporter.server import MetricsServer, Timeouts
from exporter.source import ErrorCounts, SelfCollector
from exporter.traces.tailer import TailerSettings, TraceTailer
from exporter.webconfig import BasicAuth
from tests.otlp_payloads import export_request, request_spans

BOUNDS = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
QUICK = Timeouts(header=2.0, idle=3.0)
BODY = export_request(request_spans()).SerializeToString()


@pytest.mark.parametrize(("line", "status"), [
    (b"GET /metrics HTTP/1.1\r\n", 0),
    (b"POST /v1/traces HTTP/1.0\r\n", 0),
    (b"GET /metrics\r\n", 400),  # HTTP/0.9: no headers, nothing to check a body against
    (b"GET /metrics HTTP/1.1 extra\r\n", 400),
    (b"GET /metrics HTTX/1.1\r\n", 400),
    (b"GET /metrics HTTP/1\r\n", 400),
    (b"GET /metrics HTTP/1.x\r\n", 400),
    (b"GET /metrics HTTP/1.\xb2\r\n", 400),  # '²': str.isdigit() says yes, int() says no
    (b"GET /metrics HTTP/2.0\r\n", 505),
])
def test_request_lines(line: bytes, status: int) -> None:
    if status:
        with pytest.raises(HeadError) as e:
            request_line(line)
        assert e.value.status == status
    else:
        want_method, want_target, want_version = line.split()
        assert request_line(line) == (want_method.decode(), want_target.decode(),
                                      (int(want_version[5:6]), int(want_version[7:8])))


def test_a_scheme_relative_target_is_read_as_a_path() -> None:
    assert request_line(b"GET //evil.example/x HTTP/1.1\r\n")[1] == "/evil.example/x"


@pytest.mark.parametrize(("head", "status"), [
    (b"Host: x\r\nContent-Type: application/json\r\n\r\n", 0),
    (b"Host: x\n\n", 0),  # bare LF line ends, as http.server takes them
    (b"Host: x\r\nX-Long: " + b"a" * MAX_LINE + b"\r\n\r\n", 431),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n", 431),
    (b"Host: x\r\nContent-Length : 5\r\n\r\n", 400),  # whitespace before the colon
    (b"Host: x\r\nX-A: 1\r\n  folded\r\n\r\n", 400),  # obs-fold
    (b"Host: x\r\nno colon here\r\n\r\n", 400),
    (b"Host: x\r\n: empty name\r\n\r\n", 400),
])
def test_header_blocks(head: bytes, status: int) -> None:
    if status:
        with pytest.raises(HeadError) as e:
            read_fields(io.BufferedReader(io.BytesIO(head)))  # type: ignore[arg-type]
        assert e.value.status == status
    else:
        h = read_fields(io.BufferedReader(io.BytesIO(head)))  # type: ignore[arg-type]
        assert h.get("HOST") == h["host"] == "x" and "Host" in h and h.get("X-None") is None


def test_repeated_headers_keep_every_value_in_order_and_stop_at_the_empty_line() -> None:
    rfile = io.BufferedReader(io.BytesIO(b"Accept: a\r\naccept:  b \r\n\r\nGET / HTTP/1.1\r\n"))  # type: ignore[arg-type]
    h = read_fields(rfile)  # type: ignore[arg-type]
    assert h.get_all("ACCEPT") == ["a", "b"] and h.get("accept") == "a"
    assert rfile.read() == b"GET / HTTP/1.1\r\n"  # the next request is left unread


class Servers:
    def __init__(self, auth: BasicAuth | None = None) -> None:
        self.tailer = TraceTailer(TailerSettings([], None, BOUNDS))
        self.ingest = OtlpIngest(self.tailer.aggregator, 60.0)
        self.otlp = OtlpServer(self.ingest, "127.0.0.1", 0, timeouts=QUICK, auth=auth)
        reg = CollectorRegistry()
        reg.register(SelfCollector(ErrorCounts()))
        self.metrics = MetricsServer(reg, "127.0.0.1", 0, timeouts=QUICK)
        for s in (self.otlp, self.metrics):
            s.httpd.timeout = 0.05
            s.start()

    def stop(self) -> None:
        self.otlp.stop()
        self.metrics.stop()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.stop()


def _exchange(port: int, data: bytes, answers: int = 1) -> list[tuple[bytes, bytes]]:
    """Send `data`, read `answers` answers (head, body by Content-Length), then check that the
    server closed the connection if the last answer said so."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        buf = b""
        for _ in range(answers):
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                assert chunk, f"closed before an answer: {buf!r}"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            n = int(next((ln.split(b":", 1)[1] for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length:")), b"0"))
            if head.startswith(b"HTTP/1.1 100"):
                n = 0
            while len(buf) < n and not head.startswith(b"HEAD"):
                chunk = s.recv(65536)
                assert chunk
                buf += chunk
            out.append((head, buf[:n]))
            buf = buf[n:]
        if b"Connection: close" in out[-1][0]:
            s.settimeout(2)
            assert s.recv(1) == b""
    return out


def _post(extra: bytes = b"", body: bytes = BODY, version: bytes = b"1.1") -> bytes:
    return (b"POST /v1/traces HTTP/%s\r\nHost: x\r\ncontent-type: application/x-protobuf\r\n"
            b"Content-Length: %d\r\n%s\r\n%s" % (version, len(body), extra, body))


@pytest.mark.parametrize("which", ["otlp", "metrics"])
@pytest.mark.parametrize(("head", "status"), [
    (b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /x\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nContent-Length : 0\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n", 431),
    (b"GET /x HTTP/1.1\r\nX-Long: " + b"a" * MAX_LINE + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"BREW /x HTTP/1.1\r\nHost: x\r\n\r\n", 501),
])
def test_hostile_heads_are_refused_and_the_connection_closed(servers: Servers, which: str, head: bytes,
                                                             status: int) -> None:
    port = servers.otlp.port if which == "otlp" else servers.metrics.port
    (answer, _), = _exchange(port, head)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    assert b"Connection: close" in answer


def test_keep_alive_serves_posts_in_turn_and_connection_close_ends_it(servers: Servers) -> None:
    before = servers.ingest.requests["success"]
    answers = _exchange(servers.otlp.port, _post() + _post() + _post(b"Connection: close\r\n"), answers=3)
    assert [h.split(b" ", 2)[1] for h, _ in answers] == [b"200"] * 3
    assert b"Connection: close" not in answers[0][0] and b"Connection: close" in answers[2][0]
    for head, _ in answers:
        lines = [ln.split(b":", 1)[0].lower() for ln in head.split(b"\r\n")[1:]]
        assert lines.count(b"date") == 1 and lines.count(b"server") == 1
    assert servers.ingest.requests["success"] == before + 3


def test_http_1_0_is_answered_then_closed_unless_it_asks_for_keep_alive(servers: Servers) -> None:
    (head, _), = _exchange(servers.otlp.port, _post(version=b"1.0"))
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    answers = _exchange(servers.otlp.port, _post(b"Connection: keep-alive\r\n", version=b"1.0") * 2, answers=2)
    assert [h[:12] for h, _ in answers] == [b"HTTP/1.1 200"] * 2


def test_expect_100_continue_gets_continue_then_the_answer(servers: Servers) -> None:
    head = _post(b"Expect: 100-continue\r\n")[:-len(BODY)]  # the head alone: the body waits for 100
    with socket.create_connection(("127.0.0.1", servers.otlp.port), timeout=5) as s:
        s.sendall(head)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(BODY)
        rest = first[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        while b"\r\n\r\n" not in rest:
            rest += s.recv(65536)
    assert rest.startswith(b"HTTP/1.1 200")


def test_chunked_or_unsized_posts_are_411_counted_malformed(servers: Servers) -> None:
    before = servers.ingest.requests["malformed"]
    chunked = (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
    (head, _), = _exchange(servers.otlp.port, chunked)
    assert head.startswith(b"HTTP/1.1 411") and b"Connection: close" in head
    unsized = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\r\n"
    (head, _), = _exchange(servers.otlp.port, unsized)
    assert head.startswith(b"HTTP/1.1 411")
    assert servers.ingest.requests["malformed"] == before + 2


def test_head_on_metrics_has_the_length_and_no_body(servers: Servers) -> None:
    (_, body), = _exchange(servers.metrics.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    with socket.create_connection(("127.0.0.1", servers.metrics.port), timeout=5) as s:
        s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest == b"" and body == b"ok\n"
    assert b"Content-Length: %d" % len(body) in head


def test_otlp_401_names_the_scheme_and_closes() -> None:
    auth = BasicAuth({"triton": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))})
    s = Servers(auth)
    try:
        (head, _), = _exchange(s.otlp.port, _post())
        assert head.startswith(b"HTTP/1.1 401") and b'WWW-Authenticate: Basic realm="inference-profiler"' in head
        assert b"Connection: close" in head
        ok = b"Authorization: Basic " + base64.b64encode(b"triton:s3cret") + b"\r\n"
        (head, _), = _exchange(s.otlp.port, _post(ok + b"Connection: close\r\n"))
        assert head.startswith(b"HTTP/1.1 200")
        assert s.ingest.requests["unauthorized"] == 1 and s.ingest.requests["success"] == 1
    finally:
        s.stop()
