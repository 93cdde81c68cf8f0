"""perf_analyzer CSV: plain, --verbose-csv and request-rate layouts; broken files rejected with reasons."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.source import ErrorCounts
from exporter.triton.perf_csv import PerfCsvError, parse_perf_csv
from exporter.triton.perf_source import PerfAnalyzerCollector, PerfAnalyzerFiles, run_names

HEADER = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
          "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
          "p50 latency,p90 latency,p95 latency,p99 latency")
# written by perf_analyzer 2.41.1 (-f x.csv --verbose-csv) against add_sub on this machine
VERBOSE = (HEADER + ",Avg latency,request/response,response wait\n"
           "2,621.292,89,383,2140,68,407,124,0,3179,3501,3611,4906,3215,89,3111\n")
# written by perf_analyzer 2.41.1 (--request-rate-range 50:100:50)
RATE = (HEADER.replace("Concurrency", "Request Rate") + "\n"
        "50,49.695,193,548,2186,62,413,106,0,3458,3679,3806,4940\n"
        "100,99.6642,148,520,2196,65,415,88,0,3389,3607,3714,4964\n")


def test_example_csv(samples: Path) -> None:
    rows = parse_perf_csv((samples / "perf-analyzer-example.csv").read_text())
    assert [r.concurrency for r in rows] == ["1", "2", "3", "4"]  # the file lists 1,4,3,2
    r4 = rows[3]
    assert r4.throughput == 113.6
    assert r4.stage_seconds == pytest.approx({"client_send": 127e-6, "network": 1037e-6, "queue": 25267e-6,
                                              "compute_input": 159e-6, "compute_infer": 8604e-6,
                                              "compute_output": 6e-6, "client_recv": 0.0})
    assert r4.latency_seconds == pytest.approx({"0.5": 0.035208, "0.9": 0.035622, "0.95": 0.035702,
                                                "0.99": 0.0359})


def test_verbose_layout_extra_columns_ignored() -> None:
    (row,) = parse_perf_csv(VERBOSE)
    assert row.concurrency == "2" and row.throughput == 621.292
    assert row.stage_seconds["queue"] == pytest.approx(2140e-6)
    assert set(row.latency_seconds) == {"0.5", "0.9", "0.95", "0.99"}


def test_request_rate_layout() -> None:
    rows = parse_perf_csv(RATE)
    assert [r.concurrency for r in rows] == ["50/s", "100/s"]
    assert rows[1].throughput == 99.6642


@pytest.mark.parametrize(("text", "reason", "words"), [
    ("", "empty", "empty"),
    ("   \n\n", "empty", "empty"),
    (HEADER + "\n", "empty", "no result rows"),
    ("a,b\n1,2\n", "missing_column", "'Concurrency' or 'Request Rate'"),
    (HEADER.replace(",Server Queue", "") + "\n1,2,3,4,5,6,7,8,9,10,11,12\n", "missing_column", "'Server Queue'"),
    (HEADER + "\n1,105,118,962,21,168,abc,5,0,9539,9714,9758,9796\n", "not_a_number",
     "row 2 column 'Server Compute Infer': 'abc'"),
    (HEADER + "\n1,105,118,962,21,168,8233,5,0,9539,9714,9758\n", "not_a_number", "'p99 latency'"),
    (HEADER + "\n1,105,118,962,-21,168,8233,5,0,9539,9714,9758,9796\n", "negative_value", "Server Queue"),
    (HEADER + "\n1,105,118,962,21,168,8233,5,0,9539,9714,9758,9796,1,2,3\n", "malformed_csv", "not a CSV"),
    (HEADER + "\n1,inf,118,962,21,168,8233,5,0,9539,9714,9758,9796\n", "not_a_number", "'inf'"),
])
def test_broken_csvs_are_rejected_with_a_reason(text: str, reason: str, words: str) -> None:
    with pytest.raises(PerfCsvError) as e:
        parse_perf_csv(text)
    assert e.value.reason == reason
    assert words in str(e.value) and "\n" not in str(e.value)


def test_run_names_disambiguate_same_file_name() -> None:
    assert run_names(["/a/x.csv", "/b/x.csv", "/b/y.csv"]) == {"/a/x.csv": "/a/x.csv", "/b/x.csv": "/b/x.csv",
                                                               "/b/y.csv": "y.csv"}


def _values(files: PerfAnalyzerFiles) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PerfAnalyzerCollector(files))
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(generate_latest(reg).decode()) for s in f.samples}


def test_files_new_rewritten_broken_and_deleted(tmp_path: Path, samples: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorCounts()
    files = PerfAnalyzerFiles([str(tmp_path / "*.csv")], lambda r: errors.inc("perf_analyzer", r))
    files.poll()
    assert _values(files) == {}
    shutil.copy(samples / "perf-analyzer-example.csv", tmp_path / "example.csv")
    (tmp_path / "broken.csv").write_text(HEADER + "\n1,105,x,962,21,168,8233,5,0,9539,9714,9758,9796\n")
    files.poll()
    v = _values(files)
    assert v[("inference_profiler_perf_analyzer_throughput",
              frozenset({("run", "example.csv"), ("concurrency", "3")}))] == 114
    assert v[("inference_profiler_perf_analyzer_stage_seconds",
              frozenset({("run", "example.csv"), ("concurrency", "4"), ("stage", "queue")}))] == pytest.approx(
        0.025267)
    assert v[("inference_profiler_perf_analyzer_latency_seconds",
              frozenset({("run", "example.csv"), ("concurrency", "1"), ("quantile", "0.99")}))] == pytest.approx(
        0.009796)
    assert not any(dict(k[1]).get("run") == "broken.csv" for k in v)
    assert errors.get("perf_analyzer", "not_a_number") == 1
    assert any("broken.csv rejected: row 2 column 'Client Send'" in r.getMessage() for r in caplog.records)
    files.poll()  # unchanged files are neither re-read nor counted again
    assert errors.get("perf_analyzer", "not_a_number") == 1
    # perf_analyzer rewrites its file at the end of a new run
    (tmp_path / "example.csv").write_text(VERBOSE)
    os.utime(tmp_path / "example.csv", ns=(1, 1))
    (tmp_path / "broken.csv").write_text(RATE)
    files.poll()
    v = _values(files)
    runs = {(dict(k[1])["run"], dict(k[1])["concurrency"]) for k in v}
    assert runs == {("example.csv", "2"), ("broken.csv", "50/s"), ("broken.csv", "100/s")}
    (tmp_path / "example.csv").unlink()
    files.poll()
    assert {dict(k[1])["run"] for k in _values(files)} == {"broken.csv"}
