"""eBPF against a real Triton: its HTTP traffic in the socket histograms, and `serve --ebpf auto`
still serving trace and Triton metrics where eBPF is refused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.demo.launcher import ENSEMBLE, MODEL, TritonServer, free_port
from exporter.demo.traffic import send_requests
from tests.triton_harness import EXPORTER, ExporterProcess, Scrape

pytestmark = [pytest.mark.ebpf, pytest.mark.triton]

LATENCY = "inference_profiler_tcp_latency_seconds"


def test_http_requests_to_triton_appear_in_the_server_histogram(
        triton_factory: Callable[..., TritonServer], exporter_factory: Callable[..., ExporterProcess]) -> None:
    triton = triton_factory(log_frequency=0, trace_rate=0)
    port = str(triton.http_port)
    # only our requests reach this port: no --triton polling, and the port is private
    e = exporter_factory("--triton", "none", "--ebpf", "on", "--ebpf-port", port)
    before = e.scrape()
    assert before.total("inference_profiler_ebpf_up", program="tcp_messages") == 1
    assert before.total(LATENCY + "_count", port=port) == 0
    per_model = 60
    counts = send_requests(triton.http_address, triton.grpc_address,
                           {("http", MODEL): per_model, ("http", ENSEMBLE): per_model}, concurrency=2)
    sent = sum(counts.succeeded.values())
    assert sent == 2 * per_model and not counts.failed, counts.last_error
    s = e.wait_for(lambda m: m.total(LATENCY + "_count", port=port, role="server") >= sent, timeout=20)
    assert s.total(LATENCY + "_count", port=port, role="server") == sent
    # the test's client is on this host too: its side of each request is the client role
    assert s.total(LATENCY + "_count", port=port, role="client") == sent
    server_mean = s.total(LATENCY + "_sum", port=port, role="server") / sent
    client_mean = s.total(LATENCY + "_sum", port=port, role="client") / sent
    assert 0 < server_mean <= client_mean < 1.0
    got = {(lab["role"], lab["direction"]): v
           for lab, v in s.select("inference_profiler_tcp_bytes_total", port=port)}
    # what one side sent, the other received
    assert got[("client", "send")] == got[("server", "recv")] > 0
    assert got[("server", "send")] == got[("client", "recv")] > 0


def test_ebpf_auto_with_an_unavailable_attach_method_serves_the_rest(
        triton_factory: Callable[..., TritonServer], exporter_factory: Callable[..., ExporterProcess]) -> None:
    triton = triton_factory(log_frequency=5)
    # kprobes do not exist on this kernel: the same path as a kernel without the tracepoints
    e = exporter_factory("--trace-file", str(triton.trace_file), "--triton", triton.http_url,
                         "--triton-metrics-url", triton.metrics_url, "--ebpf", "auto", "--ebpf-attach", "kprobe", "--ebpf-port", str(triton.http_port))
    counts = send_requests(triton.http_address, triton.grpc_address, {("http", MODEL): 10}, concurrency=1)
    assert counts.succeeded[("http", MODEL)] == 10
    triton.flush_traces()
    s = e.wait_for(lambda m: m.total("inference_profiler_traces_total") >= 10
                   and m.total("inference_profiler_triton_up") == 1, timeout=30)
    assert s.total("inference_profiler_ebpf_up", program="tcp_messages") == 0
    assert s.select("inference_profiler_ebpf_attach_info", program="tcp_messages", method="none")
    assert not s.select(LATENCY + "_count")
    log = e.log()
    assert "eBPF program tcp_messages not running: tcp_messages: no attach method available" in log
    assert "Traceback" not in log


@pytest.fixture
def world_writable_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="infprof-nobody-")
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_ebpf_auto_unprivileged_serves_triton_metrics(triton_factory: Callable[..., TritonServer],
                                                      world_writable_dir: str) -> None:
    triton = triton_factory(log_frequency=0, trace_rate=0)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "INFPROF_REQUIRE"}
    log_path = os.path.join(world_writable_dir, "exporter.log")
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *EXPORTER,
             "serve", "--ebpf", "auto", "--triton", triton.http_url, "--triton-metrics-url", triton.metrics_url,
             "--listen", f"127.0.0.1:{port}",
             "--state-dir", world_writable_dir],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd="/",
            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        s: Scrape | None = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, Path(log_path).read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    s = Scrape(r.read().decode())
                if s.total("inference_profiler_triton_up") == 1:
                    break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        assert s is not None and s.total("inference_profiler_triton_up") == 1
        assert s.total("inference_profiler_ebpf_up") == 0 and s.select("inference_profiler_ebpf_up")
        assert s.total("inference_profiler_errors_total", source="ebpf", reason="load_failed") == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    ebpf_lines = [ln for ln in Path(log_path).read_text().splitlines() if "eBPF" in ln]
    assert len(ebpf_lines) == 1 and "CAP_BPF" in ebpf_lines[0], ebpf_lines
