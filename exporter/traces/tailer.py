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
from .assembly import StreamState
from .checkpoint import (
    STATE_VERSION,
    FileEntry,
    StateWriteError,
    atomic_write_json,
    entries_from_json,
    entries_to_json,
    head_hash,
    load_json,
    move_aside,
)
from .discovery import TracePattern
from .pipeline import CHILD_HOLD_SECONDS, WINDOW, Batch, file_batches, released
from .records import ReadResult

log = logging.getLogger("traces")

STATE_FILE = "traces-state.json"


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
        self._load()

    # --- state -------------------------------------------------------------
    @property
    def state_path(self) -> str | None:
        return os.path.join(self.s.state_dir, STATE_FILE) if self.s.state_dir else None

    def _load(self) -> None:
        path = self.state_path
        if path is None:
            return
        self._probe_state_dir()
        v = load_json(path)
        if v is None:
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
            _check_loaded(live, entries, streams)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
            move_aside(path, f"invalid content: {type(e).__name__}: {str(e)[:200]}")
            return
        if tuple(agg.get("bounds_ns", ())) != self.s.bounds_ns:
            log.warning("stage buckets changed since the last run; stage histograms start from zero")
        self.live, self.entries, self.streams = live, entries, streams
        self.feeds = feeds
        log.info("resumed from %s: %d files ingested before, %d traces counted",
                 path, len(self.entries), sum(self.live.traces.values()))

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

    def _commit(self, agg: TraceAggregate, entries: dict[str, FileEntry],
                streams: dict[str, StreamState], feeds: dict[str, Any] | None = None) -> None:
        feeds = self.feeds if feeds is None else feeds
        path = self.state_path
        if path is not None:
            state: dict[str, Any] = {
                "version": STATE_VERSION,
                "files": entries_to_json(entries),
                "streams": {k: s.to_json() for k, s in streams.items()},
                "aggregate": agg.to_json(),
                "feeds": feeds,
            }
            try:
                atomic_write_json(path, state)
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
        self.live, self.entries, self.streams, self.feeds = agg, entries, streams, feeds

    def observe_feed(self, name: str, observe: Callable[[TraceAggregate, TraceAggregate], Any]) -> None:
        """Count batches another feed assembled (the OTLP receiver) and commit them with
        that feed's state: `observe(delta, live)` fills the delta and returns the feed's new
        state, stored under `name`. Raises (nothing committed) when the state cannot be written."""
        with self.lock:
            delta = TraceAggregate(self.s.bounds_ns)
            state = observe(delta, self.live)
            self._commit(self.live.merged(delta), self.entries, self.streams, {**self.feeds, name: state})

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
                entries = {p: e for p, e in self.entries.items() if p not in stale}
                self._commit(self.live, entries, self.streams)
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
        entries = dict(self.entries)
        entries[path] = FileEntry(st.st_ino, 0, st.st_mtime_ns, "", 0, False)
        self._commit(self.live.merged(delta), entries, self.streams)
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
        entries = dict(self.entries)
        entries[plan.path] = FileEntry(plan.st.st_ino, plan.st.st_size, plan.st.st_mtime_ns, plan.head,
                                       result.end_offset if partial else plan.st.st_size, not partial)
        streams = dict(self.streams)
        streams[base] = stream
        self._commit(self.live.merged(delta), entries, streams)
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
        streams = dict(self.streams)
        for base, s in self.streams.items():
            if s.pending:
                s2 = s.copy()
                labels = self.stream_labels.get(base, [""] * len(self.label_names))
                self._observe(delta, released(s2, now, self.s.child_hold_seconds), labels)
                streams[base] = s2
        self._commit(self.live.merged(delta), self.entries, streams)


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
