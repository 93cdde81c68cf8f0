"""The trace state on disk: one snapshot file and the journal of the commits made since.

`StateStore` alone reads and writes the state directory. What it holds is a `State`: the
aggregate, each trace file's checkpoint entry, each file stream's assembly state, and each
producer's own state (the OTLP receiver's held spans and remembered ids), as named sections
of insertion-ordered JSON values that a `Change` edits at their ends. A commit is one
journal record of its `Change`, or now and then a whole new snapshot (see journal.py).

Format (version 3): the snapshot is `{"version", "files", "streams", "aggregate", "producers",
"checksum"}`; a journal record is `{"number", "aggregate"?, "files"?, "streams"?, "producers"?}`.
States of version 1 and 2 (with `feeds` and one-letter journal keys) are read and upgraded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .aggregate import TraceAggregate
from .assembly import StreamState, Trace
from .checkpoint import (
    STATE_VERSION,
    FileEntry,
    StateWriteError,
    atomic_write_json,
    check_state,
    move_aside,
    read_snapshot,
)
from .journal import Journal, JournalRead, apply_ordered, encode, ordered_delta, read_journal
from .legacy import upgrade_feeds, upgrade_record

log = logging.getLogger("traces")

STATE_FILE = "traces-state.json"
JOURNAL_FILE = "traces-state.journal"  # what each commit changed since the state file was written

Section = dict[str, Any]  # one producer's named, insertion-ordered values
Producers = dict[str, dict[str, Section]]


@dataclass
class SectionChange:
    """An edit of one producer section: drop the first n keys (or these keys), then set `add`
    at the end; `replace`: empty the section first."""

    drop: int | list[str] = 0
    add: list[tuple[str, Any]] = field(default_factory=list)
    replace: bool = False

    def apply(self, section: Section) -> None:
        if self.replace:
            section.clear()
        apply_ordered(section, self.drop, self.add)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"drop": self.drop, "add": [[k, v] for k, v in self.add]}
        if self.replace:
            out["replace"] = True
        return out

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> SectionChange:
        if not set(v) <= {"drop", "add", "replace"}:
            raise ValueError(f"section change keys {sorted(v)}")
        return cls(v["drop"], [(str(k), x) for k, x in v["add"]], bool(v.get("replace", False)))


@dataclass
class Change:
    """What one commit adds: counts, checkpoint entries (None: dropped), whole new stream
    states, edits of producer sections."""

    delta: TraceAggregate | None = None
    files: dict[str, FileEntry | None] = field(default_factory=dict)
    streams: dict[str, StreamState] = field(default_factory=dict)
    producers: dict[str, dict[str, SectionChange]] = field(default_factory=dict)


@dataclass
class State:
    """The committed state. The aggregate, files and streams are replaced by a commit, never
    changed in place (scrapes read them without a lock); producer sections are edited in
    place under the aggregator's lock, after the commit is durable."""

    aggregate: TraceAggregate
    files: dict[str, FileEntry] = field(default_factory=dict)
    streams: dict[str, StreamState] = field(default_factory=dict)
    producers: Producers = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "files": {p: asdict(e) for p, e in self.files.items()},
            "streams": {k: st.to_json() for k, st in self.streams.items()},
            "aggregate": self.aggregate.to_json(),
            "producers": self.producers,
        }


def change_record(old: State, change: Change) -> dict[str, Any]:
    """The journal record of a change made to old: just what it changed."""
    record: dict[str, Any] = {}
    if change.delta is not None:
        a = change.delta.to_delta_json()
        if a:
            record["aggregate"] = a
    if change.files:
        record["files"] = {p: None if e is None else asdict(e) for p, e in change.files.items()}
    streams = {b: _stream_delta(old.streams.get(b), st) for b, st in change.streams.items()}
    streams = {b: d for b, d in streams.items() if d or b not in old.streams}
    if streams:
        record["streams"] = streams
    producers = {name: {k: c.to_json() for k, c in sections.items()} for name, sections in change.producers.items()
                 if sections or name not in old.producers}
    if producers:
        record["producers"] = producers
    return record


def apply_record(rec: dict[str, Any], bounds: tuple[int, ...], state: State) -> None:
    """Replay one journal record on state, in place, as its commit changed it."""
    if not set(rec) <= {"number", "aggregate", "files", "streams", "producers"}:
        raise ValueError(f"journal record keys {sorted(rec)}")
    live = state.aggregate
    if "aggregate" in rec:  # written with the state file's buckets: a new bucket layout compacts first
        live.absorb(TraceAggregate.from_delta_json(rec["aggregate"], live.bounds_ns, bounds == live.bounds_ns))
    for p, e in rec.get("files", {}).items():
        if e is None:
            del state.files[p]
        else:
            state.files[p] = FileEntry(**e)
    for base, d in rec.get("streams", {}).items():
        s = state.streams.setdefault(str(base), StreamState())
        if "protocols" in d:
            apply_ordered(s.protocols, d["protocols"]["drop"], ((int(k), c) for k, c in d["protocols"]["add"]))
        if "pending" in d:
            traces = [(Trace.from_json(tj), float(since)) for tj, since in d["pending"]["add"]]
            apply_ordered(s.pending, d["pending"]["drop"], ((t.id, (t, since)) for t, since in traces))
    for name, sections in rec.get("producers", {}).items():
        mine = state.producers.setdefault(str(name), {})
        for key, c in sections.items():
            SectionChange.from_json(c).apply(mine.setdefault(str(key), {}))


def _stream_delta(old: StreamState | None, new: StreamState) -> dict[str, Any]:
    """What a commit changed in one stream: its protocol table grows at one end and is trimmed at
    the other, children wait and are released (see journal.ordered_delta)."""
    old = old or StreamState()
    out: dict[str, Any] = {}
    if new.protocols is not old.protocols:
        drop, add = ordered_delta(old.protocols, new.protocols)
        if drop or add:
            out["protocols"] = {"drop": drop, "add": [[k, c] for k, c in add]}
    if new.pending is not old.pending:
        pdrop, padd = ordered_delta(old.pending, new.pending)
        if pdrop or padd:
            out["pending"] = {"drop": pdrop, "add": [[t.to_json(), since] for _, (t, since) in padd]}
    return out


class StateStore:
    """The state directory: `load()` once, then `write()` each commit, `close()` at a clean stop."""

    # the journal may grow to the state file's size, and to this much however small the state is
    journal_min_bytes = 64 << 10

    def __init__(self, state_dir: str | None, bounds_ns: tuple[int, ...],
                 on_error: Callable[[str], None] | None = None) -> None:
        self.state_dir = state_dir  # None: in memory only (summary, tests)
        self.bounds_ns = bounds_ns
        self.on_error = on_error or (lambda reason: None)
        self.journal: Journal | None = None
        self.base = ""  # checksum of the state file on disk, which the journal builds on; "": write one
        self.snapshot_bytes = 0
        self.outdated = False  # the files on disk are of an earlier version or damaged: rewrite at close
        # what the state costs: writes and bytes, of journal records and of whole snapshots
        self.writes = {"journal": 0, "snapshot": 0}
        self.written_bytes = {"journal": 0, "snapshot": 0}

    @property
    def state_path(self) -> str | None:
        return os.path.join(self.state_dir, STATE_FILE) if self.state_dir else None

    @property
    def journal_path(self) -> str | None:
        return os.path.join(self.state_dir, JOURNAL_FILE) if self.state_dir else None

    # --- start-up ------------------------------------------------------------
    def load(self) -> State:
        """The state file plus the journal's good records on top of it (empty when there is none)."""
        empty = State(TraceAggregate(self.bounds_ns))
        path, jpath = self.state_path, self.journal_path
        if path is None or jpath is None:
            return empty
        self._probe_state_dir()
        self.journal = Journal(jpath)
        v, unusable, base = read_snapshot(path)
        if unusable:
            # never silently start from zero over a damaged state: keep it aside for a human
            move_aside(path, unusable, (jpath,))
            return empty
        if v is None:
            if os.path.exists(jpath):
                log.info("journal %s has no state file beside it; ignored", jpath)
            return empty
        read = read_journal(jpath, base)
        try:
            state, bounds, applied = self._replay(v, read)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
            move_aside(path, f"invalid content: {type(e).__name__}: {str(e)[:200]}", (jpath,))
            return empty
        same_buckets = bounds == self.bounds_ns
        if not same_buckets:
            log.warning("stage buckets changed since the last run; stage histograms start from zero")
        if read.stale:
            log.info("journal %s was written on top of an earlier state file, which holds its records; ignored",
                     jpath)
        if read.torn:
            log.warning("journal %s ends in a record cut off by a crash: that commit never happened (its file "
                        "is read again)", jpath)
        if read.damaged:
            self._set_journal_aside(jpath, read.damaged, applied)
        self.outdated = v["version"] != STATE_VERSION or read.upgraded or bool(read.damaged)
        # the next commit writes a whole state file first where the journal cannot simply go on: an earlier
        # version, other buckets, a cut record at the journal's end, a damaged journal
        if base and same_buckets and not read.torn and not read.damaged and not read.upgraded:
            try:
                if read.records:
                    self.journal.adopt(base, len(read.records))
                self.base, self.snapshot_bytes = base, os.path.getsize(path)
            except OSError:
                pass  # cannot append to it: the next commit writes a state file, which replaces it
        log.info("resumed from %s: %d files ingested before, %d traces counted (%d journal records)",
                 path, len(state.files), sum(state.aggregate.traces.values()), applied)
        return state

    def _from_snapshot(self, v: dict[str, Any]) -> tuple[State, tuple[int, ...], dict[str, Any] | None]:
        """(the state, its buckets, the feeds of a version-2 state, upgraded after its journal)."""
        if not {"version", "files", "streams", "aggregate"} <= set(v) <= {"version", "files", "streams", "aggregate",
                                                                          "feeds", "producers"}:
            raise ValueError(f"keys {sorted(v)}")
        legacy = None
        producers: Producers = {}
        if "producers" in v:
            producers = v["producers"]
            if not isinstance(producers, dict) or not all(
                    isinstance(p, dict) and all(isinstance(s, dict) for s in p.values()) for p in producers.values()):
                raise ValueError("producers is not a mapping of sections")
        elif v["version"] < STATE_VERSION:
            legacy = v.get("feeds", {})
            if not isinstance(legacy, dict):
                raise ValueError("feeds is not a mapping")
        agg = v["aggregate"]
        state = State(TraceAggregate.from_json(agg, self.bounds_ns),
                      {p: FileEntry(**e) for p, e in v["files"].items()},
                      {str(k): StreamState.from_json(sv) for k, sv in v["streams"].items()}, producers)
        return state, tuple(agg.get("bounds_ns", ())), legacy

    def _replay(self, v: dict[str, Any], read: JournalRead) -> tuple[State, tuple[int, ...], int]:
        """The snapshot with the journal's records applied in order. A record that does not apply is
        damage: the state is built again with the records before it, and it and the rest go aside.
        Returns (state, its buckets, how many records applied)."""
        n = len(read.records)
        while True:
            state, bounds, legacy = self._from_snapshot(v)
            done = 0
            try:
                for rec in read.records[:n]:
                    apply_record(upgrade_record(rec, legacy) if legacy is not None else rec, bounds, state)
                    done += 1
                if legacy is not None:
                    state.producers = upgrade_feeds(legacy)
                check_state(state.aggregate, state.files, state.streams)
                return state, bounds, n
            except (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
                if n == 0:
                    raise  # the snapshot itself
                bad = min(done, n - 1)  # the record that failed, or the last one when the end state is wrong
                read.damaged = read.damaged or f"record {bad + 1} does not apply: {type(e).__name__}: {str(e)[:200]}"
                n = bad  # it may have applied half: build the state again without it

    def _set_journal_aside(self, jpath: str, why: str, applied: int) -> None:
        """A damaged journal: the snapshot and the good records before the damage are kept, the
        journal goes aside for a human, and the next commit writes a whole state file."""
        try:
            os.replace(jpath, f"{jpath}.corrupt")
            where = f"moved to {jpath}.corrupt"
        except OSError as e:
            where = f"cannot be moved aside ({e.strerror or e})"
        log.error("journal %s damaged (%s); kept the state file and the %d good records before it, journal %s",
                  jpath, why, applied, where,
                  extra={"fields": {"reason": "journal_damaged", "records_kept": applied, "error": why}})
        self.on_error("journal_damaged")

    def _probe_state_dir(self) -> None:
        """Refuse to start on a state dir we cannot write: nothing would ever be committed."""
        assert self.state_dir is not None
        probe = os.path.join(self.state_dir, f".probe.{os.getpid()}")
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            with open(probe, "w") as f:
                f.write("ok")
            os.unlink(probe)
        except OSError as e:
            raise StateWriteError(f"state dir {self.state_dir} is not writable: {e.strerror or e}; "
                                  "pass --state-dir to a writable directory") from None

    # --- commits -------------------------------------------------------------
    def write(self, record: dict[str, Any], whole: Callable[[], dict[str, Any]]) -> None:
        """Append the record to the journal; write the whole state instead when there is no state
        file to build on or the journal would outgrow it (so a commit costs O(its change), amortised,
        and a start-up replays at most about one state file's worth of records, or 64 KiB).
        Raises StateWriteError with nothing written."""
        if self.state_path is None:
            return
        assert self.journal is not None
        record["number"] = self.journal.number(self.base)
        line = encode(record)
        if not self.base or self.journal.size + len(line) > max(self.snapshot_bytes, self.journal_min_bytes):
            self.compact(whole())
            return
        try:
            n = self.journal.append(line, self.base)
        except StateWriteError:
            self.base = ""  # whatever the journal holds now, the next commit replaces it with a state file
            raise
        self.writes["journal"] += 1
        self.written_bytes["journal"] += n

    def compact(self, state: dict[str, Any]) -> None:
        """A new state file, then no journal: a crash between the two leaves a journal whose base is
        the previous state file, which start-up ignores (its records are all in the new one)."""
        assert self.journal is not None and self.state_path is not None
        self.base, size = atomic_write_json(self.state_path, state)
        self.snapshot_bytes = size
        self.outdated = False
        self.journal.reset()
        self.writes["snapshot"] += 1
        self.written_bytes["snapshot"] += size

    def close(self, state: State, failing: bool) -> None:
        """At a clean stop: fold the journal into the state file, so the next start replays nothing."""
        if self.journal is None:
            return
        if (self.journal.records or self.outdated) and not failing:
            try:
                self.compact(state.to_json())
            except StateWriteError as e:
                log.warning("%s; the journal is kept and replayed at the next start", e)
        self.journal.close()
        self.base = ""  # a commit after this writes a state file, never a new journal over this one
