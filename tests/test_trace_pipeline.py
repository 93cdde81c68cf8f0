"""The trace pipeline against an independent implementation, file lifecycle and state."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from exporter.histogram import DEFAULT_STAGE_BUCKETS
from exporter.traces.checkpoint import STATE_VERSION
from exporter.traces.source import bounds_ns
from exporter.traces.tailer import TailerSettings, TraceTailer
from tests import reference, tracegen
from tests.conftest import ROLLING_TRACES

SAMPLE_DIR = ROLLING_TRACES


def make_tailer(pattern: str, state_dir: Path | None, **kw: Any) -> TraceTailer:
    s = TailerSettings([pattern], str(state_dir) if state_dir else None, bounds_ns(list(DEFAULT_STAGE_BUCKETS)), **kw)
    return TraceTailer(s)


def stats(t: TraceTailer) -> dict[str, Any]:
    agg = t.live
    n = len(t.label_names)
    return {
        "traces": {k[n:]: c for k, c in agg.traces.items()},
        "stages": {k[n:]: [h.count, h.total] for k, h in agg.histograms.items()},
        "negative": agg.rejected.get("negative_span", 0),
        "responses": {k[n:]: [h.count, h.total] for k, h in agg.responses.items()},
        "timeline": {k[n:]: v for k, v in agg.timeline.items() if v},
    }


def assert_matches_reference(t: TraceTailer, files: list[str]) -> None:
    want = reference.stage_stats(files)
    got = stats(t)
    assert got["traces"] == want["traces"]
    assert got["stages"] == want["stages"]
    assert got["negative"] == want["negative"]
    assert got["responses"] == want["responses"]
    assert got["timeline"] == want["timeline"]


def test_real_samples_match_reference(tmp_path: Path) -> None:
    for p in SAMPLE_DIR.iterdir():
        shutil.copy(p, tmp_path / p.name)
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state")
    assert t.poll() == 8
    files = sorted(str(p) for p in tmp_path.glob("trace.json.*"))
    assert_matches_reference(t, files)
    assert sum(t.live.traces.values()) == 347
    assert t.live.files["parsed"] == 8
    assert t.poll() == 0  # nothing new: nothing counted twice


def test_real_samples_anatomy(tmp_path: Path) -> None:
    """Every HTTP trace of the samples gets its frontend_overhead; no span is negative; the
    segments of each series add up to its end_to_end."""
    t = make_tailer(str(SAMPLE_DIR / "trace.json"), None)
    t.poll()
    agg = t.live
    http = agg.traces[("add_sub", "1", "http")]
    assert http == 187
    assert agg.histograms[("add_sub", "1", "http", "frontend_overhead")].count == http
    assert agg.rejected["negative_span"] == 0
    for key, n in agg.traces.items():
        e2e = agg.histograms[(*key, "end_to_end")]
        assert e2e.count == n
        assert sum(v for k, v in agg.timeline.items() if k[:-1] == key) == e2e.total


def test_streaming_and_custom_activities_match_reference(tmp_path: Path) -> None:
    objs = list(tracegen.traces(600, seed=8, ensemble_every=7, streaming_every=3))
    # Triton writes a trace's objects into one file: cut where a streaming trace's header begins
    cut = next(i for i in range(len(objs) // 2, len(objs)) if '"request_id":"s-' in objs[i])
    tracegen.write_file(str(tmp_path / "trace.json.0"), objs[:cut])
    tracegen.write_file(str(tmp_path / "trace.json.1"), objs[cut:])
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state")
    t.poll()
    assert_matches_reference(t, [str(tmp_path / "trace.json.0"), str(tmp_path / "trace.json.1")])
    agg = t.live
    assert agg.histograms[("streamer", "1", "grpc", "inter_response")].count > 0
    assert agg.histograms[("streamer", "1", "http", "custom_tokenize")].count > 0
    assert agg.responses[("streamer", "1", "http")].total > agg.responses[("streamer", "1", "http")].count
    assert agg.rejected["negative_span"] == 0
    # the state carries the new families across a restart
    t2 = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state")
    assert t2.live.timeline == agg.timeline
    assert {k: (h.count, h.total) for k, h in t2.live.responses.items()} == \
        {k: (h.count, h.total) for k, h in agg.responses.items()}


def test_children_found_when_a_batch_holds_more_parents_than_are_remembered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch with more top-level traces than the protocol memory keeps: its own children
    still find their parents (they were left waiting, and uncounted, before)."""
    from exporter.traces import assembly

    monkeypatch.setattr(assembly, "MAX_PROTOCOLS", 50)
    tracegen.write_file(str(tmp_path / "trace.json.0"), tracegen.traces(1500, seed=5, ensemble_every=3))
    t = make_tailer(str(tmp_path / "trace.json"), None)
    t.poll()
    assert sum(len(s.pending) for s in t.streams.values()) == 0
    assert_matches_reference(t, [str(tmp_path / "trace.json.0")])


def test_histogram_buckets_are_le(tmp_path: Path) -> None:
    """A span exactly on a bucket bound lands in that bound's bucket."""
    bound = bounds_ns(list(DEFAULT_STAGE_BUCKETS))[5]  # 2.5 ms
    objs = [
        '{"id":1,"model_name":"m","model_version":1}',
        f'{{"id":1,"timestamps":[{{"name":"REQUEST_START","ns":1000}},{{"name":"REQUEST_END","ns":{1000 + bound}}}]}}',
    ]
    tracegen.write_file(str(tmp_path / "t.json.0"), objs)
    t = make_tailer(str(tmp_path / "t.json"), None)
    t.poll()
    h = t.live.histograms[("m", "1", "none", "request")]
    assert h.counts[5] == 1 and sum(h.counts) == 1


def test_synthetic_rolling_with_ensembles_across_files(tmp_path: Path) -> None:
    objs = list(tracegen.traces(3000, seed=7, ensemble_every=5))
    # split between a child and its parent (Triton never splits one trace): the child waits
    header = next(i for i, o in enumerate(objs) if i > len(objs) // 2 and '"parent_id"' in o)
    child_id = json.loads(objs[header])["id"]
    cut = header
    while json.loads(objs[cut])["id"] == child_id:
        cut += 1
    tracegen.write_file(str(tmp_path / "trace.json.0"), objs[:cut])
    tracegen.write_file(str(tmp_path / "trace.json.1"), objs[cut:])
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state")
    t.poll()
    assert_matches_reference(t, [str(tmp_path / "trace.json.0"), str(tmp_path / "trace.json.1")])
    protos = {k[2] for k in t.live.traces if k[0] == "add_sub"}
    assert protos == {"http", "grpc"}  # children took their parent's protocol
    assert not any(s.pending for s in t.streams.values())


def test_half_written_file_is_retried_never_half_counted(tmp_path: Path) -> None:
    objs = list(tracegen.traces(200, seed=3))
    full = "[" + ",".join(objs) + "]"
    path = tmp_path / "trace.json.0"
    path.write_text(full[: len(full) // 2])  # Triton mid-write: no closing bracket yet
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state", settle_seconds=60)
    assert t.poll() == 0
    assert sum(t.live.traces.values()) == 0
    # a write boundary right after an inner ']' must not look complete either
    inner = full.index("]}", len(full) // 3) + 1
    path.write_text(full[:inner])
    assert t.poll() == 0
    path.write_text(full)
    assert t.poll() == 1
    assert_matches_reference(t, [str(path)])


def test_truncated_file_settles_then_counts_once_when_completed(tmp_path: Path) -> None:
    objs = list(tracegen.traces(100, seed=4))
    full = "[" + ",".join(objs) + "]"
    path = tmp_path / "trace.json.0"
    cut = full.index('{"id":51,')  # whole objects of traces 1..50
    path.write_text(full[:cut])
    old = time.time() - 120
    os.utime(path, (old, old))
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state", settle_seconds=5)
    assert t.poll() == 1
    assert sum(t.live.traces.values()) == 50
    assert t.live.rejected["truncated_file"] == 1
    assert t.live.files["failed"] == 1
    assert t.poll() == 0  # unchanged: not again
    path.write_text(full)  # the writer finally finished it
    t.poll()
    assert sum(t.live.traces.values()) == 100


def test_restart_overwrites_index_zero_and_new_content_counts(tmp_path: Path) -> None:
    a = list(tracegen.traces(100, seed=1))
    tracegen.write_file(str(tmp_path / "trace.json.0"), a)
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state")
    t.poll()
    assert sum(t.live.traces.values()) == 100
    time.sleep(0.01)
    b = list(tracegen.traces(40, seed=2))  # Triton restarted: ids start at 1 again, same file name
    tracegen.write_file(str(tmp_path / "trace.json.0"), b)
    t.poll()
    assert sum(t.live.traces.values()) == 140


def test_state_survives_restart_and_deleted_files(tmp_path: Path) -> None:
    d = tmp_path / "traces"
    d.mkdir()
    for i in range(3):
        tracegen.write_file(str(d / f"trace.json.{i}"), tracegen.traces(50, seed=i, start_id=1 + 50 * i))
    t = make_tailer(str(d / "trace.json"), tmp_path / "state")
    t.poll()
    first = stats(t)
    # a new process: same counts, nothing re-ingested
    t2 = make_tailer(str(d / "trace.json"), tmp_path / "state")
    assert stats(t2) == first
    assert t2.poll() == 0
    for p in d.iterdir():
        p.unlink()
    t3 = make_tailer(str(d / "trace.json"), tmp_path / "state")
    t3.poll()
    assert stats(t3) == first  # counters continue though the files are gone
    tracegen.write_file(str(d / "trace.json.3"), tracegen.traces(10, seed=9, start_id=151))
    t3.poll()
    assert sum(t3.live.traces.values()) == 160


def test_retention_deletes_ingested_files(tmp_path: Path) -> None:
    tracegen.write_file(str(tmp_path / "trace.json.0"), tracegen.traces(20))
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state", delete_ingested=True)
    t.poll()
    assert sum(t.live.traces.values()) == 20
    assert not (tmp_path / "trace.json.0").exists()


def test_name_segments_become_labels(tmp_path: Path) -> None:
    for pod in ("pod-a", "pod-b"):
        (tmp_path / pod).mkdir()
        tracegen.write_file(str(tmp_path / pod / "trace.json.0"), tracegen.traces(10 if pod == "pod-a" else 7))
    t = make_tailer(str(tmp_path / "{pod}" / "trace.json"), None)
    t.poll()
    assert t.label_names == ["pod"]
    per_pod: dict[str, int] = {}
    for k, n in t.live.traces.items():
        per_pod[k[0]] = per_pod.get(k[0], 0) + n
    assert per_pod == {"pod-a": 10, "pod-b": 7}


def test_model_cap_rejects_models_past_the_cap(tmp_path: Path) -> None:
    objs = list(tracegen.traces(60, models=tuple(f"m{i}" for i in range(6))))
    tracegen.write_file(str(tmp_path / "trace.json.0"), objs)
    t = make_tailer(str(tmp_path / "trace.json"), None, max_models=4)
    t.poll()
    assert {k[0] for k in t.live.traces} == {"m0", "m1", "m2", "m3"}
    assert t.live.rejected["model_cap"] == 20
    assert sum(t.live.traces.values()) == 40


def test_window_bounds_open_traces(tmp_path: Path) -> None:
    """With a tiny window, traces written together are still assembled exactly."""
    tracegen.write_file(str(tmp_path / "trace.json.0"), tracegen.traces(500, ensemble_every=4))
    t = make_tailer(str(tmp_path / "trace.json"), None, window=4)
    t.poll()
    assert_matches_reference(t, [str(tmp_path / "trace.json.0")])


def test_state_file_is_json_and_atomic(tmp_path: Path) -> None:
    tracegen.write_file(str(tmp_path / "trace.json.0"), tracegen.traces(5))
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state")
    t.poll()
    files = os.listdir(tmp_path / "state")
    assert files == ["traces-state.json"]  # no temp files left behind
    v = json.loads((tmp_path / "state" / "traces-state.json").read_text())
    assert v["version"] == STATE_VERSION and str(tmp_path / "trace.json.0") in v["files"]


def test_corrupt_state_is_kept_aside(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "traces-state.json").write_text("{not json")
    tracegen.write_file(str(tmp_path / "trace.json.0"), tracegen.traces(5))
    t = make_tailer(str(tmp_path / "trace.json"), tmp_path / "state")
    t.poll()
    assert (tmp_path / "state" / "traces-state.json.corrupt").exists()
    assert sum(t.live.traces.values()) == 5


@pytest.mark.parametrize("window", [16384])
def test_summary_json_matches_reference(tmp_path: Path, window: int, capsys: pytest.CaptureFixture[str]) -> None:
    from exporter.cli import main

    files = sorted(str(p) for p in SAMPLE_DIR.iterdir())
    assert main(["summary", "--format", "json", *files]) == 0
    out = json.loads(capsys.readouterr().out)
    want = reference.stage_stats(files)
    for g in out["groups"]:
        key = (g["model"], g["version"], g["protocol"])
        assert g["traces"] == want["traces"][key]
        for stage, st in g["stages"].items():
            count, total = want["stages"][(*key, stage)]
            assert st["count"] == count
            assert st["mean"] == pytest.approx(total / count / 1e9, rel=1e-12)
