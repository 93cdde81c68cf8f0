"""perf_analyzer CSVs written by a real perf_analyzer run against the test Triton, exposed by a real exporter."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.demo.launcher import MODEL, TritonServer
from exporter.triton.perf_analyzer import run_perf_analyzer
from exporter.triton.perf_csv import STAGE_COLUMNS
from tests.triton_harness import ExporterProcess, Scrape

pytestmark = pytest.mark.triton


def expected_from_csv(path: Path, rate: bool = False) -> dict[tuple[str, str, str], float]:
    """(family, concurrency, stage-or-quantile) -> value, read with the csv module (not our pandas parser)."""
    out: dict[tuple[str, str, str], float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            level = row["Request Rate"] + "/s" if rate else row["Concurrency"]
            out[("throughput", level, "")] = float(row["Inferences/Second"])
            for col, stage in STAGE_COLUMNS.items():
                out[("stage", level, stage)] = float(row[col]) / 1e6
            for p, q in (("p50", "0.5"), ("p90", "0.9"), ("p95", "0.95"), ("p99", "0.99")):
                out[("latency", level, q)] = float(row[f"{p} latency"]) / 1e6
    return out


def exposed(s: Scrape, run: str) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    for lab, v in s.select("inference_profiler_perf_analyzer_throughput", run=run):
        out[("throughput", lab["concurrency"], "")] = v
    for lab, v in s.select("inference_profiler_perf_analyzer_stage_seconds", run=run):
        out[("stage", lab["concurrency"], lab["stage"])] = v
    for lab, v in s.select("inference_profiler_perf_analyzer_latency_seconds", run=run):
        out[("latency", lab["concurrency"], lab["quantile"])] = v
    return out


def test_real_perf_analyzer_runs_are_exposed(triton_factory: Callable[..., TritonServer],
                                             exporter_factory: Callable[..., ExporterProcess],
                                             tmp_path: Path, samples: Path) -> None:
    t = triton_factory(trace_file=None)
    runs = tmp_path / "runs"
    runs.mkdir()
    fast = ["-s", "100", "--max-trials", "8"]
    run_perf_analyzer(MODEL, t.http_address, runs / "plain.csv", concurrency_range="2:4:2",
                      measurement_ms=300, extra=fast)
    run_perf_analyzer(MODEL, t.grpc_address, runs / "verbose-rate.csv", protocol="grpc", measurement_ms=300,
                      extra=[*fast, "--verbose-csv", "--request-rate-range", "100:200:100"])
    assert "Avg latency" in (runs / "verbose-rate.csv").read_text().splitlines()[0]
    shutil.copy(samples / "perf-analyzer-example.csv", runs / "example.csv")
    (runs / "broken.csv").write_text("Concurrency,Inferences/Second\n1,x\n")

    e = exporter_factory("--triton", "none", "--ebpf", "off", "--perf-analyzer-csv", str(runs / "*.csv"),
                         "--perf-analyzer-poll-seconds", "0.2")
    s = e.wait_for(lambda s: len({lab["run"] for lab, _ in
                                  s.select("inference_profiler_perf_analyzer_throughput")}) == 3)
    plain = expected_from_csv(runs / "plain.csv")
    assert {k[1] for k in plain} == {"2", "4"}
    assert exposed(s, "plain.csv") == pytest.approx(plain, rel=1e-9)
    rate = expected_from_csv(runs / "verbose-rate.csv", rate=True)
    assert {k[1] for k in rate} == {"100/s", "200/s"}
    assert exposed(s, "verbose-rate.csv") == pytest.approx(rate, rel=1e-9)
    assert exposed(s, "example.csv") == pytest.approx(expected_from_csv(samples / "perf-analyzer-example.csv"))
    assert s.total("inference_profiler_errors_total", source="perf_analyzer", reason="missing_column") == 1
    log = e.log()
    assert "broken.csv rejected: missing column(s)" in log and "Traceback" not in log

    # a new run rewrites its file: the new rows replace the old
    run_perf_analyzer(MODEL, t.http_address, runs / "plain.csv", concurrency_range="3:3",
                      measurement_ms=300, extra=fast)
    s = e.wait_for(lambda s: {lab["concurrency"] for lab, _ in
                              s.select("inference_profiler_perf_analyzer_throughput", run="plain.csv")} == {"3"})
    assert exposed(s, "plain.csv") == pytest.approx(expected_from_csv(runs / "plain.csv"), rel=1e-9)
