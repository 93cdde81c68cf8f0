"""Damaged state: every unusable state file is moved aside as .corrupt with one log line and
the tailer starts from empty; an unwritable state dir refuses to start or fails /readyz."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.histogram import DEFAULT_STAGE_BUCKETS
from exporter.traces.checkpoint import STATE_VERSION, atomic_write_json
from exporter.traces.source import bounds_ns
from exporter.traces.store import Change
from exporter.traces.tailer import STATE_FILE, TailerSettings, TraceTailer
from tests import tracegen
from tests.test_hostile_traces import _scrape_both

BOUNDS = bounds_ns(list(DEFAULT_STAGE_BUCKETS))


def _tailer(trace_dir: Path, state: Path) -> TraceTailer:
    return TraceTailer(TailerSettings([str(trace_dir / "trace.json")], str(state), BOUNDS))


@pytest.fixture(scope="module")
def good_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real state file's content (checksum removed), from ingesting a small file."""
    d = tmp_path_factory.mktemp("good")
    tracegen.write_file(str(d / "trace.json.0"), tracegen.traces(12, ensemble_every=4))
    t = _tailer(d, d / "state")
    t.poll()
    v: dict[str, Any] = json.loads((d / "state" / STATE_FILE).read_text())
    v.pop("checksum")
    return v


def _write_checksummed(state: Path, value: Any) -> None:
    atomic_write_json(str(state / STATE_FILE), value)


def _start(state: Path, tmp: Path, caplog: pytest.LogCaptureFixture) -> TraceTailer:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="traces"):
        t = _tailer(tmp, state)
    return t


def _assert_moved_aside(state: Path, t: TraceTailer, caplog: pytest.LogCaptureFixture) -> None:
    assert (state / (STATE_FILE + ".corrupt")).exists()
    assert not (state / STATE_FILE).exists()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "moved to" in lines[0] and "\n" not in lines[0], lines
    assert sum(t.live.traces.values()) == 0 and not t.entries
    _scrape_both(t)


def _mutations(good: dict[str, Any]) -> dict[str, Any]:
    agg = good["aggregate"]
    short = json.loads(json.dumps(good))
    short["aggregate"]["histograms"][0][1] = short["aggregate"]["histograms"][0][1][:3]
    nan_count = json.loads(json.dumps(good))
    nan_count["aggregate"]["traces"][0][1] = "NaN"
    unknown_key = json.loads(json.dumps(good))
    first = next(iter(unknown_key["files"]))
    unknown_key["files"][first]["colour"] = "red"
    bad_pending = json.loads(json.dumps(good))
    bad_pending["streams"] = {"x": {"protocol_ids": [], "protocol_codes": [], "pending": [[[1, 2], "soon"]]}}
    surrogate = json.loads(json.dumps(good))
    surrogate["aggregate"]["models"] = [["s\ud800", "1"]]
    return {
        "files_is_a_list": {**good, "files": []},
        "aggregate_is_a_string": {**good, "aggregate": "x"},
        "files_entry_unknown_key": unknown_key,
        "count_is_NaN_text": nan_count,
        "bad_pending_entry": bad_pending,
        "histogram_counts_too_short": short,
        "label_with_lone_surrogate": surrogate,
        "extra_top_level_key": {**good, "extra": 1},
        "negative_count": {**good, "aggregate": {**agg, "files": {"parsed": -1}}},
    }


@pytest.mark.parametrize("case", ["files_is_a_list", "aggregate_is_a_string", "files_entry_unknown_key",
                                  "count_is_NaN_text", "bad_pending_entry", "histogram_counts_too_short",
                                  "label_with_lone_surrogate", "extra_top_level_key", "negative_count"])
def test_invalid_state_shapes_are_moved_aside(tmp_path: Path, good_state: dict[str, Any], case: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _write_checksummed(state, _mutations(good_state)[case])
    t = _start(state, tmp_path, caplog)
    _assert_moved_aside(state, t, caplog)


def test_good_state_resumes(tmp_path: Path, good_state: dict[str, Any]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _write_checksummed(state, good_state)
    t = _tailer(tmp_path, state)
    assert sum(t.live.traces.values()) == sum(n for _, n in good_state["aggregate"]["traces"]) > 0
    assert not (state / (STATE_FILE + ".corrupt")).exists()


def test_edited_numbers_fail_the_checksum(tmp_path: Path, good_state: dict[str, Any],
                                          caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _write_checksummed(state, good_state)
    path = state / STATE_FILE
    v = json.loads(path.read_text())
    v["aggregate"]["traces"][0][1] += 1000  # valid JSON, valid shape, wrong numbers
    path.write_text(json.dumps(v, separators=(",", ":")))
    t = _start(state, tmp_path, caplog)
    _assert_moved_aside(state, t, caplog)
    assert "checksum" in caplog.records[-1].getMessage()


def test_unknown_version_is_moved_aside_not_overwritten(tmp_path: Path, good_state: dict[str, Any],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _write_checksummed(state, {**good_state, "version": 99})
    t = _start(state, tmp_path, caplog)
    _assert_moved_aside(state, t, caplog)
    assert json.loads((state / (STATE_FILE + ".corrupt")).read_text())["version"] == 99


@pytest.mark.parametrize("family", ["outcomes", "joins", "traces", "timeline"])
def test_a_series_key_too_short_for_its_labels_is_moved_aside(tmp_path: Path, good_state: dict[str, Any],
                                                               caplog: pytest.LogCaptureFixture, family: str) -> None:
    """Found by the fuzz below: an outcome's key emptied passed the checks and failed every scrape."""
    state = tmp_path / "state"
    state.mkdir()
    agg = dict(good_state["aggregate"])
    agg[family] = [*agg.get(family, []), [[], 1]]
    _write_checksummed(state, {**good_state, "aggregate": agg})
    t = _start(state, tmp_path, caplog)
    _assert_moved_aside(state, t, caplog)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_state_shapes_never_traceback(tmp_path: Path, good_state: dict[str, Any], data: st.DataObject) -> None:
    """Replace any one value of a real state (or the whole of it) with arbitrary JSON: start-up
    either resumes a state that scrapes fine, or moves the file aside; it never raises."""
    v = json.loads(json.dumps(good_state))
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, x in node.items():
                walk(x, [*path, k])
        elif isinstance(node, list):
            for i, x in enumerate(node[:3]):
                walk(x, [*path, i])

    walk(v, [])
    where = data.draw(st.sampled_from(paths))
    new = data.draw(json_values)
    if not where:
        v = new
    else:
        node = v
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = new
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    state = d / "state"
    state.mkdir()
    checksummed = data.draw(st.booleans())
    if checksummed and isinstance(v, dict) and v:
        _write_checksummed(state, v)
    else:
        (state / STATE_FILE).write_text(json.dumps(v))
    t = _tailer(d, state)
    aside = (state / (STATE_FILE + ".corrupt")).exists()
    if not aside:
        _scrape_both(t)
        t.poll()  # and the resumed state can be committed again
    else:
        assert not (state / STATE_FILE).exists()


def test_unreadable_state_json_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_bytes(b"[" * 50_000)
    t = _start(state, tmp_path, caplog)
    _assert_moved_aside(state, t, caplog)


# --- the state dir itself --------------------------------------------------------

def _ro_mount(target: Path) -> list[str]:
    """argv prefix running a command in a mount namespace where target is read-only (root only)."""
    t = str(target)
    return ["unshare", "-m", "sh", "-c", f'mount --bind {t} {t} && mount -o remount,ro,bind {t} {t} && exec "$0" "$@"']


def test_serve_on_read_only_state_dir_exits_2_with_the_reason(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a read-only bind mount")
    state = tmp_path / "state"
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}
    r = subprocess.run([*_ro_mount(state), sys.executable, "-m", "exporter.cli", "serve", "--trace-file",
                        str(tmp_path / "trace.json"), "--state-dir", str(state), "--triton", "none", "--ebpf", "off",
                        "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60, env=env,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert f"state dir {state} is not writable: Read-only file system" in r.stderr


def test_full_disk_leaves_no_temp_file_fails_readyz_and_recovers(tmp_path: Path) -> None:
    """A tiny tmpfs as the state dir: filled, the commit fails (ENOSPC), /readyz says 503 with no
    temp file left behind; with space back, the next poll commits and /readyz is 200 again."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    state = tmp_path / "state"
    state.mkdir()
    tracegen.write_file(str(tmp_path / "trace.json.0"), tracegen.traces(300))
    r = subprocess.run(["unshare", "-m", "sh", "-c",
                        f"mount -t tmpfs -o size=64k tmpfs {state} && exec \"$0\" \"$@\"",
                        sys.executable, "-c", _FULL_DISK_SCRIPT, str(tmp_path), str(state)],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ready_while_full"] is False
    assert out["tmp_files_while_full"] == []
    assert out["errors"] >= 1
    assert out["traces_while_full"] == 0
    assert out["ready_after"] is True and out["traces_after"] == 300
    assert "cannot write state file" in r.stderr and "No space left on device" in r.stderr
    assert "cannot read trace file" not in r.stderr


_FULL_DISK_SCRIPT = r"""
import json, logging, os, sys, time
from exporter.config import Config
from exporter.source import ErrorCounts
from exporter.traces.source import TraceSource
logging.basicConfig(level=logging.INFO)
traces, state = sys.argv[1], sys.argv[2]
errors = ErrorCounts()
src = TraceSource(Config(trace_file=[os.path.join(traces, "trace.json")], state_dir=state,
                         trace_poll_seconds=0.05), errors)
filler = os.path.join(state, "filler")
with open(filler, "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"x" * 1024)
    except OSError:
        pass
src.start()
deadline = time.time() + 20
while not src.thread.first_poll_done.is_set() and time.time() < deadline:
    time.sleep(0.02)
out = {"ready_while_full": src.ready(),
       "tmp_files_while_full": [n for n in os.listdir(state) if ".tmp." in n],
       "errors": errors.get("traces", "state_write_failed"),
       "traces_while_full": sum(src.tailer.live.traces.values())}
os.unlink(filler)
deadline = time.time() + 20
while not src.ready() and time.time() < deadline:
    time.sleep(0.05)
out["ready_after"] = src.ready()
out["traces_after"] = sum(src.tailer.live.traces.values())
src.stop()
print(json.dumps(out))
"""


def test_a_state_of_the_version_before_checksums_is_read_and_rewritten(tmp_path: Path,
                                                                        good_state: dict[str, Any]) -> None:
    """An upgrade keeps the counts: version 1 states carried no checksum."""
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_text(json.dumps({**good_state, "version": 1}))
    t = _tailer(tmp_path, state)
    assert not (state / (STATE_FILE + ".corrupt")).exists()
    assert sum(t.live.traces.values()) == sum(n for _, n in good_state["aggregate"]["traces"]) > 0
    t.aggregator.commit(Change())  # the next commit writes the current version, checksummed
    assert json.loads((state / STATE_FILE).read_text())["version"] == STATE_VERSION
    assert "checksum" in json.loads((state / STATE_FILE).read_text())


def test_a_state_saved_under_other_pattern_labels_still_scrapes(tmp_path: Path, good_state: dict[str, Any]) -> None:
    """A state from a run without pattern labels, resumed under a `{pod}` pattern: its series keys
    are one value short of the label names. The scrape pairs them as client_python's add_metric
    does and never fails (found by the fuzz above)."""
    state = tmp_path / "state"
    state.mkdir()
    _write_checksummed(state, json.loads(json.dumps(good_state)))
    t = TraceTailer(TailerSettings([str(tmp_path / "{pod}" / "trace.json")], str(state),
                                   bounds_ns(list(DEFAULT_STAGE_BUCKETS))))
    assert t.label_names == ["pod"] and not (state / (STATE_FILE + ".corrupt")).exists()
    text, _ = _scrape_both(t)
    counted = sum(n for n in t.live.traces.values())
    assert counted > 0 and "inference_profiler_traces_total" in text
