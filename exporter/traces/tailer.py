"""Tailing rolling trace files: what to ingest, ingesting it, committing it exactly once."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..stages import COLUMN
from .aggregate import RESPONSE_BOUNDS, TraceAggregate
from .assembly import StreamState, Trace
from .checkpoint import (
    STATE_VERSION,
    FileEntry,
    StateWriteError,
    atomic_write_json,
    entries_from_json,
    entries_to_json,
    head_hash,
    move_aside,
    read_snapshot,
)
from .discovery import TracePattern
from .journal import Journal, apply_ordered, encode, ordered_delta, read_journal
from .pipeline import CHILD_HOLD_SECONDS, WINDOW, Batch, file_batches, released
from .records import ReadResult

log = logging.getLogger("traces")

STATE_FILE = "traces-state.json"
JOURNAL_FILE = "traces-state.journal"  # what each commit changed since the state file was written


@dataclass
class TailerSettings:
    patterns: list[str]
    state_dir: str | None  # None: in-memory only (summary, tests)
    bounds_ns: tuple[int, ...]
    max_models: int = 100
    settle_seconds: float = 10.0
    delete_ingested: bool = False
    keep_bytes: int = 0  # per trace file set: past it the oldest ingested files are deleted (0: no limit)
    window: int = WINDOW
    child_hold_seconds: float = CHILD_HOLD_SECONDS


@dataclass
class _Plan:
    path: str
    start: int
    st: os.stat_result
    head: str
    restart: bool  # index 0 rewritten: Triton restarted, trace ids start again


class TraceTailer:
    """Owns the live aggregate; `poll()` ingests whatever is new and commits it."""

    # the journal may grow to the state file's size, and to this much however small the state is
    journal_min_bytes = 64 << 10

    def __init__(self, settings: TailerSettings, on_error: Callable[[str], None] | None = None) -> None:
        self.s = settings
        self.patterns = [TracePattern(p) for p in settings.patterns]
        self.label_names: list[str] = []
        for p in self.patterns:
            for n in p.label_names:
                if n not in self.label_names:
                    self.label_names.append(n)
        self.on_error = on_error or (lambda reason: None)
        self.live = TraceAggregate(settings.bounds_ns)
        self.entries: dict[str, FileEntry] = {}
        self.streams: dict[str, StreamState] = {}
        self.stream_labels: dict[str, list[str]] = {}  # base path -> its pattern's label values
        self.lock = threading.Lock()  # one poll at a time
        self.feeds: dict[str, Any] = {}  # state of other feeds (OTLP), committed with ours
        self._waiting_logged: set[str] = set()
        self._outside_logged: set[str] = set()
        self.state_error: str | None = None  # why the last commit failed; None when it succeeded
        self.disk_bytes: dict[tuple[str, ...], int] = {}  # label values -> bytes of trace files on disk
        self.journal: Journal | None = None
        self._base = ""  # checksum of the state file on disk, which the journal builds on; "": write one
        self._snapshot_bytes = 0
        self._touched: set[str] = set()  # entries refreshed in place (same content): go with the next commit
        # what the state costs: writes and bytes, of journal records and of whole snapshots
        self.state_writes = {"journal": 0, "snapshot": 0}
        self.state_written_bytes = {"journal": 0, "snapshot": 0}
        self._load()

    # --- state -------------------------------------------------------------
    @property
    def state_path(self) -> str | None:
        return os.path.join(self.s.state_dir, STATE_FILE) if self.s.state_dir else None

    @property
    def journal_path(self) -> str | None:
        return os.path.join(self.s.state_dir, JOURNAL_FILE) if self.s.state_dir else None

    def _load(self) -> None:
        """The state file, plus the journal's records on top of it."""
        path, jpath = self.state_path, self.journal_path
        if path is None or jpath is None:
            return
        self._probe_state_dir()
        self.journal = Journal(jpath)
        v, unusable, base = read_snapshot(path)
        if unusable:
            # never silently start from zero over a damaged state: keep it aside for a human
            move_aside(path, unusable, (jpath,))
            return
        if v is None:
            if os.path.exists(jpath):
                log.info("journal %s has no state file beside it; ignored", jpath)
            return
        read = read_journal(jpath, base)
        if read.damaged:
            move_aside(path, read.damaged, (jpath,))
            return
        try:
            if not {"version", "files", "streams", "aggregate"} <= set(v) <= {"version", "files", "streams",
                                                                             "aggregate", "feeds"}:
                raise ValueError(f"keys {sorted(v)}")
            feeds = v.get("feeds", {})
            if not isinstance(feeds, dict):
                raise ValueError("feeds is not a mapping")
            agg = v["aggregate"]
            live = TraceAggregate.from_json(agg, self.s.bounds_ns)
            entries = entries_from_json(v["files"])
            streams = {str(k): StreamState.from_json(sv) for k, sv in v["streams"].items()}
            for rec in read.records:
                self._replay(rec, agg.get("bounds_ns", []), live, entries, streams, feeds)
            _check_loaded(live, entries, streams)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
            move_aside(path, f"invalid content: {type(e).__name__}: {str(e)[:200]}", (jpath,))
            return
        same_buckets = tuple(agg.get("bounds_ns", ())) == self.s.bounds_ns
        if not same_buckets:
            log.warning("stage buckets changed since the last run; stage histograms start from zero")
        if read.stale:
            log.info("journal %s was written on top of an earlier state file, which holds its records; ignored",
                     jpath)
        if read.torn:
            log.warning("journal %s ends in a record cut off by a crash: that commit never happened (its file "
                        "is read again)", jpath)
        self.live, self.entries, self.streams = live, entries, streams
        self.feeds = feeds
        # the next commit writes a whole state file first where the journal cannot simply go on: a version-1
        # state (no checksum to build on), other buckets, a cut record at the journal's end
        if base and same_buckets and not read.torn:
            try:
                if read.records:
                    self.journal.adopt(base, len(read.records))
                self._base, self._snapshot_bytes = base, os.path.getsize(path)
            except OSError:
                pass  # cannot append to it: the next commit writes a state file, which replaces it
        log.info("resumed from %s: %d files ingested before, %d traces counted (%d journal records)",
                 path, len(self.entries), sum(self.live.traces.values()), len(read.records))

    @staticmethod
    def _replay(rec: dict[str, Any], bounds: list[int], live: TraceAggregate, entries: dict[str, FileEntry],
                streams: dict[str, StreamState], feeds: dict[str, Any]) -> None:
        """Apply one journal record in place, as its commit changed the state."""
        if not set(rec) <= {"n", "a", "f", "s", "feeds"}:
            raise ValueError(f"journal record keys {sorted(rec)}")
        if "a" in rec:  # written with the state file's buckets: a new bucket layout compacts first
            live.absorb(TraceAggregate.from_delta_json(rec["a"], live.bounds_ns, tuple(bounds) == live.bounds_ns))
        for p, e in rec.get("f", {}).items():
            if e is None:
                del entries[p]
            else:
                entries[p] = FileEntry(*e)
        for base, d in rec.get("s", {}).items():
            s = streams.setdefault(str(base), StreamState())
            if "p" in d:
                drop, ids, codes = d["p"]
                apply_ordered(s.protocols, drop, zip(ids, codes, strict=True))
            if "q" in d:
                drop, items = d["q"]
                traces = [(Trace.from_json(tj), float(since)) for tj, since in items]
                apply_ordered(s.pending, drop, ((t.id, (t, since)) for t, since in traces))
        for name, d in rec.get("feeds", {}).items():
            if "=" in d:
                feeds[name] = d["="]
                continue
            state = feeds[name]
            for k, v in d.get("k", {}).items():
                state[k] = v
            for k, (drop, tail) in d.get("l", {}).items():
                state[k] = state[k][drop:] + tail

    def _probe_state_dir(self) -> None:
        """Refuse to start on a state dir we cannot write: nothing would ever be committed."""
        assert self.s.state_dir is not None
        probe = os.path.join(self.s.state_dir, f".probe.{os.getpid()}")
        try:
            os.makedirs(self.s.state_dir, exist_ok=True)
            with open(probe, "w") as f:
                f.write("ok")
            os.unlink(probe)
        except OSError as e:
            raise StateWriteError(f"state dir {self.s.state_dir} is not writable: {e.strerror or e}; "
                                  "pass --state-dir to a writable directory") from None

    def _commit(self, delta: TraceAggregate | None = None, files: dict[str, FileEntry | None] | None = None,
                streams: dict[str, StreamState] | None = None, feed: tuple[str, Any] | None = None) -> None:
        """Make one change durable, then visible: the aggregate grows by delta, files' checkpoint
        entries are set (None: dropped), streams replaced, one feed's state replaced. On disk it is
        one journal record of just that change (or, now and then, a whole new state file)."""
        agg = self.live.merged(delta) if delta is not None else self.live
        changed = {p: e for p, e in {**{p: self.entries.get(p) for p in self._touched}, **(files or {})}.items()
                   if e is not None or p in self.entries}
        entries = self.entries
        if changed:
            entries = dict(self.entries)
            for p, e in changed.items():
                if e is None:
                    del entries[p]
                else:
                    entries[p] = e
        new_streams = {**self.streams, **streams} if streams else self.streams
        feeds = {**self.feeds, feed[0]: feed[1]} if feed is not None else self.feeds
        path = self.state_path
        if path is not None:
            record: dict[str, Any] = {}
            if delta is not None:
                a = delta.to_delta_json()
                if a:
                    record["a"] = a
            if changed:
                record["f"] = {p: None if e is None else [e.inode, e.size, e.mtime_ns, e.head, e.offset, e.complete]
                               for p, e in changed.items()}
            if streams:
                s = {b: _stream_delta(self.streams.get(b), st) for b, st in streams.items()}
                s = {b: d for b, d in s.items() if d or b not in self.streams}
                if s:
                    record["s"] = s
            if feed is not None:
                fd = _feed_delta(self.feeds.get(feed[0]), feed[1])
                if fd or feed[0] not in self.feeds:
                    record["feeds"] = {feed[0]: fd}
            try:
                self._write(record, lambda: {
                    "version": STATE_VERSION,
                    "files": entries_to_json(entries),
                    "streams": {k: st.to_json() for k, st in new_streams.items()},
                    "aggregate": agg.to_json(),
                    "feeds": feeds,
                })
            except StateWriteError as e:
                if self.state_error is None:
                    log.error("%s; trace counts are held back until it can be written", e,
                              extra={"fields": {"reason": "state_write_failed", "error": str(e)}})
                self.state_error = str(e)
                self.on_error("state_write_failed")
                raise
            if self.state_error is not None:
                log.info("state file %s written again; trace ingestion resumed", path)
                self.state_error = None
        # only after the state is on disk may a scrape see the new counts
        self.live, self.entries, self.streams, self.feeds = agg, entries, new_streams, feeds
        self._touched.clear()

    def _write(self, record: dict[str, Any], whole: Callable[[], dict[str, Any]]) -> None:
        """Append the record to the journal; write the whole state instead when there is no state
        file to build on or the journal would outgrow it (so a commit costs O(its change), amortised,
        and a start-up replays at most about one state file's worth of records, or 64 KiB)."""
        assert self.journal is not None and self.state_path is not None
        record["n"] = self.journal.number(self._base)
        line = encode(record)
        if not self._base or self.journal.size + len(line) > max(self._snapshot_bytes, self.journal_min_bytes):
            self._compact(whole())
            return
        try:
            n = self.journal.append(line, self._base)
        except StateWriteError:
            self._base = ""  # whatever the journal holds now, the next commit replaces it with a state file
            raise
        self.state_writes["journal"] += 1
        self.state_written_bytes["journal"] += n

    def _compact(self, state: dict[str, Any]) -> None:
        """A new state file, then no journal: a crash between the two leaves a journal whose base is
        the previous state file, which start-up ignores (its records are all in the new one)."""
        assert self.journal is not None and self.state_path is not None
        self._base, size = atomic_write_json(self.state_path, state)
        self._snapshot_bytes = size
        self.journal.reset()
        self.state_writes["snapshot"] += 1
        self.state_written_bytes["snapshot"] += size

    def close(self) -> None:
        """At a clean stop: fold the journal into the state file, so the next start replays nothing."""
        if self.journal is None or not self.lock.acquire(timeout=1.0):
            return  # a poll still running past the stop timeout: the journal stays, and is replayed
        try:
            if self.journal.records and self.state_error is None:
                try:
                    self._compact({"version": STATE_VERSION, "files": entries_to_json(self.entries),
                                   "streams": {k: st.to_json() for k, st in self.streams.items()},
                                   "aggregate": self.live.to_json(), "feeds": self.feeds})
                except StateWriteError as e:
                    log.warning("%s; the journal is kept and replayed at the next start", e)
            self.journal.close()
            self._base = ""  # a commit after this writes a state file, never a new journal over this one
        finally:
            self.lock.release()

    def observe_feed(self, name: str, observe: Callable[[TraceAggregate, TraceAggregate], Any]) -> None:
        """Count batches another feed assembled (the OTLP receiver) and commit them with
        that feed's state: `observe(delta, live)` fills the delta and returns the feed's new
        state, stored under `name`. Raises (nothing committed) when the state cannot be written."""
        with self.lock:
            delta = TraceAggregate(self.s.bounds_ns)
            state = observe(delta, self.live)
            self._commit(delta, feed=(name, state))

    # --- one scan ----------------------------------------------------------
    def poll(self) -> int:
        """Ingest every new or rewritten complete file; returns the number of files ingested."""
        with self.lock:
            n = 0
            seen: set[str] = set()
            # every file set seen in this run keeps its series, at 0 once retention emptied it
            disk: dict[tuple[str, ...], int] = {tuple(v): 0 for v in self.stream_labels.values()}
            if not self.label_names:
                disk[()] = 0
            for pat in self.patterns:
                for base, files in sorted(pat.expand().items()):
                    labels = pat.labels(base)
                    label_values = [labels.get(n_, "") for n_ in self.label_names]
                    self.stream_labels[base] = label_values
                    for order, path in files:
                        seen.add(path)
                        if not self._inside(pat, path):
                            continue
                        try:
                            n += self._consider(base, order, path, label_values)
                        except OSError as e:
                            self.on_error("read_failed")
                            log.warning("cannot read trace file %s: %s", path, e.strerror or e,
                                        extra={"fields": {"file": path, "reason": "read_failed",
                                                          "error": str(e.strerror or e)}})
                    key = tuple(label_values)
                    disk[key] = disk.get(key, 0) + self._retain([p for _, p in files if self._inside(pat, p)])
            self.disk_bytes = disk
            self._expire_pending()
            stale = [p for p in self.entries if p not in seen and not os.path.exists(p)]
            if stale:
                self._commit(files={p: None for p in stale})
            return n

    def _inside(self, pat: TracePattern, path: str) -> bool:
        """A symlink may not lead out of its pattern's directory (the exporter often runs as root)."""
        if not os.path.islink(path):
            return True
        real = os.path.realpath(path)
        allowed = os.path.realpath(os.path.dirname(path))
        if os.path.dirname(real) == allowed:
            return True
        if path not in self._outside_logged:
            self._outside_logged.add(path)
            log.warning("trace file %s is a symlink to %s, outside its directory; not read", path, real)
            self.on_error("symlink_outside")
        return False

    def _consider(self, base: str, order: int, path: str, labels: list[str]) -> int:
        st = os.stat(path)
        entry = self.entries.get(path)
        if entry is not None and entry.same_stat(st) and entry.complete:
            return 0
        if entry is not None and entry.same_stat(st) and not entry.complete:
            return 0  # a truncated file ingested as far as it was valid; nothing new
        head = head_hash(path, st.st_size) if st.st_size else ""
        start = 0
        restart = False
        if entry is not None:
            grown_same = head == entry.head and st.st_ino == entry.inode and st.st_size >= entry.offset
            if grown_same and entry.complete and st.st_size == entry.size:
                self.entries[path] = FileEntry(st.st_ino, st.st_size, st.st_mtime_ns, head, entry.offset, True)
                self._touched.add(path)
                return 0  # touched, same content
            if grown_same and not entry.complete:
                start = entry.offset
            else:
                restart = order == 0
        elif order == 0 and base in self.streams:
            restart = True
        if st.st_size == 0 or not self._looks_complete(path, st):
            if time.time() - st.st_mtime < self.s.settle_seconds:
                if path not in self._waiting_logged:
                    log.debug("waiting for %s to be complete", path)
                    self._waiting_logged.add(path)
                return 0
            if entry is not None and entry.offset >= st.st_size:
                return 0
            if st.st_size == 0:
                return self._empty_file(path, st)
            return self._ingest(base, _Plan(path, start, st, head, restart), labels, partial=True)
        return self._ingest(base, _Plan(path, start, st, head, restart), labels, partial=False)

    def _retain(self, paths: list[str]) -> int:
        """Bytes of one trace file set left on disk; past keep_bytes its oldest ingested files are deleted."""
        sizes: list[tuple[int, str, os.stat_result]] = []
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                continue  # deleted since the scan
            sizes.append((st.st_mtime_ns, p, st))
        total = sum(st.st_size for _, _, st in sizes)
        if not self.s.keep_bytes:
            return total
        for _, p, st in sorted(sizes, key=lambda x: x[:2]):
            if total <= self.s.keep_bytes:
                break
            entry = self.entries.get(p)
            if entry is None or not entry.complete or not entry.same_stat(st):
                continue  # never a file whose traces are not all counted yet
            try:
                os.unlink(p)
            except OSError as e:
                log.warning("cannot delete ingested %s (--trace-keep-bytes): %s", p, e.strerror)
                continue
            total -= st.st_size
        return total

    def _empty_file(self, path: str, st: os.stat_result) -> int:
        """A file left empty: counted as failed once, ingested if it ever gets content."""
        delta = TraceAggregate(self.s.bounds_ns)
        delta.files["failed"] += 1
        delta.reject("empty_file")
        self._commit(delta, files={path: FileEntry(st.st_ino, 0, st.st_mtime_ns, "", 0, False)})
        log.warning("trace file %s has stayed empty for %.0fs; counted as failed", path, self.s.settle_seconds,
                    extra={"fields": {"file": path, "reason": "empty_file"}})
        self.on_error("empty_file")
        return 1

    @staticmethod
    def _looks_complete(path: str, st: os.stat_result) -> bool:
        with open(path, "rb") as f:
            f.seek(max(0, st.st_size - 64))
            return f.read().rstrip(b" \t\r\n").endswith(b"]")

    def _observe(self, delta: TraceAggregate, batches: Iterator[Batch], labels: list[str]) -> None:
        for batch, codes in batches:
            delta.observe_batch(batch, codes, labels, self.s.max_models, self.live)

    def _ingest(self, base: str, plan: _Plan, labels: list[str], partial: bool) -> int:
        t0 = time.monotonic()
        delta = TraceAggregate(self.s.bounds_ns)
        stream = self.streams.get(base, StreamState()).copy()
        result = ReadResult()
        with open(plan.path, "rb") as fp:
            self._observe(delta, file_batches(
                fp, result, stream, delta.reject, time.time(), start=plan.start, salvage_tail=partial,
                restart=plan.restart, window=self.s.window, hold_seconds=self.s.child_hold_seconds), labels)
        if not result.complete and not partial:
            if time.time() - plan.st.st_mtime < self.s.settle_seconds:
                return 0  # the ']' seen was not the array's end: still being written, retry
            return self._ingest(base, plan, labels, partial=True)  # it has settled so: truncated
        st = os.stat(plan.path)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != (plan.st.st_ino, plan.st.st_size, plan.st.st_mtime_ns):
            return 0  # changed while we read it: read it again next poll
        ok = result.complete and result.array
        if plan.start == 0 or ok:
            delta.files["parsed" if ok else "failed"] += 1
        if partial:
            delta.reject("truncated_file")
            log.warning("trace file %s ends without its closing ']' and has not changed for %.0fs; "
                        "ingested %d objects up to byte %d", plan.path, self.s.settle_seconds,
                        result.objects, result.end_offset,
                        extra={"fields": {"file": plan.path, "reason": "truncated_file", "objects": result.objects,
                                          "end_offset": result.end_offset}})
            self.on_error("truncated_file")
        elif not result.array:
            log.warning("trace file %s is not a JSON array; its records were read one by one", plan.path)
        delta.last_ingest = time.time()
        entry = FileEntry(plan.st.st_ino, plan.st.st_size, plan.st.st_mtime_ns, plan.head,
                          result.end_offset if partial else plan.st.st_size, not partial)
        self._commit(delta, files={plan.path: entry}, streams={base: stream})
        traces = sum(delta.traces.values())
        rejected = sum(delta.rejected.values())
        took = time.monotonic() - t0
        log.info("ingested %s: %d traces%s in %.2fs", plan.path, traces,
                 f", {rejected} records rejected ({', '.join(f'{k}={v}' for k, v in sorted(delta.rejected.items()))})"
                 if rejected else "", took,
                 extra={"fields": {"file": plan.path, "traces": traces, "rejected": dict(delta.rejected),
                                   "seconds": round(took, 3)}})
        if self.s.delete_ingested and not partial:
            try:
                os.unlink(plan.path)
            except OSError as e:
                log.warning("cannot delete ingested %s: %s", plan.path, e.strerror)
        return 1

    def _expire_pending(self) -> None:
        now = time.time()
        if not any(now - since >= self.s.child_hold_seconds
                   for s in self.streams.values() for _, since in s.pending.values()):
            return
        delta = TraceAggregate(self.s.bounds_ns)
        streams: dict[str, StreamState] = {}
        for base, s in self.streams.items():
            if s.pending:
                s2 = s.copy()
                labels = self.stream_labels.get(base, [""] * len(self.label_names))
                self._observe(delta, released(s2, now, self.s.child_hold_seconds), labels)
                streams[base] = s2
        self._commit(delta, streams=streams)


def _stream_delta(old: StreamState | None, new: StreamState) -> dict[str, Any]:
    """What a commit changed in one stream: its protocol table grows at one end and is trimmed at
    the other, children wait and are released (see journal.ordered_delta)."""
    old = old or StreamState()
    out: dict[str, Any] = {}
    if new.protocols is not old.protocols:
        drop, add = ordered_delta(old.protocols, new.protocols)
        if drop or add:
            out["p"] = [drop, [k for k, _ in add], [c for _, c in add]]
    if new.pending is not old.pending:
        pdrop, padd = ordered_delta(old.pending, new.pending)
        if pdrop or padd:
            out["q"] = [pdrop, [[t.to_json(), since] for _, (t, since) in padd]]
    return out


def _feed_delta(old: Any, new: Any) -> dict[str, Any]:
    """A feed's new state as a change of its old one: the keys whose value changed, where a list
    only lost items at its front and gained some at its end (the OTLP receiver's chunks of span ids)
    just that; {"=": new} when it is not a mapping with the same keys."""
    if not (isinstance(old, dict) and isinstance(new, dict) and list(old) == list(new)):
        return {"=": new}
    values: dict[str, Any] = {}
    tails: dict[str, Any] = {}
    for k, v in new.items():
        o = old[k]
        if o is v or o == v:
            continue
        if isinstance(o, list) and isinstance(v, list) and v:
            d = o.index(v[0]) if v[0] in o else len(o)
            if o[d:] == v[:len(o) - d]:
                tails[k] = [d, v[len(o) - d:]]
                continue
        values[k] = v
    out: dict[str, Any] = {}
    if values:
        out["k"] = values
    if tails:
        out["l"] = tails
    return out


def _check_loaded(agg: TraceAggregate, entries: dict[str, FileEntry], streams: dict[str, StreamState]) -> None:
    """What from_json let through must still be what scrapes and polls rely on; ValueError if not."""

    def label(v: object) -> None:
        if not isinstance(v, str):
            raise ValueError(f"label {v!r} is not a string")
        v.encode("utf-8")  # a lone surrogate would fail every scrape

    def count(v: object) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"count {v!r} is not a non-negative integer")

    for hists, n_buckets in ((agg.histograms, len(agg.bounds_ns) + 1), (agg.responses, len(RESPONSE_BOUNDS) + 1)):
        for key, h in hists.items():
            for x in key:
                label(x)
            if len(h.counts) != n_buckets:
                raise ValueError(f"histogram {key} has {len(h.counts)} buckets, not {n_buckets}")
            for c in h.counts:
                count(c)
            count(h.count)
            if not isinstance(h.total, int) or sum(h.counts) != h.count:
                raise ValueError(f"histogram {key} counts do not add up")
    for key, n in agg.timeline.items():
        for x in key:
            label(x)
        count(n)
    for key, n in agg.traces.items():
        for x in key:
            label(x)
        count(n)
    for counter in (agg.files, agg.rejected):
        for k, n in counter.items():
            label(k)
            count(n)
    for pair in agg.models:
        for x in pair:
            label(x)
    for stage in agg.custom_stages:
        label(stage)
    if not math.isfinite(agg.last_ingest):
        raise ValueError("last_ingest is not finite")
    for p, e in entries.items():
        label(p)
        for number in (e.inode, e.size, e.mtime_ns, e.offset):
            count(number)
        if not isinstance(e.head, str) or not isinstance(e.complete, bool):
            raise ValueError(f"file entry {p} has wrong types")
    for s in streams.values():
        for tid, code in s.protocols.items():
            count(tid)
            if code not in (0, 1, 2) or isinstance(code, bool):
                raise ValueError(f"protocol code {code!r}")
        for t, since in s.pending.values():
            for text in (t.model, t.version, t.request_id):
                if text is not None:
                    label(text)
            if t.parent_id is not None:
                count(t.parent_id)
            for name, ns in t.stamps.items():
                if name not in COLUMN:
                    raise ValueError(f"pending trace timestamp {name!r}")
                count(ns)
            for name, ns in t.extra:
                label(name)
                count(ns)
            if not math.isfinite(since):
                raise ValueError("pending since is not finite")
