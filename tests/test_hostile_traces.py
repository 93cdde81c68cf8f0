"""Hostile trace files: labels that no exposition format can carry, JSON nested past the
interpreter's stack, over-long versions and symlinks out of the trace directory. Each is a
counted rejection; every good trace around it is counted and /metrics stays valid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from exporter.histogram import DEFAULT_STAGE_BUCKETS
from exporter.traces.collector import TraceCollector
from exporter.traces.source import bounds_ns
from exporter.traces.tailer import TailerSettings, TraceTailer
from tests import tracegen
from tests.test_trace_bad_input import good_traces

SCANNERS = pytest.mark.parametrize("pure_python", [False, True], ids=["c-scanner", "python-scanner"])


def _tailer(pattern: Path, state: Path | None = None) -> TraceTailer:
    return TraceTailer(TailerSettings([str(pattern)], str(state) if state else None,
                                      bounds_ns(list(DEFAULT_STAGE_BUCKETS))))


def _use_scanner(monkeypatch: pytest.MonkeyPatch, pure_python: bool) -> None:
    from exporter.traces import pipeline, scanner

    monkeypatch.setattr(pipeline, "FileScan", scanner.PyFileScan if pure_python else scanner.FileScan)


def _scrape_both(t: TraceTailer) -> tuple[str, str]:
    """Both exposition formats, each parsed back: a scrape that fails or does not parse fails the test."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TraceCollector(t))
    text = generate_latest(reg).decode()
    om = generate_openmetrics(reg).decode()
    list(text_string_to_metric_families(text))
    list(parse_openmetrics(om))
    return text, om


def _file_with(tmp_path: Path, bad: list[str], n_good: int = 20, seed: int = 5) -> Path:
    groups = good_traces(n_good, seed=seed)
    objs: list[str] = []
    for i, g in enumerate(groups):
        objs.extend(g)
        if i < len(bad):
            objs.append(bad[i])
    tracegen.write_file(str(tmp_path / "trace.json.0"), objs)
    return tmp_path / "trace.json"


@SCANNERS
def test_lone_surrogates_in_labels_are_bad_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 pure_python: bool) -> None:
    _use_scanner(monkeypatch, pure_python)
    bad = [
        '{"id":900001,"model_name":"s\\ud800","model_version":1}',
        '{"id":900002,"model_name":"add_sub","model_version":"v\\udfff"}',
        '{"id":900003,"model_name":"add_sub","model_version":1,"request_id":"r\\ud800"}',
    ]
    # a whole trace whose request id has a surrogate: counted, without that exemplar label
    bad.append('{"id":900003,"timestamps":[{"name":"REQUEST_START","ns":1000}]}')
    bad.append('{"id":900003,"timestamps":[{"name":"REQUEST_END","ns":2000}]}')
    state = tmp_path / "state"
    t = _tailer(_file_with(tmp_path, bad), state)
    t.poll()
    assert t.live.rejected["bad_label"] == 3
    assert sum(t.live.traces.values()) == 21
    text, om = _scrape_both(t)
    assert "\\ud800" not in om and 'model="add_sub"' in text
    assert 'trace_id="900003"' in om and 'request_id="r' not in om
    # the state written holds nothing that breaks the next start's scrapes either
    t2 = _tailer(tmp_path / "trace.json", state)
    assert sum(t2.live.traces.values()) == 21
    _scrape_both(t2)


@SCANNERS
def test_over_long_version_and_request_id_are_bad_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       pure_python: bool) -> None:
    _use_scanner(monkeypatch, pure_python)
    bad = ['{"id":900001,"model_name":"add_sub","model_version":"%s"}' % ("9" * 100_000),
           '{"id":900002,"model_name":"add_sub","model_version":"%s"}' % ("v" * 257),
           '{"id":900003,"model_name":"add_sub","model_version":1,"request_id":"%s"}' % ("r" * 257)]
    t = _tailer(_file_with(tmp_path, bad))
    t.poll()
    assert t.live.rejected["bad_label"] == 3
    assert sum(t.live.traces.values()) == 20
    assert max(len(k[1]) for k in t.live.traces) <= 256


@SCANNERS
def test_json_nested_past_the_stack_is_malformed_and_ingestion_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure_python: bool) -> None:
    _use_scanner(monkeypatch, pure_python)
    deep = '{"id":900001,"timestamps":' + "[" * 1500 + "]" * 1500 + "}"
    t = _tailer(_file_with(tmp_path, [deep]))
    t.poll()
    assert t.live.rejected["malformed_json"] == 1
    assert sum(t.live.traces.values()) == 20
    assert t.live.files["parsed"] == 1
    # a later file of the stream is ingested too
    tracegen.write_file(str(tmp_path / "trace.json.1"), tracegen.traces(7, start_id=5000))
    assert t.poll() == 1
    assert sum(t.live.traces.values()) == 27


def test_symlink_out_of_the_trace_directory_is_not_read(tmp_path: Path) -> None:
    from exporter.source import ErrorCounts

    outside = tmp_path / "secret"
    outside.mkdir()
    tracegen.write_file(str(outside / "data.json"), tracegen.traces(5))
    d = tmp_path / "traces"
    d.mkdir()
    tracegen.write_file(str(d / "trace.json.0"), tracegen.traces(3, start_id=100))
    os.symlink(outside / "data.json", d / "trace.json.1")
    tracegen.write_file(str(d / "real.json"), tracegen.traces(4, start_id=200))
    os.symlink(d / "real.json", d / "trace.json.2")  # inside the directory: followed
    errors = ErrorCounts()
    t = TraceTailer(TailerSettings([str(d / "trace.json")], None, bounds_ns(list(DEFAULT_STAGE_BUCKETS))),
                    on_error=lambda reason: errors.inc("traces", reason))
    t.poll()
    t.poll()
    assert sum(t.live.traces.values()) == 7
    assert errors.get("traces", "symlink_outside") == 1


@SCANNERS
def test_oversized_object_is_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 pure_python: bool) -> None:
    from exporter.traces.records import MAX_OBJECT

    _use_scanner(monkeypatch, pure_python)
    groups = good_traces(30, seed=9)
    huge = b'{"id":900001,"timestamps":[' + b"[" * (MAX_OBJECT + (1 << 20)) + b"]}"
    body = b"[" + b",".join(",".join(g).encode() for g in groups[:15]) + b"," + huge + b","
    body += b",".join(",".join(g).encode() for g in groups[15:]) + b"]"
    (tmp_path / "trace.json.0").write_bytes(body)
    t = _tailer(tmp_path / "trace.json")
    t.poll()
    assert t.live.rejected["oversized_object"] == 1
    assert sum(t.live.traces.values()) == 30
    assert t.live.files["parsed"] == 1
    _scrape_both(t)


_BIG_RUN = """
import sys, time
from tests.test_trace_bad_input import tailer
t0 = time.process_time()
t = tailer(sys.argv[1]); t.poll()
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(time.process_time() - t0, int(hwm) / 1024, t.live.rejected['malformed_json'], t.live.files['parsed'])
"""


@SCANNERS
def test_file_without_object_boundaries_is_linear_and_bounded(tmp_path: Path, pure_python: bool) -> None:
    """A file of nothing but '{': CPU time grows with the size (not its square), memory does not."""
    import subprocess
    import sys

    runs = {}
    for mb in (16, 64):
        d = tmp_path / str(mb)
        d.mkdir()
        with open(d / "trace.json.0", "wb") as f:
            f.write(b"[")
            for _ in range(mb):
                f.write(b"{" * (1 << 20))
            f.write(b"]")
        env = {**os.environ, "INFPROF_PURE_PYTHON_SCANNER": "1" if pure_python else ""}
        out = subprocess.run([sys.executable, "-c", _BIG_RUN, str(d / "trace.json")], capture_output=True,
                             text=True, check=True, env=env, timeout=300,
                             cwd=Path(__file__).resolve().parent.parent).stdout.split()
        runs[mb] = (float(out[0]), float(out[1]))
        assert out[2:] == ["1", "1"]  # one malformed_json for the whole run, the file still parsed
        (d / "trace.json.0").unlink()
    print(f"no-boundary file: 16 MB {runs[16][0]:.2f} CPU-s {runs[16][1]:.0f} MB peak, "
          f"64 MB {runs[64][0]:.2f} CPU-s {runs[64][1]:.0f} MB peak")
    assert runs[64][0] < 6 * runs[16][0] + 0.5, runs  # linear is 4x; quadratic would be 16x
    assert runs[64][1] < runs[16][1] + 20, runs
