"""`inference-profiler demo`: a local Triton with traffic and the exporter against it.

Starts the wheel's tritonserver with add_sub, add_sub_ensemble, the streaming (decoupled)
token_stream models and rolling traces, drives HTTP and gRPC traffic (gRPC streams and
HTTP generate_stream for the streaming models), runs the exporter in-process with every
source on, and prints where to look plus a per-stage summary every few seconds. Ctrl-C
stops it all.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from ..config import Config, ConfigError, build
from ..daemon import Daemon
from ..listen import bind_listening, url_host
from ..traces.source import TraceSource
from .launcher import (
    ENSEMBLE,
    MODEL,
    STREAM,
    STREAM_ENSEMBLE,
    STREAM_THREAD,
    TEXT,
    TritonError,
    TritonServer,
    copy_model_repository,
)
from .perf_run import RATE as PERF_RATE
from .perf_run import PerfAnalyzerRun
from .report import Snapshot, format_report, snapshot
from .traffic import STREAM_TRAFFIC, TrafficDriver

log = logging.getLogger("demo")

REPORT_SECONDS = 10.0
LOG_FREQUENCY = 100  # top-level traces per rolling file: a new file every ~2 s at 50 req/s


def demo_config(args: argparse.Namespace, triton: TritonServer, workdir: Path) -> Config:
    """The exporter's config against the demo's Triton (defaults otherwise; env ignored)."""
    assert triton.trace_file is not None
    flags = {
        "listen": args.listen,
        "trace_file": [str(triton.trace_file)],
        "state_dir": str(workdir / "state"),
        "triton": [triton.http_url],
        "triton_metrics_url": [triton.metrics_url],
        "ebpf": "auto",
        "ebpf_port": [triton.http_port, triton.grpc_port],
        "trace_poll_seconds": 0.5,
        "perf_analyzer_csv": [str(workdir / "perf_analyzer" / "*.csv")],
    }
    return build({}, {}, flags, "demo")


def _banner(cfg: Config, port: int, triton: TritonServer, workdir: Path, rate: float) -> str:
    host, _ = cfg.listen_host_port
    url = f"http://{'127.0.0.1' if host == '0.0.0.0' else url_host(host)}:{port}/metrics"
    return f"""
Inference Profiler demo (workdir {workdir})
  Triton     HTTP {triton.http_url}  gRPC {triton.grpc_address}  metrics {triton.metrics_url}
             models {MODEL} (python, dynamic batching) and {ENSEMBLE};
             streaming (decoupled) {STREAM} (responses from execute()), {STREAM_THREAD}
             (from a thread), {STREAM_ENSEMBLE}; {TEXT} for generate; log {triton.log_path}
  traces     {triton.trace_file}.N  (rate 1, a new file every {triton.log_frequency} requests)
  traffic    {rate:g} req/s in all: HTTP and gRPC to {MODEL} and {ENSEMBLE}, gRPC streams and
             HTTP generate_stream to the streaming models, HTTP generate to {TEXT};
             one perf_analyzer run ({PERF_RATE} req/s to {MODEL}) whose CSV the exporter exposes
  exporter   {url}

Look at it:
  curl -s {url} | grep 'stage_duration_seconds_count'
  curl -s {url} | grep '^inference_profiler_traces_total'
  curl -s {url} | grep '^inference_profiler_responses_per_request_count'   # streaming
  curl -s -H 'Accept: application/openmetrics-text' {url} | grep trace_id | head -3
  curl -s {url} | grep -E '^inference_profiler_(triton|tcp|perf_analyzer)_' | head
  inference-profiler summary {triton.trace_file}.*

Per-stage summary every {REPORT_SECONDS:.0f}s below; Ctrl-C stops everything.
"""


def _live_snapshot(daemon: Daemon) -> Snapshot:
    for source in daemon.sources:
        if isinstance(source, TraceSource):
            agg = source.tailer.live  # one committed aggregate, never mutated after commit
            return snapshot(agg.histograms, agg.traces)
    return Snapshot({}, {})


def _check_listen(cfg: Config) -> None:
    """Fail on a taken --listen port before starting anything."""
    host, port = cfg.listen_host_port
    if port == 0:
        return
    try:
        bind_listening(host, port).close()
    except OSError as e:
        raise ConfigError(f"cannot listen on {cfg.listen}: {e.strerror}; pick another --listen") from None


def run_demo(args: argparse.Namespace) -> int:
    if args.rate <= 0:
        raise ConfigError(f"--rate must be positive, got {args.rate}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="inference-profiler-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    # the per-stage summary is the demo's view; one log line per ingested file is noise here
    logging.getLogger("traces").setLevel(logging.WARNING)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        triton = TritonServer(copy_model_repository(workdir), workdir, trace_file=workdir / "traces" / "trace.json",
                              log_frequency=LOG_FREQUENCY, trace_rate=1)
    except TritonError as e:
        print(f"inference-profiler demo: {e}", file=sys.stderr)
        return 1
    cfg = demo_config(args, triton, workdir)
    _check_listen(cfg)

    traffic: TrafficDriver | None = None
    perf: PerfAnalyzerRun | None = None
    daemon: Daemon | None = None
    started = False
    try:
        print(f"starting Triton (log {triton.log_path}) ...", flush=True)
        triton.start()
        traffic = TrafficDriver(triton.http_address, triton.grpc_address, args.rate, extra=STREAM_TRAFFIC).start()
        # after Triton: compiling the eBPF programs can take a while, traces pile up meanwhile
        print("starting the exporter ...", flush=True)
        try:
            daemon = Daemon(cfg)
        except OSError as e:
            raise ConfigError(f"cannot listen on {cfg.listen}: {e.strerror}; pick another --listen") from None
        daemon.start()
        started = True
        print(_banner(cfg, daemon.server.port, triton, workdir, args.rate), flush=True)
        perf = PerfAnalyzerRun(MODEL, triton.http_address, workdir / "perf_analyzer" / f"{MODEL}.csv",
                               workdir / "perf_analyzer.log")
        if not perf.start():
            print(f"  (no perf_analyzer run: {perf.error})", flush=True)
            perf = None
        t0 = time.monotonic()
        prev = _live_snapshot(daemon)
        next_report = t0 + REPORT_SECONDS
        while not stop.is_set():
            now = time.monotonic()
            if args.duration and now - t0 >= args.duration:
                break
            if now >= next_report:
                cur = _live_snapshot(daemon)
                print(format_report(prev, cur, now - t0), flush=True)
                c = traffic.counts
                if c.failed:
                    print(f"  {sum(c.failed.values())} requests failed; last: {c.last_error}", flush=True)
                prev, next_report = cur, now + REPORT_SECONDS
            if perf is not None and perf.finished() is not None:
                code = perf.finished()
                print(f"perf_analyzer finished: {perf.csv_path}" if code == 0 else
                      f"perf_analyzer exited with {code}; see {perf.log_path}", flush=True)
                perf = None
            stop.wait(min(0.5, max(0.0, next_report - now)))
    except TritonError as e:
        print(f"inference-profiler demo: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        if perf is not None:
            perf.stop()
        if traffic is not None:
            counts = traffic.stop()
            sent, ok = sum(counts.sent.values()), sum(counts.succeeded.values())
            print(f"traffic: {sent} requests sent, {ok} succeeded", flush=True)
        triton.stop()
        if daemon is not None and started:
            daemon.stop()
        elif daemon is not None:
            daemon.server.httpd.server_close()  # bound but never served
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print(f"stopped; traces and logs kept in {workdir}", flush=True)
    return 0
