"""Bounded trace disk: --trace-keep-bytes deletes the oldest ingested files of a trace file set,
never one whose traces are not all counted, and trace_files_bytes reports what is left on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prometheus_client.registry import CollectorRegistry

from exporter.histogram import DEFAULT_STAGE_BUCKETS
from exporter.traces.collector import TraceCollector
from exporter.traces.source import bounds_ns
from exporter.traces.tailer import TailerSettings, TraceTailer
from tests import tracegen

GAUGE = "inference_profiler_trace_files_bytes"


def make_tailer(pattern: str, state_dir: Path | None, **kw: Any) -> TraceTailer:
    s = TailerSettings([pattern], str(state_dir) if state_dir else None, bounds_ns(list(DEFAULT_STAGE_BUCKETS)), **kw)
    return TraceTailer(s)


def gauge(t: TraceTailer) -> dict[tuple[tuple[str, str], ...], float]:
    reg = CollectorRegistry()
    reg.register(TraceCollector(t))
    return {tuple(sorted(s.labels.items())): s.value
            for fam in reg.collect() if fam.name == GAUGE for s in fam.samples}


def write_rolling(d: Path, n: int, per_file: int = 10) -> list[Path]:
    """n complete rolling files, oldest first (mtimes one second apart)."""
    files = []
    for i in range(n):
        f = d / f"trace.json.{i}"
        tracegen.write_file(str(f), tracegen.traces(per_file, seed=i, start_id=1 + i * per_file))
        os.utime(f, ns=(time.time_ns() - (n - i) * 10**9,) * 2)
        files.append(f)
    return files


def test_keep_bytes_deletes_the_oldest_ingested_files(tmp_path: Path) -> None:
    files = write_rolling(tmp_path, 6)
    sizes = [f.stat().st_size for f in files]
    keep = sizes[-1] + sizes[-2]  # room for the two newest
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state", keep_bytes=keep)
    assert t.poll() == 6
    assert sum(t.live.traces.values()) == 60  # every trace counted before its file went
    assert [f.exists() for f in files] == [False] * 4 + [True] * 2
    assert gauge(t) == {(): float(keep)}
    # the deleted files stay counted, and nothing is read twice
    assert t.poll() == 0 and sum(t.live.traces.values()) == 60
    t2 = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state", keep_bytes=keep)
    assert t2.poll() == 0 and sum(t2.live.traces.values()) == 60


def test_keep_bytes_never_deletes_a_file_not_yet_counted(tmp_path: Path) -> None:
    files = write_rolling(tmp_path, 2)
    half = tmp_path / "trace.json.2"  # Triton still writing: no closing ']'
    half.write_text(files[0].read_text().rstrip().rstrip("]"))
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state", keep_bytes=1)
    assert t.poll() == 2
    assert not files[0].exists() and not files[1].exists()
    assert half.exists()
    assert gauge(t) == {(): float(half.stat().st_size)}


def test_bytes_gauge_without_retention_and_per_label(tmp_path: Path) -> None:
    for pod in ("a", "b"):
        (tmp_path / pod).mkdir()
        write_rolling(tmp_path / pod, 2 if pod == "a" else 1)
    t = make_tailer(str(tmp_path / "{pod}" / "trace.json"), None)
    t.poll()
    want = {pod: sum(f.stat().st_size for f in (tmp_path / pod).iterdir()) for pod in ("a", "b")}
    assert gauge(t) == {(("pod", "a"),): float(want["a"]), (("pod", "b"),): float(want["b"])}
    # a set emptied by retention (here: by hand) keeps its series, at 0
    for f in (tmp_path / "b").iterdir():
        f.unlink()
    t.poll()
    assert gauge(t) == {(("pod", "a"),): float(want["a"]), (("pod", "b"),): 0.0}


def test_delete_ingested_leaves_zero_bytes(tmp_path: Path) -> None:
    write_rolling(tmp_path, 3)
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state", delete_ingested=True)
    assert t.poll() == 3
    t.poll()
    assert gauge(t) == {(): 0.0}
    assert sum(t.live.traces.values()) == 30
