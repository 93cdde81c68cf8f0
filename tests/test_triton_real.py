"""The Triton source against a real Triton (nvidia-pytriton wheel) and a real exporter process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import pytest

from exporter.demo.launcher import ENSEMBLE, MODEL, TritonServer, copy_model_repository
from exporter.demo.traffic import send_requests
from exporter.triton.metrics_text import STAGE_FAMILIES, parse_metrics_text
from exporter.triton.statistics import parse_statistics
from tests.triton_harness import EXPORTER, ExporterProcess, Scrape

pytestmark = pytest.mark.triton

TIMEOUT = 1.0  # --triton-timeout-seconds in these tests
CACHE = 0.3  # --triton-cache-seconds


def triton_args(t: TritonServer, *extra: str) -> list[str]:
    return ["--triton", t.http_url, "--triton-metrics-url", t.metrics_url,
            "--triton-timeout-seconds", str(TIMEOUT), "--triton-cache-seconds", str(CACHE), "--ebpf", "off", *extra]


def triton_own_metrics(t: TritonServer) -> str:
    with urllib.request.urlopen(t.metrics_url, timeout=5) as r:
        return str(r.read().decode())


def pbtxt(model: str) -> str:
    return (files("exporter") / "demo_models" / model / "config.pbtxt").read_text()


def expected_config(model: str) -> dict[str, str]:
    """The model_config_info labels read straight from the example model's config.pbtxt."""
    text = pbtxt(model)
    field = lambda rx, default: (m.group(1) if (m := re.search(rx, text)) else default)  # noqa: E731
    platform = field(r'platform:\s*"([^"]+)"', "") or field(r'backend:\s*"([^"]+)"', "")
    delay_us = int(field(r"max_queue_delay_microseconds:\s*(\d+)", "0"))
    counts = [int(c) for c in re.findall(r"count:\s*(\d+)", text)]
    return {"platform": platform, "max_batch_size": field(r"max_batch_size:\s*(\d+)", "0"),
            "dynamic_batching": "true" if "dynamic_batching" in text else "false",
            "max_queue_delay_seconds": f"{delay_us / 1e6:g}", "instance_count": str(sum(counts) or 1)}


def test_counters_batches_and_config_match_triton(triton_factory: Callable[..., TritonServer],
                                                   exporter_factory: Callable[..., ExporterProcess]) -> None:
    t = triton_factory(trace_file=None)
    sent = send_requests(t.http_address, t.grpc_address,
                         {("http", MODEL): 23, ("grpc", MODEL): 17, ("http", ENSEMBLE): 6}, concurrency=6)
    assert not sent.failed, sent.last_error
    e = exporter_factory(*triton_args(t))
    s = e.scrape()
    tgt = f"127.0.0.1:{t.http_port}"
    assert s.total("inference_profiler_triton_up", target=tgt) == 1
    # the ensemble runs add_sub once per request, so add_sub saw 23 + 17 + 6
    assert s.total("inference_profiler_triton_requests_total", model=MODEL, outcome="success") == 46
    assert s.total("inference_profiler_triton_requests_total", model=ENSEMBLE, outcome="success") == 6
    assert s.total("inference_profiler_triton_requests_total", outcome="failure") == 0
    assert s.total("inference_profiler_triton_inferences_total", model=MODEL) == 46

    own = parse_metrics_text(triton_own_metrics(t)).models
    for (model, version), c in own.items():
        for stage in STAGE_FAMILIES.values():
            ours = s.select("inference_profiler_triton_stage_seconds_total", target=tgt, model=model,
                            version=version, stage=stage)
            assert len(ours) == 1 and ours[0][1] == pytest.approx(c.stage_us[stage] / 1e6, rel=1e-12), (
                model, stage)
        assert s.total("inference_profiler_triton_executions_total", model=model) == c.executions
        assert s.total("inference_profiler_triton_pending_requests", model=model) == c.pending == 0

    # dynamic batching: per-batch-size executions add up to Triton's execution count
    execs = own[(MODEL, "1")].executions
    batches = s.select("inference_profiler_triton_batch_executions_total", model=MODEL)
    assert sum(v for _, v in batches) == execs
    assert sum(int(lab["batch_size"]) * v for lab, v in batches) == own[(MODEL, "1")].inferences
    with urllib.request.urlopen(t.http_url + "/v2/models/stats", timeout=5) as r:
        import json

        stats = parse_statistics(json.loads(r.read()))
    infer_ns = sum(b.stage_ns["compute_infer"] for b in stats[(MODEL, "1")].batches.values())
    assert s.total("inference_profiler_triton_batch_stage_seconds_total", model=MODEL,
                   stage="compute_infer") == pytest.approx(infer_ns / 1e9, rel=1e-9)

    for model in (MODEL, ENSEMBLE):
        (info,) = s.select("inference_profiler_triton_model_config_info", model=model)
        assert info[1] == 1
        assert {k: info[0][k] for k in expected_config(model)} == expected_config(model), model
    assert s.total("inference_profiler_errors_total", source="triton") == 0


def _timed_scrape(e: ExporterProcess) -> tuple[Scrape, float]:
    t0 = time.monotonic()
    s = e.scrape()
    return s, time.monotonic() - t0


def test_triton_stopped_hung_and_back(triton_factory: Callable[..., TritonServer],
                                      exporter_factory: Callable[..., ExporterProcess], samples: Path) -> None:
    t = triton_factory(trace_file=None)
    tgt = f"127.0.0.1:{t.http_port}"
    e = exporter_factory(*triton_args(t), "--perf-analyzer-csv", str(samples / "perf-analyzer-example.csv"),
                         "--perf-analyzer-poll-seconds", "0.2")
    send_requests(t.http_address, t.grpc_address, {("http", MODEL): 10})
    s = e.wait_for(lambda s: s.total("inference_profiler_perf_analyzer_throughput") > 0)
    assert s.total("inference_profiler_triton_up", target=tgt) == 1
    assert s.total("inference_profiler_triton_requests_total", model=MODEL, outcome="success") == 10

    # hung: the process is stopped, its sockets still accept; no scrape may wait past the timeout
    assert t.proc is not None
    os.kill(t.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(CACHE)
        for _ in range(3):
            s, took = _timed_scrape(e)
            assert took < TIMEOUT + 0.75, took
            assert s.total("inference_profiler_triton_up", target=tgt) == 0
            assert not s.select("inference_profiler_triton_requests_total", target=tgt)
            assert s.total("inference_profiler_perf_analyzer_throughput") > 0  # the rest keeps serving
    finally:
        os.kill(t.proc.pid, signal.SIGCONT)

    # stopped: connection refused, up 0 on the first scrape after the cache ran out
    t.stop()
    time.sleep(CACHE)
    s, took = _timed_scrape(e)
    assert took < TIMEOUT + 0.75, took
    assert s.total("inference_profiler_triton_up", target=tgt) == 0
    assert s.total("inference_profiler_perf_analyzer_throughput") > 0
    assert s.total("inference_profiler_build_info") == 1
    assert s.total("inference_profiler_errors_total", source="triton") > 0

    # back on the same ports: up again, counters resume from Triton's fresh start (a reset)
    t.start()
    send_requests(t.http_address, t.grpc_address, {("grpc", MODEL): 4})
    # Triton counts a request just after its response is sent: wait for the count, not only for up
    s = e.wait_for(lambda s: s.total("inference_profiler_triton_up", target=tgt) == 1
                   and s.total("inference_profiler_triton_requests_total", model=MODEL, outcome="success") >= 4,
                   timeout=10)
    assert s.total("inference_profiler_triton_requests_total", model=MODEL, outcome="success") == 4
    assert s.select("inference_profiler_triton_model_config_info", model=MODEL)
    assert e.proc.poll() is None
    log = e.log()
    assert "Traceback" not in log
    assert log.count(f"triton {tgt}:") <= 4  # one line per outage, not one per scrape


def test_check_reports_triton_and_tracing(triton_factory: Callable[..., TritonServer], tmp_path: Path) -> None:
    def check(*args: str) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if k != "INFPROF_REQUIRE"}  # a test variable, not a key
        r = subprocess.run([*EXPORTER, "check", "--state-dir", str(tmp_path / "state"), "--ebpf", "off", *args],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
        return r.returncode, r.stdout + r.stderr

    traced = triton_factory(log_frequency=20)
    _, out = check(*triton_args(traced))
    name = f"triton 127.0.0.1:{traced.http_port}"
    assert f"PASS  {name}: reachable, triton 2.51.0" in out, out
    assert f"PASS  {name} metrics:" in out
    assert re.search(rf"PASS  {re.escape(name)} models: 2 ready: {MODEL}/1, {ENSEMBLE}/1", out), out
    assert f"PASS  {name} tracing: level TIMESTAMPS, rate 1, log-frequency 20" in out
    assert "Traceback" not in out

    # Triton's trace settings change at run time: same server, log-frequency 0, then tracing off
    def set_trace(**settings: object) -> None:
        import json

        req = urllib.request.Request(traced.http_url + "/v2/trace/setting", method="POST",
                                     data=json.dumps(settings).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()

    set_trace(log_frequency="0")
    _, out = check(*triton_args(traced))
    assert "WARN  triton" in out and "log-frequency is 0" in out, out
    set_trace(trace_level=["OFF"])
    _, out = check(*triton_args(traced))
    assert "tracing is off" in out, out

    untraced = traced
    untraced.stop()
    code, out = check(*triton_args(untraced))
    assert code != 0
    assert f"FAIL  triton 127.0.0.1:{untraced.http_port}: not reachable" in out, out
    assert "Traceback" not in out


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_model_config_follows_the_repository(triton_factory: Callable[..., TritonServer],
                                             exporter_factory: Callable[..., ExporterProcess]) -> None:
    t = triton_factory(trace_file=None, extra_args=["--model-control-mode=explicit", "--load-model=*"])
    e = exporter_factory(*triton_args(t))

    def repository(action: str, model: str) -> None:
        req = urllib.request.Request(f"{t.http_url}/v2/repository/models/{model}/{action}", data=b"{}",
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

    def info(s: Scrape) -> dict[str, dict[str, str]]:
        return {lab["model"]: lab for lab, _ in s.select("inference_profiler_triton_model_config_info")}

    s = e.wait_for(lambda s: set(info(s)) == {MODEL, ENSEMBLE})
    assert info(s)[MODEL]["max_queue_delay_seconds"] == expected_config(MODEL)["max_queue_delay_seconds"]
    repository("unload", ENSEMBLE)
    e.wait_for(lambda s: set(info(s)) == {MODEL}, timeout=10)
    # a new config.pbtxt, loaded: the index changes twice and the labels follow
    cfg = t.model_repository / MODEL / "config.pbtxt"
    cfg.write_text(re.sub(r"max_queue_delay_microseconds:\s*\d+", "max_queue_delay_microseconds: 2500",
                          cfg.read_text()).replace("count: 1", "count: 2"))
    repository("unload", MODEL)
    e.wait_for(lambda s: set(info(s)) == set(), timeout=10)
    repository("load", MODEL)
    s = e.wait_for(lambda s: MODEL in info(s), timeout=20)
    assert info(s)[MODEL]["max_queue_delay_seconds"] == "0.0025"
    assert info(s)[MODEL]["instance_count"] == "2"


def test_requests_the_queue_policy_rejects_keep_tritons_reason(
        tmp_path: Path, exporter_factory: Callable[..., ExporterProcess]) -> None:
    """A queue policy that rejects requests waiting over 2 ms, under more load than add_sub serves:
    Triton counts them as failures with reason REJECTED, and so does the exporter, apart from
    every other failure reason. (Triton 2.51 counts a "queue full" refusal, max_queue_size,
    nowhere: no failure and no statistics: those requests are seen only by their clients.)"""
    repo = copy_model_repository(tmp_path, [MODEL])
    cfg = repo / MODEL / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace(
        "max_queue_delay_microseconds: 500",
        "max_queue_delay_microseconds: 500\n  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 2000 }"))
    t = TritonServer(repo, tmp_path / "triton").start()
    try:
        sent = send_requests(t.http_address, t.grpc_address, {("http", MODEL): 150, ("grpc", MODEL): 150},
                             concurrency=24)
        failed = sum(sent.failed.values())
        assert failed > 0 and "timeout" in sent.last_error, sent
        own = parse_metrics_text(triton_own_metrics(t)).models[(MODEL, "1")]
        assert own.failures["REJECTED"] == failed and own.success == sum(sent.succeeded.values())
        s = exporter_factory(*triton_args(t)).scrape()
        assert s.total("inference_profiler_triton_requests_total", model=MODEL, outcome="failure",
                       reason="REJECTED") == failed
        assert s.total("inference_profiler_triton_requests_total", model=MODEL, outcome="failure") == failed
        assert s.total("inference_profiler_triton_requests_total", model=MODEL, outcome="success",
                       reason="") == own.success
    finally:
        t.stop()
