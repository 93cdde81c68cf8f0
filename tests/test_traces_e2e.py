"""End to end on a real Triton: requests over HTTP, gRPC and through the ensemble with
trace rate 1 -> Triton's rolling trace files -> `inference-profiler serve` -> /metrics.

The expected numbers are computed here from the same files, plainly and independently
of exporter/ (json.load, merge by id, SPEC's stage table).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.demo.launcher import ENSEMBLE, MODEL, TritonServer
from exporter.demo.traffic import TrafficCounts, plan_for, send_requests
from tests.triton_harness import ExporterProcess, Scrape, flush_until_traced

# SPEC "Stages": stage -> (from, to)
STAGE_TABLE = {
    "http_infer": ("HTTP_RECV_START", "HTTP_SEND_END"),
    "http_recv": ("HTTP_RECV_START", "HTTP_RECV_END"),
    "http_send": ("HTTP_SEND_START", "HTTP_SEND_END"),
    "grpc_infer": ("GRPC_WAITREAD_END", "GRPC_SEND_END"),
    "grpc_waitread": ("GRPC_WAITREAD_START", "GRPC_WAITREAD_END"),
    "grpc_send": ("GRPC_SEND_START", "GRPC_SEND_END"),
    "request": ("REQUEST_START", "REQUEST_END"),
    "queue": ("QUEUE_START", "COMPUTE_START"),
    "compute": ("COMPUTE_START", "COMPUTE_END"),
    "compute_input": ("COMPUTE_START", "COMPUTE_INPUT_END"),
    "compute_infer": ("COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
    "compute_output": ("COMPUTE_OUTPUT_START", "COMPUTE_END"),
}

SeriesKey = tuple[str, str, str]  # model, version, protocol


class Expected:
    """Per (model, version, protocol): trace count; per stage: every duration in ns."""

    def __init__(self) -> None:
        self.traces: dict[SeriesKey, int] = defaultdict(int)
        self.durations: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
        self.top_level = 0
        self.children = 0
        self.negative = 0  # spans not observed because their end is before their start

    def add(self, other: Expected) -> None:
        for k, n in other.traces.items():
            self.traces[k] += n
        for sk, v in other.durations.items():
            self.durations[sk].extend(v)
        self.top_level += other.top_level
        self.children += other.children
        self.negative += other.negative

    @property
    def total(self) -> int:
        return sum(self.traces.values())


def expected_from_files(files: list[Path]) -> Expected:
    """The files of ONE Triton run (trace ids are unique within a run)."""
    traces: dict[int, dict[str, Any]] = {}
    for f in files:
        with open(f) as fp:
            objects = json.load(fp)
        for obj in objects:
            t = traces.setdefault(obj["id"], {"stamps": {}})
            for stamp in obj.get("timestamps", []):
                t["stamps"][stamp["name"]] = stamp["ns"]  # last duplicate wins
            for k in ("model_name", "model_version", "parent_id"):
                if k in obj:
                    t[k] = obj[k]

    def protocol(t: dict[str, Any]) -> str:
        while "parent_id" in t:
            t = traces[t["parent_id"]]
        names = t["stamps"]
        if "HTTP_RECV_START" in names:
            return "http"
        if "GRPC_WAITREAD_START" in names:
            return "grpc"
        return "none"

    out = Expected()
    for t in traces.values():
        stamps = t["stamps"]
        if "REQUEST_START" not in stamps or "REQUEST_END" not in stamps:
            continue
        key = (t["model_name"], str(t["model_version"]), protocol(t))
        out.traces[key] += 1
        if "parent_id" in t:
            out.children += 1
        else:
            out.top_level += 1
        spans: dict[str, int] = {}
        for stage, (start, end) in STAGE_TABLE.items():
            if start in stamps and end in stamps:
                if stamps[end] >= stamps[start]:
                    spans[stage] = stamps[end] - stamps[start]
                else:
                    out.negative += 1
        if "request" in spans and "queue" in spans and "compute" in spans:
            d = spans["request"] - spans["queue"] - spans["compute"]
            if d >= 0:
                spans["handler_overhead"] = d
            else:
                out.negative += 1
        if all(s in spans for s in ("http_infer", "request", "http_recv", "http_send")):
            d = spans["http_infer"] - spans["request"] - spans["http_recv"] - spans["http_send"]
            if d >= 0:
                spans["frontend_overhead"] = d
            else:
                out.negative += 1  # real Triton: REQUEST_END can come after HTTP_SEND_START
        for stage, d in spans.items():
            out.durations[(*key, stage)].append(d)
    return out


def assert_metrics_match(scrape: Scrape, exp: Expected) -> None:
    """traces_total, and every stage histogram's _count, _sum and buckets, exactly."""
    got_traces = {(lab["model"], lab["version"], lab["protocol"]): int(v)
                  for lab, v in scrape.select("inference_profiler_traces_total")}
    assert got_traces == dict(exp.traces)
    assert scrape.total("inference_profiler_trace_records_rejected_total", reason="negative_span") == exp.negative

    name = "inference_profiler_stage_duration_seconds"
    got_count = {(lab["model"], lab["version"], lab["protocol"], lab["stage"]): int(v)
                 for lab, v in scrape.select(name + "_count")}
    got_sum = {(lab["model"], lab["version"], lab["protocol"], lab["stage"]): round(v * 1e9)
               for lab, v in scrape.select(name + "_sum")}
    assert got_count == {k: len(v) for k, v in exp.durations.items()}
    assert got_sum == {k: sum(v) for k, v in exp.durations.items()}
    for lab, v in scrape.select(name + "_bucket"):
        key = (lab["model"], lab["version"], lab["protocol"], lab["stage"])
        le = float(lab["le"])
        durations = exp.durations[key]
        want = len(durations) if le == float("inf") else sum(1 for d in durations if d <= round(le * 1e9))
        assert int(v) == want, (key, lab["le"])


def traffic(server: TritonServer, per_key: int, prefix: str) -> TrafficCounts:
    counts = send_requests(server.http_address, server.grpc_address, plan_for(per_key), concurrency=4,
                           id_prefix=prefix)
    assert counts.succeeded == counts.sent, counts.last_error
    return counts


def traces_total(m: Scrape) -> float:
    return m.total("inference_profiler_traces_total")


def serve(exporter_factory: Callable[..., ExporterProcess], server: TritonServer) -> ExporterProcess:
    return exporter_factory("--trace-file", str(server.trace_file), "--triton", "none", "--ebpf", "off")


def test_every_traced_request_and_stage_counted_exactly(
    triton_factory: Callable[..., TritonServer], exporter_factory: Callable[..., ExporterProcess]
) -> None:
    server = triton_factory(log_frequency=15)
    per_key = 20  # x (http, grpc) x (add_sub, add_sub_ensemble) = 80 requests
    counts = traffic(server, per_key, "e2e-")
    sent = sum(counts.sent.values())
    files = flush_until_traced(server, sent)
    assert len(files) >= 3, "want several rolling files"

    exp = expected_from_files(files)
    ensemble_requests = counts.sent[("http", ENSEMBLE)] + counts.sent[("grpc", ENSEMBLE)]
    # every top-level request is traced, and every ensemble request has one add_sub child
    assert exp.top_level == sent
    assert exp.children == ensemble_requests
    assert exp.traces[(MODEL, "1", "http")] == per_key * 2  # direct + ensemble children
    assert exp.traces[(ENSEMBLE, "1", "grpc")] == per_key

    exporter = serve(exporter_factory, server)
    scrape = exporter.wait_for(lambda m: traces_total(m) >= exp.total)
    assert traces_total(scrape) == exp.total == sent + ensemble_requests
    assert_metrics_match(scrape, exp)
    files_parsed = scrape.total("inference_profiler_trace_files_total", result="parsed")
    assert files_parsed == len(files)
    assert scrape.total("inference_profiler_trace_files_total", result="failed") == 0
    # the stages a newcomer looks for first are there on both protocols
    stages = {lab["stage"] for lab, _ in scrape.select("inference_profiler_stage_duration_seconds_count",
                                                        model=MODEL)}
    assert {"http_infer", "grpc_infer", "request", "queue", "compute_infer", "handler_overhead"} <= stages


def _stat_map(files: list[Path]) -> dict[Path, tuple[int, int, int]]:
    out = {}
    for p in files:
        st = os.stat(p)
        out[p] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def test_triton_restart_overwrites_files_and_new_traces_are_counted_once(
    triton_factory: Callable[..., TritonServer], exporter_factory: Callable[..., ExporterProcess]
) -> None:
    server = triton_factory(log_frequency=10)
    exporter = serve(exporter_factory, server)

    # run A: 12 per key = 48 requests (+24 ensemble children) -> .0 .. .4
    a = traffic(server, 12, "a-")
    files_a = flush_until_traced(server, sum(a.sent.values()))
    exp_a = expected_from_files(files_a)
    assert exp_a.top_level == sum(a.sent.values())
    exporter.wait_for(lambda m: traces_total(m) >= exp_a.total)
    assert_metrics_match(exporter.scrape(), exp_a)
    before = _stat_map(files_a)

    # run B after a restart: trace ids and file index start again at 0, overwriting A's files
    server.restart()
    b = traffic(server, 5, "b-")
    all_files = flush_until_traced_since(server, before, sum(b.sent.values()))
    files_b = [p for p in all_files if p not in before or _stat_map([p])[p] != before[p]]
    assert files_b and files_b[0].name.endswith(".0"), files_b
    assert any(p in before for p in files_b), "run B must overwrite at least one file of run A"
    exp_b = expected_from_files(files_b)
    assert exp_b.top_level == sum(b.sent.values())

    want = Expected()
    want.add(exp_a)
    want.add(exp_b)
    scrape = exporter.wait_for(lambda m: traces_total(m) >= want.total)
    assert traces_total(scrape) == want.total
    # a few more polls: A's untouched files and B's files are not counted again
    time.sleep(2.0)
    assert_metrics_match(exporter.scrape(), want)


def flush_until_traced_since(server: TritonServer, before: dict[Path, tuple[int, int, int]],
                             top_level: int, timeout: float = 20.0) -> list[Path]:
    """Like flush_until_traced, counting only files (re)written since `before`."""
    deadline = time.monotonic() + timeout
    while True:
        server.flush_traces()
        files = server.trace_files()
        fresh = [p for p in files if p not in before or _stat_map([p])[p] != before[p]]
        n = 0
        for p in fresh:
            n += sum(1 for o in json.loads(p.read_bytes()) if "model_name" in o and "parent_id" not in o)
        if n >= top_level:
            return files
        assert time.monotonic() < deadline, f"{n} of {top_level} traces written after the restart"
        time.sleep(0.1)
