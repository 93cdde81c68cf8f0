"""--otlp-forward against backends that misbehave after taking the body, a pod name that is not
UTF-8 on its way to /metrics, the bucket cap, and the bound on wrong-password CPU."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.config import MAX_STAGE_BUCKETS, ConfigError, build
from exporter.ebpf.pods import container_logs
from exporter.otlp.forward import Forwarder
from exporter.server import MetricsServer
from exporter.webconfig import BasicAuth
from tests.raw_http import read_head, serve_forever

BODY = b"\x0a\x00" * 500  # what is forwarded is opaque to the forwarder


class RawBackend:
    """A TCP server that reads one whole POST and then does `then` to the connection; counts
    the bodies it read completely."""

    def __init__(self, then: Callable[[socket.socket], None]) -> None:
        self.then = then
        self.bodies = 0
        self.requests: list[bytes] = []  # request lines
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        serve_forever(self.sock, self._one)

    def _one(self, c: socket.socket) -> None:
        with c:
            head, _, rest = read_head(c).partition(b"\r\n\r\n")
            self.requests.append(head.split(b"\r\n", 1)[0])
            length = next((int(h.split(b":", 1)[1]) for h in head.split(b"\r\n")
                           if h.lower().startswith(b"content-length:")), 0)
            while len(rest) < length:
                chunk = c.recv(65536)
                if not chunk:
                    break
                rest += chunk
            if length and len(rest) >= length:
                self.bodies += 1
            self.then(c)

    def close(self) -> None:
        self.sock.close()


def _reset(c: socket.socket) -> None:
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST


def _settle(fwd: Forwarder, until: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture
def forward() -> Iterator[Callable[[RawBackend], Forwarder]]:
    made: list[tuple[Forwarder, RawBackend]] = []

    def make(backend: RawBackend) -> Forwarder:
        fwd = Forwarder([f"http://127.0.0.1:{backend.port}/v1/traces"], timeout=2.0, first_backoff=0.01)
        fwd.start()
        made.append((fwd, backend))
        return fwd

    yield make
    for fwd, backend in made:
        fwd.stop()
        backend.close()


def test_a_backend_that_reads_the_body_then_resets_gets_it_once_counted_dropped_once(
        forward: Callable[[RawBackend], Forwarder]) -> None:
    backend = RawBackend(_reset)
    fwd = forward(backend)
    fwd.submit(BODY, {"Content-Type": "application/x-protobuf"})
    _settle(fwd, lambda: fwd.dropped + fwd.backends[0].sent >= 1)
    time.sleep(0.3)  # a resend would come within the backoff (10 ms, doubling)
    print(f"reset after the body: backend read it {backend.bodies} time(s); dropped {fwd.dropped}, "
          f"sent {fwd.backends[0].sent}")
    assert backend.bodies == 1 and fwd.dropped == 1 and fwd.backends[0].sent == 0


def test_a_backend_that_closes_without_answering_is_not_cannot_connect(
        forward: Callable[[RawBackend], Forwarder], caplog: pytest.LogCaptureFixture) -> None:
    backend = RawBackend(lambda c: None)  # reads the body, closes without a word
    fwd = forward(backend)
    with caplog.at_level("DEBUG", logger="otlp"):
        fwd.submit(BODY, {"Content-Type": "application/x-protobuf"})
        _settle(fwd, lambda: fwd.dropped >= 1)
        time.sleep(0.3)
    assert backend.bodies == 1 and fwd.dropped == 1
    why = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(why) == 1 and "not resent" in why[0] and "cannot connect" not in why[0], why


def test_a_redirect_is_not_followed_and_the_payload_is_counted_dropped(
        forward: Callable[[RawBackend], Forwarder]) -> None:
    elsewhere = RawBackend(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    backend = RawBackend(lambda c: c.sendall(
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/v1/traces\r\nContent-Length: 0\r\n\r\n" % elsewhere.port))
    fwd = forward(backend)
    try:
        fwd.submit(BODY, {"Content-Type": "application/x-protobuf"})
        _settle(fwd, lambda: fwd.dropped + fwd.backends[0].sent >= 1)
        time.sleep(0.3)
        assert backend.requests == [b"POST /v1/traces HTTP/1.1"] and elsewhere.requests == []
        assert fwd.dropped == 1 and fwd.backends[0].sent == 0
    finally:
        elsewhere.close()


def test_a_backend_answering_503_then_200_gets_the_payload_again_and_it_counts_sent(
        forward: Callable[[RawBackend], Forwarder]) -> None:
    answers = [b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    backend = RawBackend(lambda c: c.sendall(answers.pop(0)))
    fwd = forward(backend)
    fwd.submit(BODY, {"Content-Type": "application/x-protobuf"})
    _settle(fwd, lambda: fwd.backends[0].sent >= 1)
    assert backend.bodies == 2 and fwd.backends[0].sent == 1 and fwd.dropped == 0  # 503: it said it has none


# --- a pod name that is not UTF-8 ------------------------------------------------------------

class PodSeries(Collector):
    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("inference_profiler_test_pod", "a pod's series", labels=["namespace", "pod", "container"])
        g.add_metric(list(self.labels), 1.0)
        yield g


def test_a_pod_name_with_a_byte_that_is_not_utf8_is_served_not_500(tmp_path: Path) -> None:
    cid = "ab" * 32
    os.mkdir(tmp_path / "logs")
    (tmp_path / "logs" / os.fsdecode(b"triton-\xff_default_server-" + cid.encode() + b".log")).touch()
    labels = container_logs(os.listdir(tmp_path / "logs"))[cid]  # as PodResolver reads the kubelet's links
    assert labels[1] == "triton-\udcff"  # the byte, as the file system gave it
    reg = CollectorRegistry()
    reg.register(PodSeries(labels))
    server = MetricsServer(reg, "127.0.0.1", 0)
    server.start()
    try:
        for accept in ("", "application/openmetrics-text;version=1.0.0", "text/plain;version=1.0.0;escaping=dots"):
            req = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", headers={"Accept": accept})
            with urllib.request.urlopen(req, timeout=5) as r:
                assert r.status == 200
                assert 'pod="triton-\ufffd"'.encode() in r.read(), accept
        proto = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", headers={"Accept": proto})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and "protobuf" in r.headers["Content-Type"]
            assert "triton-\ufffd".encode() in r.read()  # a protobuf string is its UTF-8 bytes
    finally:
        server.stop()


# --- the bucket cap ---------------------------------------------------------------------------

def test_stage_buckets_are_capped() -> None:
    ok = [i / 1000 for i in range(1, MAX_STAGE_BUCKETS + 1)]
    assert build({}, {}, {"stage_buckets": ok, "triton": ["none"]}).stage_buckets == ok
    with pytest.raises(ConfigError, match=r"stage_buckets has 100000 bounds; at most 100 "):
        build({}, {}, {"stage_buckets": [i / 1000 for i in range(1, 100_001)], "triton": ["none"]})


# --- wrong passwords ----------------------------------------------------------------------------

def _header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_wrong_password_cpu_is_rate_bounded_and_a_known_scraper_stays_in() -> None:
    auth = BasicAuth({"prom": bcrypt.hashpw(b"right", bcrypt.gensalt(4))}, checks_per_second=2.0, burst=2)
    assert auth(_header("prom", "right"))  # the scraper, before the flood
    t0 = time.process_time()
    results = [auth(_header("prom", f"wrong{i}")) for i in range(40)]
    cpu = time.process_time() - t0
    assert not any(results)
    checked = 40 - auth.unchecked
    print(f"40 wrong passwords: {checked} bcrypt checks, {auth.unchecked} refused unchecked, {cpu * 1000:.0f} ms CPU")
    assert checked <= 3  # the burst, and a token refilled while checking
    assert auth(_header("prom", "right"))  # remembered: not locked out by the flood
    before = auth.unchecked
    assert not auth(_header("prom", "wrong0"))  # a header seen to fail: refused from memory
    assert auth.unchecked == before + 1
