"""The state journal: a commit appends what it changed; the state file plus the journal load to
exactly what a whole-state write would have stored; a crash between a new state file and the
journal's reset, a cut last record, a damaged record in the middle; what a commit costs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.histogram import DEFAULT_STAGE_BUCKETS, Histogram
from exporter.otlp.decode import Decoded
from exporter.otlp.decode import decode as decode_payload
from exporter.otlp.receiver import OtlpIngest
from exporter.traces.aggregate import TraceAggregate
from exporter.traces.assembly import StreamState, Trace
from exporter.traces.check import state_checks
from exporter.traces.checkpoint import STATE_VERSION, FileEntry, read_snapshot
from exporter.traces.journal import apply_ordered, decode, encode, ordered_delta, read_journal
from exporter.traces.source import bounds_ns
from exporter.traces.store import Change, SectionChange
from exporter.traces.tailer import JOURNAL_FILE, STATE_FILE, TailerSettings, TraceTailer
from tests import tracegen
from tests.otlp_payloads import T0, request_spans
from tests.otlp_payloads import export_request as protobuf_request
from tests.test_hostile_traces import _scrape_both


def export_request(spans: list[Any]) -> Decoded:
    """The spans of one request as the receiver's decoder hands them to the ingest."""
    return decode_payload(protobuf_request(spans).SerializeToString(), "application/x-protobuf", None)[0]


ROOT = Path(__file__).resolve().parent.parent
B = bounds_ns(list(DEFAULT_STAGE_BUCKETS))


def whole(t: TraceTailer) -> str:
    """What the whole-state write stored for the tailer's committed state, byte for byte."""
    return json.dumps(t.aggregator.whole(), separators=(",", ":"))


def _tailer(root: Path, bounds: tuple[int, ...] = B, **kw: Any) -> TraceTailer:
    kw.setdefault("settle_seconds", 0.0)
    return TraceTailer(TailerSettings([str(root / "{pod}" / "trace.json")], str(root / "state"), bounds, **kw))


def counts(t: TraceTailer) -> dict[str, Any]:
    """The aggregate as scrapes see it: series in any order, without the time of the last ingest."""
    v = t.live.to_json()
    v.pop("last_ingest")
    for name in ("histograms", "traces", "responses", "timeline"):
        v[name] = {tuple(row[0]): row[1:] for row in v[name]}
    return v


class Files:
    """Rolling trace files of two pods, cut so ensemble children wait for their parent in the next file."""

    def __init__(self, root: Path, n_traces: int = 600, per_file: int = 37) -> None:
        self.root = root
        self.objs = list(tracegen.traces(n_traces, ensemble_every=3, models=("m1", "m2", "m3"), streaming_every=7))
        self.per_file = per_file
        self.written = 0
        self.index = {"a": 0, "b": 0}
        for pod in self.index:
            (root / pod).mkdir(parents=True, exist_ok=True)

    def write(self, n: int = 1) -> list[Path]:
        out = []
        for _ in range(n):
            pod = "ab"[self.written % 2]
            chunk = self.objs[self.written * self.per_file:(self.written + 1) * self.per_file]
            path = self.root / pod / f"trace.json.{self.index[pod]}"
            tracegen.write_file(str(path), chunk)
            self.index[pod] += 1
            self.written += 1
            out.append(path)
        return out


def test_replay_equals_the_whole_state_write_for_every_kind_of_commit(tmp_path: Path) -> None:
    files = Files(tmp_path)
    t = _tailer(tmp_path, child_hold_seconds=0.3)
    t.aggregator.store.journal_min_bytes = 0  # a new state file whenever the journal outgrows it: loads right after one too
    otlp = OtlpIngest(t.aggregator, 60.0)

    def check() -> None:
        assert whole(_tailer(tmp_path, child_hold_seconds=0.3)) == whole(t)

    for _ in range(6):  # files, each one commit; children wait across files
        files.write()
        assert t.poll() == 1
        check()
    assert any(s.pending for s in t.streams.values()), "no child waits for its parent: the test lost its point"
    touched = str(files.root / "a" / "trace.json.0")
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))  # touched, same content: refreshed in place
    files.write()
    t.poll()
    assert t.entries[touched].mtime_ns == os.stat(touched).st_mtime_ns
    check()
    (tmp_path / "b" / "trace.json.0").unlink()  # an ingested file deleted: its entry goes
    t.poll()
    check()
    (tmp_path / "a" / "trace.json.9").write_text("")  # an empty file, counted as failed
    t.poll()
    assert t.live.files["failed"] == 1
    check()
    tracegen.write_file(str(tmp_path / "b" / "trace.json.9"), files.objs[-40:])
    with open(tmp_path / "b" / "trace.json.9", "rb+") as f:  # cut: no closing ']'
        f.truncate(os.path.getsize(tmp_path / "b" / "trace.json.9") - 5)
    t.poll()
    assert t.live.rejected["truncated_file"] == 1
    check()
    for i in range(3):  # OTLP batches: the feed's state goes with the aggregate
        otlp.ingest(export_request(request_spans(T0 + i * 10**9, ensemble="ens" if i == 1 else None,
                                                 request_id=f"r{i}")))
        check()
    assert t.aggregator.producer("otlp")["seen_keys"]
    time.sleep(0.35)
    files.write()
    t.poll()  # the file, then the children that waited too long, counted without their parent
    assert not any(s.pending for s in t.streams.values())
    check()
    assert t.state_writes["journal"] > t.state_writes["snapshot"] >= 2, t.state_writes


def test_a_journal_is_resumed_appended_to_and_folded_in_at_close(tmp_path: Path) -> None:
    files = Files(tmp_path, per_file=20)
    t = _tailer(tmp_path)
    for _ in range(3):
        files.write()
        t.poll()
    assert t.journal is not None and t.journal.records == 2  # the first commit wrote the state file
    t2 = _tailer(tmp_path)
    assert t2.journal is not None and t2.journal.records == 2
    files.write()
    t2.poll()
    assert t2.state_writes == {"journal": 1, "snapshot": 0}
    assert read_journal(str(tmp_path / "state" / JOURNAL_FILE), t2.aggregator.store.base).records[-1]["number"] == 3
    assert whole(_tailer(tmp_path)) == whole(t2)
    t2.close()  # a clean stop: one state file, nothing to replay
    assert sorted(os.listdir(tmp_path / "state")) == [STATE_FILE]
    t3 = _tailer(tmp_path)
    assert whole(t3) == whole(t2) and t3.journal is not None and t3.journal.records == 0


# --- what replaying produces, for any sequence of changes ----------------------------

@st.composite
def mapping_change(draw: st.DrawFn) -> tuple[dict[int, int], dict[int, int]]:
    """An old mapping and a new one made from it the ways the state's mappings change (and any way)."""
    old = dict.fromkeys(draw(st.lists(st.integers(0, 40), unique=True, max_size=25)), 0)
    for k in old:
        old[k] = draw(st.integers(0, 2))
    new = dict(old)
    for op in draw(st.lists(st.sampled_from(["append", "update", "delete", "trim", "readd", "shuffle"]),
                            max_size=6)):
        keys = list(new)
        if op == "append":
            new.update(dict.fromkeys(draw(st.lists(st.integers(41, 80), max_size=5)), draw(st.integers(0, 2))))
        elif op == "update" and keys:
            new[draw(st.sampled_from(keys))] = draw(st.integers(0, 2))
        elif op == "delete" and keys:
            del new[draw(st.sampled_from(keys))]
        elif op == "trim":
            new = dict(list(new.items())[draw(st.integers(0, len(keys))):])
        elif op == "readd" and keys:
            k = draw(st.sampled_from(keys))
            v = new.pop(k)
            new[k] = v
        elif op == "shuffle":
            new = dict(draw(st.permutations(list(new.items()))))
    return old, new


@given(mapping_change())
def test_ordered_delta_replays_to_the_same_mapping_in_the_same_order(change: tuple[dict[int, int],
                                                                                   dict[int, int]]) -> None:
    old, new = change
    drop, add = ordered_delta(old, new)
    replayed = dict(old)
    apply_ordered(replayed, json.loads(json.dumps(drop)), add)
    assert list(replayed.items()) == list(new.items())


def test_the_usual_changes_are_written_small() -> None:
    old = {i: i % 3 for i in range(10_000)}
    new = dict(list(old.items())[5_000:])  # trimmed from its oldest
    new.update({i: 1 for i in range(10_000, 10_050)})
    assert ordered_delta(old, new) == (5_000, [(i, 1) for i in range(10_000, 10_050)])
    pending = OrderedDict((i, (Trace(i), 0.0)) for i in range(100))
    released = OrderedDict(pending)
    del released[50]  # a child's parent came
    released[100] = (Trace(100), 1.0)
    assert ordered_delta(pending, released) == ([50], [(100, (Trace(100), 1.0))])


@st.composite
def commits(draw: st.DrawFn) -> list[tuple[str, Any]]:
    keys = [("m1", "1", "http"), ("m2", "1", "grpc"), ("m\u00e9", "2", "none")]
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["agg", "files", "stream", "feed", "nothing", "reload"]))
        if kind == "agg":
            d = TraceAggregate(B)
            for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
                n = draw(st.integers(0, 5))
                d.traces[key] += n
                d.models.add(key[:2])
                buckets = [0] * (len(B) + 1)
                buckets[draw(st.integers(0, len(B)))] = n
                d.histograms[(*key, draw(st.sampled_from(["queue", "compute"])))] = Histogram(B, buckets, 7 * n, n)
                d.responses[key] = Histogram(tuple(1 << i for i in range(13)), [n] + [0] * 13, n, n)
                d.timeline[(*key, "queue")] += 3 * n
            d.files[draw(st.sampled_from(["parsed", "failed"]))] += draw(st.integers(0, 2))
            d.rejected[draw(st.sampled_from(["model_cap", "negative_span"]))] += draw(st.integers(0, 2))
            d.custom_stages |= set(draw(st.lists(st.sampled_from(["custom_a", "custom_b"]), max_size=1)))
            d.last_ingest = draw(st.floats(0, 2e9))
            ops.append(("agg", d))
        elif kind == "files":
            ops.append(("files", {f"/t/{draw(st.integers(0, 6))}": draw(st.none() | st.builds(
                FileEntry, st.integers(0, 9), st.integers(0, 99), st.integers(0, 10**18), st.text("ab", max_size=3),
                st.integers(0, 99), st.booleans())) for _ in range(draw(st.integers(1, 3)))}))
        elif kind == "stream":
            ops.append(("stream", (draw(st.sampled_from(["s1", "s2"])), draw(mapping_change()),
                                   draw(st.lists(st.integers(0, 30), unique=True, max_size=6)))))
        elif kind == "feed":  # the held spans replaced; the chunks of span ids trimmed and appended to, or any
            ops.append(("feed", (draw(st.sampled_from(["otlp", "other"])), draw(st.text(max_size=3)),
                                 draw(st.integers(0, 4)), draw(st.lists(st.text("xyz", max_size=2), max_size=3)),
                                 draw(st.booleans()))))
        else:
            ops.append((kind, None))
    return ops


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=commits(), data=st.data())
def test_any_sequence_of_commits_loads_as_the_live_state(tmp_path: Path, ops: list[tuple[str, Any]],
                                                         data: st.DataObject) -> None:
    root = tmp_path / str(data.draw(st.integers(0, 10**9)))
    min_bytes = data.draw(st.sampled_from([0, 400, 64 << 10]))  # new state files: always, now and then, never
    t = _tailer(root)
    t.aggregator.store.journal_min_bytes = min_bytes
    for kind, arg in ops:
        if kind == "agg":
            t.aggregator.commit(Change(arg))
        elif kind == "files":
            t.aggregator.commit(Change(files=arg))
        elif kind == "stream":
            base, (old_protocols, new_protocols), pending_ids = arg
            s = t.streams.get(base, StreamState()).copy()
            # protocols: from what the stream holds now to a changed copy of it
            s.protocols = dict(new_protocols) if set(s.protocols) == set(old_protocols) else dict(old_protocols)
            s.pending = OrderedDict((i, s.pending.get(i) or (Trace(i, "m", "1", None, 1, {"REQUEST_START": i}), 0.5))
                                    for i in pending_ids)
            t.aggregator.commit(Change(streams={base: s}))
        elif kind == "feed":  # a section replaced; another trimmed and appended to, or reordered
            name, held, trim, chunks, shuffle = arg
            seen = t.aggregator.producer(name).get("seen", {})
            n = len(seen)
            add = [(f"{n + i}.{c}", c) for i, c in enumerate(chunks)]
            change = SectionChange(list(seen)[::-1], [(k, seen[k]) for k in list(seen)[::-1]] + add) if shuffle \
                else SectionChange(min(trim, n), add)
            t.aggregator.commit(Change(producers={name: {"held": SectionChange(0, [("x", held)], replace=True),
                                                         "seen": change}}))
        elif kind == "nothing":
            t.aggregator.commit(Change())
        else:
            t = _tailer(root)
            t.aggregator.store.journal_min_bytes = min_bytes
    assert whole(_tailer(root)) == whole(t)


# --- crashes and damage --------------------------------------------------------------

_CRASH_AT_COMPACTION = r"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from exporter.traces.journal import Journal
from tests.test_state_journal import _tailer
root = Path(sys.argv[1])
t = _tailer(root)
assert t.journal is not None and t.journal.records > 0
t.aggregator.store.journal_min_bytes = 0
Journal.reset = lambda self: os.kill(os.getpid(), signal.SIGKILL)  # the new state file is written: die
while True:
    t.poll()
"""


def test_killed_between_the_new_state_file_and_the_journal_reset_counts_nothing_twice(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = Files(tmp_path, per_file=40)
    t = _tailer(tmp_path)
    for _ in range(3):
        files.write()
        t.poll()
    assert t.journal is not None and t.journal.records == 2
    files.write(12)  # enough change for the journal to outgrow the state file
    r = subprocess.run([sys.executable, "-c", _CRASH_AT_COMPACTION, str(tmp_path), str(ROOT)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    state = tmp_path / "state"
    _, _, base = read_snapshot(str(state / STATE_FILE))
    journal = read_journal(str(state / JOURNAL_FILE), base)
    assert not journal.damaged and journal.stale, "the old journal is still there, on top of the old state file"
    stale_records = [json.loads(line)["r"] for line in (state / JOURNAL_FILE).read_bytes().splitlines()[1:]]
    assert len(stale_records) >= 2 and all("aggregate" in rec for rec in stale_records)
    with caplog.at_level(logging.INFO, logger="traces"):
        t2 = _tailer(tmp_path)
    assert any("written on top of an earlier state file" in r.getMessage() for r in caplog.records)
    assert t2.journal is not None and t2.journal.records == 0
    ingested_before = len(t2.entries)
    assert 3 < ingested_before < 15
    t2.poll()
    one_shot = TraceTailer(TailerSettings([str(tmp_path / "{pod}" / "trace.json")], None, B, settle_seconds=0.0))
    one_shot.poll()
    assert counts(t2) == counts(one_shot) and len(t2.entries) == len(one_shot.entries) == 15
    assert whole(_tailer(tmp_path)) == whole(t2)


def _journal_with_records(tmp_path: Path, n: int) -> tuple[TraceTailer, Path, Files]:
    files = Files(tmp_path, per_file=30)
    t = _tailer(tmp_path)
    for _ in range(n + 1):
        files.write()
        t.poll()
    assert t.journal is not None and t.journal.records == n, t.state_writes
    return t, tmp_path / "state" / JOURNAL_FILE, files


@pytest.mark.parametrize("cut", ["half_a_record", "all_but_the_newline", "checksum_wrong"])
def test_a_cut_last_record_is_a_commit_that_never_happened(tmp_path: Path, cut: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    t, journal, files = _journal_with_records(tmp_path, 3)
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1] + b"\n"
    if cut == "half_a_record":
        journal.write_bytes(data[:-len(last) // 2])
    elif cut == "all_but_the_newline":
        journal.write_bytes(data[:-1])
    else:
        journal.write_bytes(data[:-len(last)] + last[:6] + (b"1" if last[6:7] == b"0" else b"0") + last[7:])
    with caplog.at_level(logging.WARNING, logger="traces"):
        t2 = _tailer(tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "cut off by a crash" in lines[0], lines
    assert len(t2.entries) == len(t.entries) - 1 and t2.journal is not None and t2.journal.records == 0
    assert t2.poll() == 1  # the file of the cut commit is read again
    assert counts(t2) == counts(t) and t2.state_writes == {"journal": 0, "snapshot": 1}
    assert not journal.exists(), "the next commit wrote a whole state file and dropped the journal"
    files.write()
    t2.poll()
    assert whole(_tailer(tmp_path)) == whole(t2)


@pytest.mark.parametrize(("damage", "good"), [("flipped_byte", 1), ("duplicated_record", 2), ("garbage_line", 1),
                                              ("deleted_record", 1), ("swapped_records", 1), ("header", 0)])
def test_a_damaged_record_keeps_the_state_file_and_the_records_before_it(tmp_path: Path, damage: str, good: int,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """One bad line in the middle of the journal: the snapshot and the `good` records before it are
    kept, the journal goes aside, the files of the lost records are read again: nothing lost, nothing
    counted twice."""
    t, journal, _ = _journal_with_records(tmp_path, 4)
    whole_lines = journal.read_bytes().splitlines(keepends=True)
    lines = list(whole_lines)
    if damage == "flipped_byte":
        lines[2] = lines[2][:60] + (b"1" if lines[2][60:61] != b"1" else b"2") + lines[2][61:]
    elif damage == "duplicated_record":
        lines.insert(3, lines[2])
    elif damage == "garbage_line":
        lines.insert(2, b"\x00" * 40 + b"\n")
    elif damage == "deleted_record":
        del lines[2]
    elif damage == "swapped_records":
        lines[2], lines[3] = lines[3], lines[2]
    else:
        lines[0] = encode({"journal": 99, "base": "x"})
    journal.write_bytes(b"".join(lines))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="traces"):
        t2 = _tailer(tmp_path)
    state = tmp_path / "state"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"the {good} good records" in errors[0] and "\n" not in errors[0], errors
    assert sorted(os.listdir(state)) == [JOURNAL_FILE + ".corrupt", STATE_FILE]
    # what the snapshot and the good records hold, loaded from an undamaged journal of just those
    (tmp_path / "prefix" / "state").mkdir(parents=True)
    (tmp_path / "prefix" / "state" / STATE_FILE).write_bytes((state / STATE_FILE).read_bytes())
    (tmp_path / "prefix" / "state" / JOURNAL_FILE).write_bytes(b"".join(whole_lines[:good + 1]))
    prefix = _tailer(tmp_path / "prefix")
    assert counts(t2) == counts(prefix) and t2.entries == prefix.entries
    assert len(t2.entries) == 1 + good and sum(t2.live.traces.values()) > 0
    assert t2.poll() == 4 - good  # the files of the records set aside, read again
    assert counts(t2) == counts(t) and t2.entries.keys() == t.entries.keys()
    assert whole(_tailer(tmp_path)) == whole(t2)
    _scrape_both(t2)


def test_a_journal_of_newlines_is_judged_at_its_first_line_without_reading_it_whole(tmp_path: Path) -> None:
    t, journal, _ = _journal_with_records(tmp_path, 2)
    with open(journal, "ab") as f:
        f.write(b"\n" * (50 << 20))
    # the child's peak from VmHWM (its own address space since exec), not ru_maxrss, which Linux carries
    # over fork and exec from this test process, however large the rest of the suite made it
    code = ("import json, sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path;"
            "from tests.test_state_journal import _tailer; t = _tailer(Path(sys.argv[1]));"
            "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'));"
            "print(json.dumps([len(t.entries), hwm]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(ROOT)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    entries, maxrss_kib = json.loads(r.stdout)
    assert entries == len(t.entries) == 3  # the snapshot and both records kept
    assert maxrss_kib < 200 << 10, maxrss_kib  # the 50 MB of newlines never read whole


def test_a_journal_beside_a_version_1_state_or_none_is_not_replayed(tmp_path: Path) -> None:
    """Journals build on a checksummed state file: beside one of version 1 (before checksums), or
    beside none (deleted by hand to start over), a journal is left over and ignored."""
    t, journal, files = _journal_with_records(tmp_path, 2)
    state = tmp_path / "state" / STATE_FILE
    v = json.loads(state.read_text())
    del v["checksum"]
    state.write_text(json.dumps({**v, "version": 1}))
    t1 = _tailer(tmp_path)
    assert sum(t1.live.traces.values()) < sum(t.live.traces.values()) and len(t1.entries) == 1
    assert t1.poll() == 2 and counts(t1) == counts(t)  # the journal's two files read again, once
    assert t1.state_writes == {"journal": 1, "snapshot": 1}  # a new state file first, then the journal
    assert json.loads(state.read_text())["version"] == STATE_VERSION
    assert len(read_journal(str(journal), t1.aggregator.store.base).records) == 1
    files.write()
    t1.poll()
    state.unlink()
    t2 = _tailer(tmp_path)
    assert not t2.entries and sum(t2.live.traces.values()) == 0
    assert t2.poll() == 4 and t2.state_writes == {"journal": 3, "snapshot": 1}
    assert whole(_tailer(tmp_path)) == whole(t2)


def test_check_reads_the_journal_as_serve_does_and_moves_nothing(tmp_path: Path) -> None:
    _, journal, _ = _journal_with_records(tmp_path, 2)
    state = str(tmp_path / "state")
    assert [(r.status, "resumes" in r.detail) for r in state_checks(state)] == [("pass", True)]
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"x" + lines[1] + lines[2])
    [r] = state_checks(state)
    assert r.status == "warn" and "line 2 of 3 is damaged" in r.detail
    assert sorted(os.listdir(state)) == [JOURNAL_FILE, STATE_FILE]


def test_new_stage_buckets_write_a_whole_state_file_before_the_journal_goes_on(tmp_path: Path) -> None:
    t, _, files = _journal_with_records(tmp_path, 2)
    other = B[:10]
    t2 = _tailer(tmp_path, other)
    assert not t2.live.histograms and t2.live.traces == t.live.traces
    files.write()
    t2.poll()
    assert t2.state_writes == {"journal": 0, "snapshot": 1}
    files.write()
    t2.poll()
    assert t2.state_writes == {"journal": 1, "snapshot": 1}
    assert whole(_tailer(tmp_path, other)) == whole(t2)


def test_a_delta_as_a_record_holds_it_is_the_same_aggregate(tmp_path: Path) -> None:
    files = Files(tmp_path, per_file=200)
    files.write(2)
    t = TraceTailer(TailerSettings([str(tmp_path / "{pod}" / "trace.json")], None, B, settle_seconds=0.0))
    t.poll()
    v = t.live.to_delta_json()
    assert len(json.dumps(v)) * 2 < len(json.dumps(t.live.to_json()))
    back = TraceAggregate.from_delta_json(json.loads(json.dumps(v)), B, True)
    assert json.dumps(back.to_json()) == json.dumps(t.live.to_json())
    assert not TraceAggregate.from_delta_json(v, B[:5], False).histograms and back.histograms
    for bad in ({**v, "t": [[-1, 3]]}, {**v, "h": [[0, "queue", [-1], [1], 1, 1]]}, {**v, "t": [[len(v["b"]), 1]]}):
        with pytest.raises(IndexError):
            TraceAggregate.from_delta_json(bad, B, True)


def test_records_are_lines_of_json_with_their_own_checksum() -> None:
    rec = {"n": 1, "f": {"/x\n\u00e9": None}}
    line = encode(rec)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    assert json.loads(line)["r"] == rec and decode(line) == rec
    assert decode(line[:-1]) is None and decode(line.replace(b'"n":1', b'"n":2')) is None


# --- what a commit costs -------------------------------------------------------------

def test_a_commit_writes_its_change_not_the_whole_state(tmp_path: Path) -> None:
    """300 files ingested: the next file's commit appends a record of a few KB, the old
    write rewrote every file's checkpoint; the counters say what was written."""
    root = tmp_path
    (root / "a").mkdir()
    objs = list(tracegen.traces(300 * 3, models=("m1", "m2")))
    for i in range(300):
        tracegen.write_file(str(root / "a" / f"trace.json.{i}"), objs[i * 3:(i + 1) * 3])
    t = _tailer(root)
    t.poll()  # one commit per file
    assert t.journal is not None
    t.aggregator.store.journal_min_bytes = 1 << 30  # this commit is a journal record, whatever the sizes
    before = dict(t.state_written_bytes)
    size0 = t.journal.size
    tracegen.write_file(str(root / "a" / "trace.json.300"), list(tracegen.traces(3, start_id=10**6)))
    assert t.poll() == 1
    record = t.state_written_bytes["journal"] - before["journal"]
    snapshot = len(whole(t))
    assert t.state_written_bytes["snapshot"] == before["snapshot"] and record == t.journal.size - size0
    assert record * 10 < snapshot, (record, snapshot)
    rec = read_journal(str(root / "state" / JOURNAL_FILE), t.aggregator.store.base).records[-1]
    assert list(rec["files"]) == [str(root / "a" / "trace.json.300")]
    # the commits of the 300 files: every one a journal record or (when the journal outgrew it) a state file
    assert sum(t.state_writes.values()) == 301 and t.state_writes["snapshot"] < 10
    assert os.path.getsize(root / "state" / STATE_FILE) == t.aggregator.store.snapshot_bytes
    text, _ = _scrape_both(t)
    for kind in ("journal", "snapshot"):
        assert f'inference_profiler_state_writes_total{{kind="{kind}"}} {float(t.state_writes[kind])}' in text
        assert (f'inference_profiler_state_written_bytes_total{{kind="{kind}"}} '
                f'{float(t.state_written_bytes[kind])}') in text


# --- a journal write that fails at run time ------------------------------------------

_FULL_DISK_JOURNAL = r"""
import json, logging, os, sys
sys.path.insert(0, sys.argv[3])
from exporter.config import Config
from exporter.source import ErrorCounts
from exporter.traces.checkpoint import StateWriteError
from exporter.traces.source import TraceSource
from tests import tracegen
logging.basicConfig(level=logging.INFO)
traces, state = sys.argv[1], sys.argv[2]
errors = ErrorCounts()
src = TraceSource(Config(trace_file=[os.path.join(traces, "trace.json")], state_dir=state,
                         trace_settle_seconds=0.0), errors)
t = src.tailer
src.thread.first_poll_done.set()  # polled here, not by its thread
for i in range(3):
    tracegen.write_file(os.path.join(traces, f"trace.json.{i}"), tracegen.traces(10, start_id=i * 100 + 1))
    t.poll()
journal = os.path.join(state, "traces-state.journal")
size = os.path.getsize(journal)
out = {"writes_before": dict(t.state_writes)}
# eight models: a record of several pages, more than a page's rest can take
tracegen.write_file(os.path.join(traces, "trace.json.3"),
                    tracegen.traces(40, start_id=301, models=tuple(f"m{i}" for i in range(8))))
filler = os.path.join(state, "filler")
with open(filler, "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"x" * 256)
    except OSError:
        pass
try:
    t.poll()
    out["raised"] = False
except StateWriteError as e:
    out["raised"] = str(e)
out.update(ready_while_full=src.ready(), errors=errors.get("traces", "state_write_failed"),
           journal_unchanged=os.path.getsize(journal) == size,
           tmp_files=[n for n in os.listdir(state) if ".tmp." in n], traces_while_full=sum(t.live.traces.values()))
os.unlink(filler)
t.poll()
out.update(ready_after=src.ready(), traces_after=sum(t.live.traces.values()), writes_after=dict(t.state_writes))
print(json.dumps(out))
"""


def test_a_journal_append_on_a_full_disk_fails_readyz_keeps_the_journal_whole_and_recovers(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    state = tmp_path / "state"
    state.mkdir()
    traces = tmp_path / "traces"
    traces.mkdir()
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=256k tmpfs {state} && exec \"$0\" \"$@\"",
                        sys.executable, "-c", _FULL_DISK_JOURNAL, str(traces), str(state), str(ROOT)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["writes_before"] == {"journal": 2, "snapshot": 1}
    assert "cannot write state file" in out["raised"] and "No space left on device" in out["raised"]
    assert out["ready_while_full"] is False and out["errors"] == 1 and out["tmp_files"] == []
    assert out["journal_unchanged"] is True and out["traces_while_full"] == 30
    # back: the commit that failed is redone as a whole state file, which replaces the journal
    assert out["ready_after"] is True and out["traces_after"] == 70
    assert out["writes_after"] == {"journal": 2, "snapshot": 2}


# --- the OTLP feed's state -------------------------------------------------------------

def test_otlp_commits_write_the_span_ids_they_add_not_all_remembered(tmp_path: Path) -> None:
    """The receiver remembers the last 32,768 span ids, in chunks: a payload's record holds its
    new chunk and how many old ones went, and the window survives a restart exactly."""
    t = TraceTailer(TailerSettings([], str(tmp_path / "state"), B))
    t.aggregator.store.journal_min_bytes = 1 << 30  # all of it in the journal, to look at the records
    otlp = OtlpIngest(t.aggregator, 60.0, seen_spans=3000)
    payloads = [export_request([s for r in range(40) for s in request_spans(T0 + (i * 40 + r) * 10**6,
                                                                               request_id=f"r{i}-{r}")])
                for i in range(30)]
    for p in payloads:
        otlp.ingest(p)
    assert len(otlp.seen) >= 3000 and len(otlp.seen) < 3000 + 1024
    records = read_journal(str(tmp_path / "state" / JOURNAL_FILE), t.aggregator.store.base).records
    assert len(records) == 29
    assert all(len(json.dumps(r["producers"])) < 3000 for r in records), "a record holds the whole id window"
    assert any(r["producers"]["otlp"]["seen_keys"]["drop"] > 0 for r in records), "old chunks never dropped"
    t2 = TraceTailer(TailerSettings([], str(tmp_path / "state"), B))
    assert whole(t2) == whole(t)
    again = OtlpIngest(t2.aggregator, 60.0, seen_spans=3000)
    assert again.seen == otlp.seen and again.chunks == otlp.chunks
    assert again.ingest(payloads[-1])[0] == 0 and again.spans["duplicate"] == 120  # remembered: not twice
    assert again.ingest(payloads[0])[0] == 120  # forgotten long ago: counted again


def test_otlp_state_written_before_chunks_is_read(tmp_path: Path) -> None:
    import base64

    from exporter.traces.checkpoint import atomic_write_json

    ids = [os.urandom(8) for _ in range(2500)]
    (tmp_path / "state").mkdir()
    atomic_write_json(str(tmp_path / "state" / STATE_FILE), {  # a version-2 state: span ids alone, one string
        "version": 2, "files": {}, "streams": {}, "aggregate": TraceAggregate(B).to_json(),
        "feeds": {"otlp": {"held": [], "seen": base64.b64encode(b"".join(ids)).decode()}}})
    otlp = OtlpIngest(TraceTailer(TailerSettings([], str(tmp_path / "state"), B)).aggregator, 60.0)
    assert otlp.legacy == set(ids) and not otlp.seen
    spans = request_spans(T0)
    for s, i in zip(spans, ids[-3:], strict=True):
        s.span_id = i  # resent from before the upgrade: still recognised
    assert otlp.ingest(export_request(spans))[0] == 0 and otlp.spans["duplicate"] == 3


def test_a_version_2_journal_of_histograms_loads_as_the_values_it_replaced(tmp_path: Path) -> None:
    """The journal of the version before small batches were journaled as values held each POST's
    histograms: it loads to the same counts, and the next commit writes a whole state file."""
    state = tmp_path / "state"
    t = TraceTailer(TailerSettings([], str(state), B))
    t.aggregator.store.journal_min_bytes = 1 << 30
    otlp = OtlpIngest(t.aggregator, 60.0)
    for i in range(6):
        otlp.ingest(export_request(request_spans(T0 + i * 10**9, protocol=("http", "grpc")[i % 2], responses=1 + i,
                                                 ensemble="ens" if i == 3 else None)))
    before = counts(t)
    path = state / JOURNAL_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    old = [decode(line) for line in lines]
    assert old[0] == {"journal": 3, "base": t.aggregator.store.base}
    assert all("v" in r["aggregate"] and "h" not in r["aggregate"] for r in old[1:] if r is not None)
    v2 = [encode({"journal": 2, "base": t.aggregator.store.base})]
    for rec in old[1:]:
        assert rec is not None
        binned = TraceAggregate(B).merged(TraceAggregate.from_delta_json(rec["aggregate"], B, True))
        v2.append(encode({**rec, "aggregate": binned.to_delta_json()}))  # histograms, as version 2 wrote
    path.write_bytes(b"".join(v2))
    t2 = TraceTailer(TailerSettings([], str(state), B))
    assert counts(t2) == before and t2.aggregator.store.outdated
    OtlpIngest(t2.aggregator, 60.0).ingest(export_request(request_spans(T0 + 10**10)))
    assert t2.state_writes == {"journal": 0, "snapshot": 1}  # the next commit rewrote it whole
