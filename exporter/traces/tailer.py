"""Tailing rolling trace files: what to ingest (discovery), what may go (retention), and
ingesting it: each file's batches and checkpoint handed to the aggregator as one commit."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .aggregate import TraceAggregate
from .aggregator import TraceAggregator
from .assembly import StreamState
from .checkpoint import FileEntry, head_hash
from .discovery import TracePattern, label_names
from .journal import Journal
from .pipeline import CHILD_HOLD_SECONDS, WINDOW, file_batches, released
from .records import ReadResult
from .store import JOURNAL_FILE, STATE_FILE, Change, StateStore

__all__ = ["JOURNAL_FILE", "STATE_FILE", "TailerSettings", "TraceTailer"]

log = logging.getLogger("traces")


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
    """The trace file producer: `poll()` ingests whatever is new, one aggregator commit per file.
    Without an aggregator it makes its own over settings.state_dir (summary, tests)."""

    def __init__(self, settings: TailerSettings, on_error: Callable[[str], None] | None = None,
                 aggregator: TraceAggregator | None = None) -> None:
        self.s = settings
        self.patterns = [TracePattern(p) for p in settings.patterns]
        self.on_error = on_error or (lambda reason: None)
        self.aggregator = aggregator or TraceAggregator(
            StateStore(settings.state_dir, settings.bounds_ns, self.on_error),
            label_names(self.patterns), settings.max_models, self.on_error)
        self.label_names = self.aggregator.label_names
        self.stream_labels: dict[str, list[str]] = {}  # base path -> its pattern's label values
        self.lock = self.aggregator.lock  # one poll at a time, and no other commit inside it
        self._waiting_logged: set[str] = set()
        self._outside_logged: set[str] = set()
        self.disk_bytes: dict[tuple[str, ...], int] = {}  # label values -> bytes of trace files on disk
        self._touched: dict[str, FileEntry] = {}  # entries refreshed in place (same content): with the next commit

    # --- the committed state, as the aggregator holds it ------------------------
    @property
    def live(self) -> TraceAggregate:
        return self.aggregator.live

    @property
    def entries(self) -> dict[str, FileEntry]:
        return self.aggregator.state.files

    @property
    def streams(self) -> dict[str, StreamState]:
        return self.aggregator.state.streams

    @property
    def state_error(self) -> str | None:
        return self.aggregator.state_error

    @property
    def journal(self) -> Journal | None:
        return self.aggregator.store.journal

    @property
    def state_writes(self) -> dict[str, int]:
        return self.aggregator.store.writes

    @property
    def state_written_bytes(self) -> dict[str, int]:
        return self.aggregator.store.written_bytes

    def close(self) -> None:
        self.aggregator.close()

    def _commit(self, change: Change) -> None:
        """One commit of this producer's change, with the entries refreshed in place since the last."""
        change.files = {**self._touched, **change.files}
        self.aggregator.commit(change)
        self._touched.clear()

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
                self._commit(Change(files={p: None for p in stale}))
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
        entry = self._touched.get(path) or self.entries.get(path)
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
                self._touched[path] = FileEntry(st.st_ino, st.st_size, st.st_mtime_ns, head, entry.offset, True)
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
            entry = self._touched.get(p) or self.entries.get(p)
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
        change = self.aggregator.change()
        assert change.delta is not None
        change.delta.files["failed"] += 1
        change.delta.reject("empty_file")
        change.files[path] = FileEntry(st.st_ino, 0, st.st_mtime_ns, "", 0, False)
        self._commit(change)
        log.warning("trace file %s has stayed empty for %.0fs; counted as failed", path, self.s.settle_seconds,
                    extra={"fields": {"file": path, "reason": "empty_file"}})
        self.on_error("empty_file")
        return 1

    @staticmethod
    def _looks_complete(path: str, st: os.stat_result) -> bool:
        with open(path, "rb") as f:
            f.seek(max(0, st.st_size - 64))
            return f.read().rstrip(b" \t\r\n").endswith(b"]")

    def _ingest(self, base: str, plan: _Plan, labels: list[str], partial: bool) -> int:
        t0 = time.monotonic()
        change = self.aggregator.change()
        delta = change.delta
        assert delta is not None
        stream = self.streams.get(base, StreamState()).copy()
        result = ReadResult()
        with open(plan.path, "rb") as fp:
            self.aggregator.observe(change, file_batches(
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
        change.files[plan.path] = entry
        change.streams[base] = stream
        self._commit(change)
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
        change = self.aggregator.change()
        for base, s in self.streams.items():
            if s.pending:
                s2 = s.copy()
                labels = self.stream_labels.get(base, [""] * len(self.label_names))
                self.aggregator.observe(change, released(s2, now, self.s.child_hold_seconds), labels)
                change.streams[base] = s2
        self._commit(change)
