"""Connection floods against the real `serve`: a burst of scrapes, a slowloris under a low
file-descriptor limit, slow headers, and a GET carrying a smuggled second request."""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

from exporter import server as server_mod
from exporter.server import MetricsServer
from exporter.source import ErrorCounts, SelfCollector
from tests import tracegen

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], int]]:
    d = tmp_path_factory.mktemp("flood")
    tracegen.write_file(str(d / "trace.json.0"), tracegen.traces(200))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}
    p = subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", "--trace-file", str(d / "trace.json"),
                          "--triton", "none", "--ebpf", "off", "--state-dir", str(d / "state"),
                          "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while True:
        try:
            if _get(port, "/readyz")[0] == 200:
                break
        except OSError:
            pass
        assert p.poll() is None and time.monotonic() < deadline, "serve did not come up"
        time.sleep(0.1)
    yield p, port
    p.terminate()
    _, err = p.communicate(timeout=30)
    assert "Traceback" not in err, err


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else 0
    return status, data.partition(b"\r\n\r\n")[2], time.monotonic() - t0


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_250_simultaneous_scrapes_are_all_answered(serve: tuple[subprocess.Popen[str], int]) -> None:
    _, port = serve
    sel = selectors.DefaultSelector()
    socks = []
    t0 = time.monotonic()
    for _ in range(250):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE, b"")
    answered = 0
    deadline = time.monotonic() + 30
    while answered < 250 and time.monotonic() < deadline:
        for key, ev in sel.select(timeout=1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if ev & selectors.EVENT_WRITE:
                s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                sel.modify(s, selectors.EVENT_READ, b"")
                continue
            try:
                chunk = s.recv(1 << 20)
            except ConnectionError:
                chunk = b""
            if chunk:
                sel.modify(s, selectors.EVENT_READ, key.data + chunk)
                continue
            sel.unregister(s)
            if key.data.startswith(b"HTTP/1.1 200") and b"inference_profiler_traces_total" in key.data:
                answered += 1
    took = time.monotonic() - t0
    for s in socks:
        s.close()
    assert answered == 250, f"{answered} of 250 answered in {took:.1f}s"
    print(f"250 simultaneous scrapes answered in {took:.2f}s")


def test_slowloris_under_fd_limit_256_keeps_healthz_and_scrapes_fast(
        serve: tuple[subprocess.Popen[str], int]) -> None:
    """300 connections trickling header bytes, the process at 256 descriptors: /healthz and a
    scrape still answer within 1 s, and the accept loop does not spin."""
    p, port = serve
    if shutil.which("prlimit") is None:
        pytest.fail("prlimit (util-linux) is missing")
    import resource

    soft, hard = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
    subprocess.run(["prlimit", f"--pid={p.pid}", "--nofile=256:"], check=True)
    assert resource.prlimit(p.pid, resource.RLIMIT_NOFILE)[0] == 256
    attackers: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            attackers.append(s)
        time.sleep(0.3)
        for s in attackers:
            with contextlib.suppress(OSError):
                s.send(b"GET /metrics HTTP/1.1\r\n")
        cpu0, t0 = _cpu_seconds(p.pid), time.monotonic()
        worst = {"/healthz": 0.0, "/metrics": 0.0}
        for round_ in range(6):
            for s in attackers:  # keep trickling: one header byte per connection per round
                with contextlib.suppress(OSError):
                    s.send(b"X")
            for path in worst:
                status, _body, took = _get(port, path, timeout=5)
                assert status == 200, (path, round_, status)
                worst[path] = max(worst[path], took)
            time.sleep(0.3)
        cpu = (_cpu_seconds(p.pid) - cpu0) / (time.monotonic() - t0)
        fds = _open_fds(p.pid)
    finally:
        for s in attackers:
            s.close()
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (soft, hard))
    print(f"slowloris 300 at nofile 256: worst /healthz {worst['/healthz']:.3f}s, "
          f"worst /metrics {worst['/metrics']:.3f}s, exporter CPU {cpu:.0%} of a core, {fds} fds open")
    assert worst["/healthz"] < 1.0 and worst["/metrics"] < 1.0, worst
    assert 150 < fds <= 256  # the flood did reach the limit, and stayed within it
    assert cpu < 0.8, f"the exporter used {cpu:.0%} of a core while flooded"


@pytest.fixture
def quick_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MetricsServer]:
    monkeypatch.setattr(server_mod, "HEADER_SECONDS", 1.0)
    reg = CollectorRegistry()
    reg.register(SelfCollector(ErrorCounts()))
    s = MetricsServer(reg, "127.0.0.1", 0)
    s.httpd.timeout = 0.1
    s.start()
    yield s
    s.stop()


def test_client_trickling_headers_is_dropped(quick_server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        t0 = time.monotonic()
        closed_after = None
        for _ in range(40):
            try:
                s.sendall(b"X")
                s.settimeout(0.2)
                if s.recv(1024) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - t0
                break
    assert closed_after is not None and closed_after < 3.0, closed_after
    assert quick_server.httpd.evicted >= 1


def test_get_body_is_not_read_as_a_second_request(quick_server: MetricsServer) -> None:
    smuggled = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in data and b"404" not in data


def test_scrapes_stay_fast_while_a_big_file_without_boundaries_is_read(tmp_path: Path) -> None:
    """128 MB of '{' being ingested: /healthz and /metrics keep answering within 1 s."""
    with open(tmp_path / "trace.json.0", "wb") as f:
        f.write(b"[")
        for _ in range(128):
            f.write(b"{" * (1 << 20))
        f.write(b"]")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}
    p = subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", "--trace-file", str(tmp_path / "trace.json"),
                          "--triton", "none", "--ebpf", "off", "--state-dir", str(tmp_path / "state"),
                          "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        worst = {"/healthz": 0.0, "/metrics": 0.0}
        done = False
        deadline = time.monotonic() + 120
        samples = 0
        while not done and time.monotonic() < deadline:
            try:
                for path in worst:
                    status, body, took = _get(port, path, timeout=10)
                    assert status == 200
                    worst[path] = max(worst[path], took)
                    samples += 1
                    if path == "/metrics":
                        done = b'inference_profiler_trace_files_total{result="parsed"} 1.0' in body
            except ConnectionRefusedError:
                pass  # not listening yet
            time.sleep(0.05)
        assert done, "the file was never ingested"
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    print(f"while 128 MB without boundaries was read: worst /healthz {worst['/healthz']:.3f}s, "
          f"worst /metrics {worst['/metrics']:.3f}s over {samples} requests")
    assert samples > 10 and worst["/healthz"] < 1.0 and worst["/metrics"] < 1.0, worst
    assert "malformed_json=1" in err


def test_keep_alive_connection_serves_several_requests(quick_server: MetricsServer) -> None:
    """Prometheus reuses its connection: waiting for the next request must not break it."""
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", quick_server.port, timeout=5)
    try:
        for _ in range(3):
            c.request("GET", "/metrics")
            r = c.getresponse()
            assert r.status == 200 and b"inference_profiler_build_info" in r.read()
            time.sleep(0.2)  # idle between scrapes, shorter than the idle timeout
    finally:
        c.close()
    assert quick_server.httpd.evicted == 0
