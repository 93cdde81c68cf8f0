"""Real Triton (the 2.51 wheel) in OpenTelemetry mode posting to `serve --otlp-listen`,
which forwards every payload to a sink; from the sink's own decode of those bodies
(plain json, tests/reference.py) every count and stage sum equals the exporter's.
And: acknowledged spans survive a SIGKILL of the exporter, counted exactly once.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.demo.launcher import (
    ENSEMBLE,
    MODEL,
    STREAM,
    STREAM_ENSEMBLE,
    STREAM_THREAD,
    TEXT,
    TritonServer,
    copy_model_repository,
    free_port,
)
from exporter.demo.traffic import STREAM_TRAFFIC, TOKENS, plan_for, send_requests
from tests import reference
from tests.otlp_payloads import (
    T0,
    export_request,
    post,
    request_spans,
    span_dicts,
    to_json,
    trace_file_objects,
)
from tests.test_traces_e2e import assert_metrics_match, expected_from_files
from tests.triton_harness import ExporterProcess, Scrape

ROOT = Path(__file__).resolve().parent.parent


class Sink:
    """An independent trace backend: stores every body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        sink = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with sink.lock:
                    sink.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/traces"

    def spans(self) -> list[dict[str, Any]]:
        with self.lock:
            bodies = list(self.bodies)
        return [s for b in bodies for s in span_dicts(b)]


class Stack:
    def __init__(self, sink: Sink, exporter: ExporterProcess, triton: TritonServer, workdir: Path) -> None:
        self.sink, self.exporter, self.triton, self.workdir = sink, exporter, triton, workdir


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("otlp")
    sink = Sink()
    otlp_port, port = free_port(), free_port()
    exporter = ExporterProcess(["--otlp-listen", f"127.0.0.1:{otlp_port}", "--otlp-forward", sink.url,
                                "--triton", "none", "--ebpf", "off", "--state-dir", str(work / "state"),
                                "--listen", f"127.0.0.1:{port}"], work, port)
    triton = None
    try:
        exporter.wait_ready()
        repo = copy_model_repository(work)
        triton = TritonServer(repo, work, extra_args=[
            "--trace-config", "mode=opentelemetry",
            "--trace-config", f"opentelemetry,url=http://127.0.0.1:{otlp_port}/v1/traces",
            "--trace-config", "opentelemetry,bsp_schedule_delay=100",  # export every 100 ms
            "--trace-config", "rate=1", "--trace-config", "level=TIMESTAMPS"]).start()
        yield Stack(sink, exporter, triton, work)
    finally:
        if triton is not None:
            triton.stop()
        exporter.stop()
        sink.httpd.shutdown()


def _roots(spans: list[dict[str, Any]]) -> int:
    return sum(1 for s in spans if s["name"] == "InferRequest")


def _exemplar_trace_ids(exporter: ExporterProcess) -> set[str]:
    req = urllib.request.Request(exporter.url + "/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    return set(re.findall(r'# \{[^}]*trace_id="([^"]*)"', text))


@pytest.mark.triton
@pytest.mark.prometheus
def test_real_triton_over_otlp_counts_what_the_sink_got(stack: Stack) -> None:
    t = stack.triton
    # unary and ensemble over HTTP and gRPC; the decoupled models (responses sent from execute()
    # and from a thread, and as an ensemble step) over gRPC streams, generate_stream and generate
    plan = {**plan_for(3), **dict.fromkeys(STREAM_TRAFFIC, 2)}
    counts = send_requests(t.http_address, t.grpc_address, plan, concurrency=2, id_prefix="otlp-")
    assert counts.succeeded == counts.sent, counts.last_error
    requests = sum(counts.sent.values())
    deadline = time.monotonic() + 30
    while _roots(stack.sink.spans()) < requests:
        assert time.monotonic() < deadline, f"sink got {_roots(stack.sink.spans())} of {requests} requests"
        time.sleep(0.2)

    spans = stack.sink.spans()
    trace_file = stack.workdir / "from-sink.json"
    trace_file.write_text(json.dumps(trace_file_objects(spans)))
    exp = expected_from_files([trace_file])
    assert exp.top_level == requests
    assert {k[0] for k in exp.traces} == {MODEL, ENSEMBLE, STREAM, STREAM_THREAD, STREAM_ENSEMBLE, TEXT}
    m = stack.exporter.wait_for(
        lambda s: s.total("inference_profiler_traces_total") == sum(exp.traces.values()))
    assert_metrics_match(m, exp)
    # responses per request, against the reference's count from the sink's bodies
    traces = reference.load_traces([str(trace_file)])
    want: dict[tuple[str, str, str], int] = defaultdict(int)
    for key in traces:
        o = reference.observe(traces, key)
        if o is not None:
            want[o.labels] += o.responses
    got = {(lab["model"], lab["version"], lab["protocol"]): int(v)
           for lab, v in m.select("inference_profiler_responses_per_request_sum")}
    assert got == dict(want)
    # two streamed requests: every token and the empty final each (its ensemble steps come on top)
    assert got[(STREAM, "1", "grpc")] >= 2 * (TOKENS + 1)
    assert m.total("inference_profiler_stage_duration_seconds_count", model=STREAM_THREAD,
                   stage="inter_response") > 0
    # every accepted payload reached the sink unchanged, none dropped, none rejected
    accepted = m.total("inference_profiler_otlp_requests_total", result="success")
    deadline = time.monotonic() + 10
    while len(stack.sink.bodies) < accepted and time.monotonic() < deadline:
        time.sleep(0.1)  # forwarding is asynchronous
    assert len(stack.sink.bodies) == accepted
    spans = stack.sink.spans()
    assert m.total("inference_profiler_otlp_spans_total", result="accepted") == len(spans)
    assert m.total("inference_profiler_otlp_spans_total", result="rejected") == 0
    assert m.total("inference_profiler_otlp_forward_dropped_total") == 0
    # exemplars lead to traces the backend has
    ids = _exemplar_trace_ids(stack.exporter)
    assert ids and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids <= {s["trace"] for s in spans}
    # the OTLP families in the text format pass promtool's lint (the demo's test covers the other sources)
    lint = subprocess.run(["promtool", "check", "metrics"], input=stack.exporter.get("/metrics").encode(),
                          capture_output=True, timeout=60)
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()[-3000:]


def test_acknowledged_spans_survive_sigkill_counted_once(tmp_path: Path) -> None:
    otlp_port, port = free_port(), free_port()
    args = ["--otlp-listen", f"127.0.0.1:{otlp_port}", "--triton", "none", "--ebpf", "off",
            "--state-dir", str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"]
    url = f"http://127.0.0.1:{otlp_port}/v1/traces"
    flat = [[s for p in ("http", "grpc") for s in request_spans(T0 + i * 10**7, protocol=p, request_id=f"{i}{p}")]
            for i in range(6)]
    # batch 2 leaves one request's root for batch 3: held spans must survive too
    flat[3].insert(0, flat[2].pop())
    bodies = [export_request(b).SerializeToString() for b in flat]
    e = ExporterProcess(args, tmp_path, port)
    e.wait_ready()
    for b in bodies[:3]:
        assert post(url, b)[0] == 200
    e.stop(signal.SIGKILL)
    e = ExporterProcess(args, tmp_path, port)
    try:
        e.wait_ready()
        assert post(url, bodies[2])[0] == 200  # the sender never saw our reply: it resends
        for b in bodies[3:]:
            assert post(url, b)[0] == 200
        all_spans = span_dicts(to_json(export_request([s for b in flat for s in b])))
        trace_file = tmp_path / "want.json"
        trace_file.write_text(json.dumps(trace_file_objects(all_spans)))
        exp = expected_from_files([trace_file])
        m: Scrape = e.scrape()
        assert_metrics_match(m, exp)
        assert m.total("inference_profiler_traces_total") == 12
        assert m.total("inference_profiler_otlp_spans_total", result="duplicate") == len(flat[2])
    finally:
        e.stop()


@pytest.mark.prometheus
def test_prometheus_with_the_compose_flags_stores_the_w3c_exemplars(tmp_path: Path) -> None:
    """The compose Prometheus' exemplar flag keeps the trace ids the OTLP-fed histograms carry."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    flags = [f for f in compose["services"]["prometheus"]["command"] if f.startswith("--enable-feature=")]
    assert flags
    otlp_port, port, prom_port = free_port(), free_port(), free_port()
    e = ExporterProcess(["--otlp-listen", f"127.0.0.1:{otlp_port}", "--triton", "none", "--ebpf", "off",
                         "--state-dir", str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"], tmp_path, port)
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "inference-profiler", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        e.wait_ready()
        spans = [s for i in range(5) for s in request_spans(T0 + i * 10**7, protocol="http", request_id=f"x{i}")]
        sent = {s.trace_id.hex() for s in spans}
        assert post(f"http://127.0.0.1:{otlp_port}/v1/traces", export_request(spans).SerializeToString())[0] == 200
        deadline = time.monotonic() + 30
        found: set[str] = set()
        while not found:
            assert time.monotonic() < deadline, "Prometheus stored no exemplar"
            time.sleep(0.5)
            now = time.time()
            url = (f"http://127.0.0.1:{prom_port}/api/v1/query_exemplars?" + urllib.parse.urlencode(
                {"query": "inference_profiler_stage_duration_seconds_bucket", "start": now - 300, "end": now + 60}))
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    data = json.loads(r.read())["data"]
            except OSError:
                continue
            found = {x["labels"]["trace_id"] for series in data for x in series["exemplars"]}
        assert found <= sent and all(re.fullmatch(r"[0-9a-f]{32}", t) for t in found)
    finally:
        prom.terminate()
        prom.wait(15)
        e.stop()
