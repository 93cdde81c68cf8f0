"""`inference-profiler demo` as a newcomer runs it: live per-stage histograms on /metrics
within a minute, a clean exit (by --duration or Ctrl-C) and no Triton left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.demo.launcher import MODEL, STREAM, STREAM_ENSEMBLE, STREAM_THREAD, TEXT, free_port
from exporter.demo.report import Snapshot, format_report
from tests.triton_harness import EXPORTER, Scrape

STAGE_COUNT = "inference_profiler_stage_duration_seconds_count"


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains `text` (the demo's unique workdir)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (d / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if text in cmd and "Z (zombie)" not in state:
            out.append((int(d.name), cmd))
    return out


class Demo:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.workdir = tmp_path / "demo"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.out = tmp_path / "demo.out"
        cmd = [*EXPORTER, "demo", "--workdir", str(self.workdir), "--listen", f"127.0.0.1:{self.port}", *args]
        with open(self.out, "wb") as f:
            # own process group, so a test's Ctrl-C reaches it the way a terminal's does
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.t0 = time.monotonic()

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, cond: Callable[[Scrape], bool], timeout: float = 60.0) -> Scrape:
        """Scrape the demo's /metrics until `cond` holds (timeout counted from the demo's start)."""
        while True:
            assert self.proc.poll() is None, f"demo exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    m = Scrape(r.read().decode())
                if cond(m):
                    return m
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() - self.t0 < timeout, f"condition not met after {timeout}s:\n{self.output()}"
            time.sleep(0.5)

    def wait_for_histograms(self) -> Scrape:
        def live(m: Scrape) -> bool:
            got = {(lab["protocol"], lab["stage"]) for lab, v in m.select(STAGE_COUNT, model=MODEL) if v > 0}
            return {("http", "compute_infer"), ("grpc", "compute_infer"), ("http", "http_infer"),
                    ("grpc", "grpc_infer")} <= got

        return self.wait_for(live)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pid, _ in processes_mentioning(str(self.workdir)):
            os.kill(pid, signal.SIGKILL)  # only processes of this demo run (its unique workdir)


@pytest.mark.triton
@pytest.mark.prometheus
def test_demo_shows_live_stage_histograms_and_exits_cleanly(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--duration", "25")
    try:
        m = demo.wait_for_histograms()
        first = time.monotonic() - demo.t0
        assert first < 60
        assert m.total("inference_profiler_traces_total", protocol="http") > 0
        assert m.total("inference_profiler_traces_total", protocol="grpc") > 0
        assert m.total("inference_profiler_traces_total", model="add_sub_ensemble") > 0
        # the ensemble's children carry the top-level protocol, never "none"
        assert m.total("inference_profiler_traces_total", model=MODEL, protocol="none") == 0
        # the streaming models, over a gRPC stream and HTTP generate_stream: several responses per request
        m = demo.wait_for(lambda m: all(
            m.total(STAGE_COUNT, model=model, protocol=protocol, stage="inter_response") > 0
            for model in (STREAM, STREAM_THREAD) for protocol in ("grpc", "http")))
        for model in (STREAM, STREAM_THREAD):
            for protocol in ("grpc", "http"):
                count = m.total("inference_profiler_responses_per_request_count", model=model, protocol=protocol)
                le1 = sum(v for lab, v in m.select("inference_profiler_responses_per_request_bucket", model=model,
                                                   protocol=protocol) if float(lab["le"]) == 1)
                assert count > le1, (model, protocol, count, le1)  # requests with several responses
                if model == STREAM_THREAD:
                    # never a single response (token_stream has some: its child traces in the ensemble)
                    assert le1 == 0, (model, protocol, count, le1)
        assert m.total("inference_profiler_traces_total", model=STREAM_ENSEMBLE, protocol="grpc") > 0
        assert m.total(STAGE_COUNT, model=TEXT, protocol="http", stage="end_to_end") > 0  # generate
        # every source on: Triton's endpoints, and the CSV of the demo's perf_analyzer run
        m = demo.wait_for(lambda m: m.total("inference_profiler_perf_analyzer_throughput") > 0
                          and m.total("inference_profiler_triton_up") == 1)
        assert m.total("inference_profiler_triton_requests_total", model=MODEL, outcome="success") > 0
        # the text format with every source's families passes promtool's lint (summary quantiles, _total, units)
        with urllib.request.urlopen(demo.url, timeout=5) as r:
            text = r.read()
        assert b"inference_profiler_perf_analyzer_latency_seconds{" in text
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()[-3000:]
        assert demo.proc.wait(60) == 0, demo.output()[-3000:]
        out = demo.output()
        assert "traces counted" in out and "compute_infer" in out  # the periodic per-stage summary
        assert "Traceback" not in out
        assert processes_mentioning(str(demo.workdir)) == []
    finally:
        demo.cleanup()


@pytest.mark.triton
def test_demo_ctrl_c_stops_everything(tmp_path: Path) -> None:
    demo = Demo(tmp_path)
    try:
        demo.wait_for_histograms()
        assert processes_mentioning(str(demo.workdir)), "Triton should be running"
        os.killpg(demo.proc.pid, signal.SIGINT)
        assert demo.proc.wait(30) == 0, demo.output()[-3000:]
        assert "Traceback" not in demo.output()
        assert processes_mentioning(str(demo.workdir)) == []
    finally:
        demo.cleanup()


def test_report_means_are_per_interval() -> None:
    def snap(count: int, total_ns: int, traces: int) -> Snapshot:
        return Snapshot({("m", "http", "request"): (count, total_ns), ("m", "http", "end_to_end"): (count, total_ns * 2)},
                        {("m", "http"): traces})

    text = format_report(snap(10, 10_000_000, 10), snap(30, 70_000_000, 30), 20.0)
    # (70-10) ms over (30-10) requests = 3 ms; end_to_end is twice that; no first_response observed
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("m "))
    assert row.split()[2:6] == ["30", "6.000", "-", "3.000"]
    assert "30 traces counted (+20)" in text
    assert "no traces ingested yet" in format_report(Snapshot({}, {}), Snapshot({}, {}), 1.0)
