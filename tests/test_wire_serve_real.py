"""`serve` joining a real Triton's traces to the kernel's socket turns: trace files (with a
restart of the daemon mid-stream, then mixed load of every model and way of asking while
small trace files roll, so requests join across files) and OTLP. The same turns are recorded by `tcp-events
--record`, so the daemon's counts can be held against the offline join of the same files.

One Triton per mode for the module.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.demo.launcher import ALL_MODELS, MODEL, TritonServer, copy_model_repository, free_port
from exporter.demo.traffic import STREAM_TRAFFIC, TrafficDriver
from tests.triton_harness import EXPORTER, ExporterProcess, Scrape, flush_until_traced, start_triton
from tests.wire_driver import Recorder, http_clients, joined_requests

pytestmark = pytest.mark.ebpf

JOINS = "inference_profiler_socket_joins_total"
STAGE = "inference_profiler_stage_duration_seconds_count"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    # files of 10 traces: under mixed load a request's turn is often shared with one of the next file
    server = start_triton(tmp_path_factory.mktemp("triton"), log_frequency=10, models=ALL_MODELS)
    try:
        yield server
    finally:
        server.stop()


def wire_args(t: TritonServer) -> list[str]:
    return ["--ebpf", "on", "--ebpf-port", str(t.http_port), "--ebpf-port", str(t.grpc_port),
            "--wire-join", "on", "--wire-http-port", str(t.http_port), "--wire-grpc-port", str(t.grpc_port)]


def joins(s: Scrape, **labels: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for lab, v in s.select(JOINS, **labels):
        out[lab["result"]] += int(v)
    return out


def test_trace_files_join_and_a_restart_counts_nothing_twice(
        triton: TritonServer, exporter_factory: Callable[..., ExporterProcess], tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    args = ["--trace-file", str(triton.trace_file), "--state-dir", state, *wire_args(triton)]
    turns_file = tmp_path / "turns.jsonl"
    rec = Recorder(EXPORTER, turns_file, [triton.http_port, triton.grpc_port])
    try:
        e = exporter_factory(*args)
        e.wait_join()
        first = http_clients(triton, clients=4, per_client=25, keep_alive=True, prefix="a")
        first += http_clients(triton, clients=2, per_client=10, keep_alive=False, prefix="b")
        flush_until_traced(triton, len(first))
        s = e.wait_for(lambda m: sum(joins(m, protocol="http").values()) >= len(first), timeout=60)
        before = joins(s, protocol="http")
        assert e.stop() == 0
        # the restart: the same state, a new feed; the files already counted are not read again
        e = exporter_factory(*args)
        e.wait_join()
        # mixed load: HTTP and gRPC, unary, ensembles, streams, generate, beside four HTTP clients
        driver = TrafficDriver(triton.http_address, triton.grpc_address, rate=60, concurrency=4,
                               extra=STREAM_TRAFFIC).start()
        started = time.monotonic()
        second = http_clients(triton, clients=4, per_client=25, keep_alive=True, prefix="c")
        time.sleep(max(0.0, started + 5 - time.monotonic()))
        mixed = driver.stop()
        assert mixed.succeeded[("http", MODEL)] > 10, mixed
        n = len(first) + len(second) + mixed.succeeded[("http", MODEL)]
        files = flush_until_traced(triton, len(first) + len(second) + sum(mixed.succeeded.values()))
        traced = lambda m: m.total("inference_profiler_traces_total")  # noqa: E731
        # every trace's join counted once, the held ones too (within the 10 s hold)
        s = e.wait_for(lambda m: sum(joins(m).values()) >= traced(m) > 0, timeout=60)
        time.sleep(1.0)  # a scrape later: nothing more may arrive
        s = e.scrape()
    finally:
        rec.stop()
    after = joins(s, protocol="http", model=MODEL)
    print(f"\nserve, HTTP {MODEL}: before the restart {dict(before)}, in all {dict(after)} of {n} requests; "
          f"{len(files)} trace files; every protocol and model: {dict(joins(s))} of {traced(s):.0f} traces")
    assert sum(joins(s).values()) == traced(s)
    # the ensemble's add_sub steps are traced as http add_sub too, without a frontend: unsupported
    assert sum(after.values()) == s.total("inference_profiler_traces_total", protocol="http", model=MODEL)
    assert sum(after.values()) - after["unsupported"] == n
    assert after["joined"] >= 0.95 * n, after
    assert after["joined"] >= before["joined"]
    http_joined = sum(n for r, n in joins(s, protocol="http").items() if r == "joined")
    for stage in ("socket_wait", "ack_wait", "wire"):
        assert s.total(STAGE, stage=stage, protocol="http") == http_joined, stage
    # the segments of joined requests add up to wire
    tl = {lab["segment"]: v for lab, v in s.select("inference_profiler_timeline_seconds_total", protocol="http")}
    assert tl["socket_wait"] > 0 and tl["ack_wait"] > 0
    ports = {"http": frozenset({triton.http_port}), "grpc": frozenset({triton.grpc_port})}
    mine = lambda rid: rid[:1] in ("a", "b", "c") or rid.startswith(f"http-{MODEL}-")  # noqa: E731
    offline = Counter(j.result for j in joined_requests(files, turns_file, ports)
                      if j.protocol == "http" and mine(j.request_id or ""))
    print(f"offline join of the same files and turns: {dict(offline)}")
    assert abs(offline["joined"] - after["joined"]) <= 0.02 * n, (offline, after)


def test_otlp_joins(exporter_factory: Callable[..., ExporterProcess], tmp_path: Path) -> None:
    otlp_port = free_port()
    repo = copy_model_repository(tmp_path / "repo")
    t = TritonServer(repo, tmp_path / "otlp-triton", extra_args=[
        "--trace-config", "mode=opentelemetry",
        "--trace-config", f"opentelemetry,url=http://127.0.0.1:{otlp_port}/v1/traces",
        "--trace-config", "opentelemetry,bsp_schedule_delay=100",
        "--trace-config", "rate=1", "--trace-config", "level=TIMESTAMPS"])
    e = exporter_factory("--otlp-listen", f"127.0.0.1:{otlp_port}", *wire_args(t))
    t.start()
    e.wait_join()
    try:
        sent = http_clients(t, clients=2, per_client=30, keep_alive=True, prefix="o")
        s = e.wait_for(lambda m: sum(joins(m).values()) >= len(sent), timeout=60)
    finally:
        t.stop()
    result = joins(s)
    print(f"\nserve, OTLP, HTTP: {dict(result)} of {len(sent)} requests")
    assert sum(result.values()) == len(sent)
    assert result["joined"] >= 0.95 * len(sent), result
    assert s.total(STAGE, stage="wire", protocol="http") == result["joined"]
