"""End to end on a real Triton: requests over HTTP, gRPC and through the ensemble with
trace rate 1 -> Triton's rolling trace files -> `inference-profiler serve` -> /metrics.

The expected numbers are computed from the same files, plainly and independently of
exporter/ (tests/reference.py: json.load, merge by id, the stage table).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.demo.launcher import ENSEMBLE, MODEL, TritonServer
from exporter.demo.traffic import TrafficCounts, plan_for, send_requests
from tests import reference
from tests.conftest import ROLLING_TRACES
from tests.triton_harness import EXPORTER, ExporterProcess, Scrape, flush_until_traced

SeriesKey = tuple[str, str, str]  # model, version, protocol


class Expected:
    """Per (model, version, protocol): trace count; per stage: every duration in ns."""

    def __init__(self) -> None:
        self.traces: dict[SeriesKey, int] = defaultdict(int)
        self.durations: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
        self.top_level = 0
        self.children = 0
        self.negative = 0  # spans not observed because their end is before their start
        self.timeline: dict[tuple[str, str, str, str], int] = defaultdict(int)  # ns per segment

    def add(self, other: Expected) -> None:
        for k, n in other.traces.items():
            self.traces[k] += n
        for sk, v in other.durations.items():
            self.durations[sk].extend(v)
        self.top_level += other.top_level
        self.children += other.children
        self.negative += other.negative
        for seg, ns in other.timeline.items():
            self.timeline[seg] += ns

    @property
    def total(self) -> int:
        return sum(self.traces.values())


def expected_from_files(files: list[Path]) -> Expected:
    """The files of ONE Triton run (trace ids are unique within a run), by tests/reference.py:
    json.load, merge by id, the stage table, written apart from exporter/."""
    traces = reference.load_traces([str(f) for f in files])
    out = Expected()
    for key, t in traces.items():
        o = reference.observe(traces, key)
        if o is None:
            continue
        out.traces[o.labels] += 1
        if "parent_id" in t:
            out.children += 1
        else:
            out.top_level += 1
        out.negative += o.negative
        for stage, d in o.durations:
            out.durations[(*o.labels, stage)].append(d)
        for seg, ns in o.segments.items():
            out.timeline[(*o.labels, seg)] += ns
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
    # the timeline: each segment exactly, and per series the segments add up to end_to_end
    got_timeline = {(lab["model"], lab["version"], lab["protocol"], lab["segment"]): round(v * 1e9)
                    for lab, v in scrape.select("inference_profiler_timeline_seconds_total")}
    assert {k: v for k, v in got_timeline.items() if v} == {k: v for k, v in exp.timeline.items() if v}
    for key in exp.traces:
        segs = sum(v for k, v in got_timeline.items() if k[:3] == key)
        assert segs == got_sum[(*key, "end_to_end")], key


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


def test_custom_activities_injected_into_a_real_file(
    tmp_path: Path, exporter_factory: Callable[..., ExporterProcess]
) -> None:
    """A backend's own activities (X_START/X_END) in a real Triton file become stages
    custom_x, the same through `serve` and `summary`; an unpaired or unknown name costs
    only itself."""
    objs = json.loads((ROLLING_TRACES / "trace.json.0").read_bytes())
    ids = sorted({o["id"] for o in objs if "model_name" in o and "parent_id" not in o})[:20]
    first = {o["id"]: o["timestamps"][0]["ns"] for o in objs if "timestamps" in o}
    for i, tid in enumerate(ids):
        objs.append({"id": tid, "timestamps": [{"name": "PREPROCESS_START", "ns": first[tid] + 1000}]})
        objs.append({"id": tid, "timestamps": [{"name": "PREPROCESS_END", "ns": first[tid] + 1000 + 7000 * (i + 1)}]})
    objs.append({"id": ids[0], "timestamps": [{"name": "ONLY_START", "ns": first[ids[0]] + 5}]})
    objs.append({"id": ids[0], "timestamps": [{"name": "WARP DRIVE", "ns": first[ids[0]] + 5}]})
    d = tmp_path / "traces"
    d.mkdir()
    (d / "trace.json.0").write_text(json.dumps(objs))
    want = reference.stage_stats([str(d / "trace.json.0")])["stages"]
    custom = {k: v for k, v in want.items() if k[3].startswith("custom_")}
    assert sum(n for n, _ in custom.values()) == 20 and {k[3] for k in custom} == {"custom_preprocess"}

    exporter = exporter_factory("--trace-file", str(d / "trace.json"), "--triton", "none", "--ebpf", "off")
    scrape = exporter.wait_for(lambda m: m.total("inference_profiler_trace_files_total", result="parsed") >= 1)
    name = "inference_profiler_stage_duration_seconds"
    got = {(lab["model"], lab["version"], lab["protocol"], lab["stage"]): [int(n), 0]
           for lab, n in scrape.select(name + "_count", stage="custom_preprocess")}
    for lab, v in scrape.select(name + "_sum", stage="custom_preprocess"):
        got[(lab["model"], lab["version"], lab["protocol"], lab["stage"])][1] = round(v * 1e9)
    assert got == custom
    assert scrape.total("inference_profiler_trace_records_rejected_total", reason="unknown_timestamp") == 1

    out = subprocess.run([*EXPORTER, "summary", "--format", "json", str(d / "trace.json.0")],
                         capture_output=True, text=True, check=True).stdout
    summ = {(g["model"], g["version"], g["protocol"]): g["stages"] for g in json.loads(out)["groups"]}
    for (m, v, p, stage), (n, total) in custom.items():
        assert summ[(m, v, p)][stage]["count"] == n
        assert summ[(m, v, p)][stage]["mean"] == pytest.approx(total / n / 1e9)
