"""The one owner of the trace counts: sources hand it batches and their own state's change,
it commits them durably, then publishes the new state for scrapes.

Producers (the trace file tailer, the OTLP receiver) never commit through each other: each
builds a `Change` (a delta of counts from its batches, its checkpoint or section edits) and
calls `commit()`. The lock makes one commit at a time; `state` is replaced whole by each
commit and never changed in place, so a scrape reads `live` without the lock.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .aggregate import TraceAggregate
from .checkpoint import FileEntry, StateWriteError
from .pipeline import Batch
from .small import SMALL_ROWS, observe_small
from .store import Change, Section, State, StateStore, change_record
from .wire_counts import count_settled

if TYPE_CHECKING:
    from ..wire.held import Joiner

log = logging.getLogger("traces")


class TraceAggregator:
    """Counts batches into the live aggregate, one durable commit at a time."""

    def __init__(self, store: StateStore, label_names: list[str], max_models: int = 100,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.label_names = label_names  # the file patterns' labels; every series carries them
        self.max_models = max_models
        self.on_error = on_error or (lambda reason: None)
        self.lock = threading.RLock()  # one commit at a time; a producer may hold it across its own reads
        self.state: State = store.load()
        self.state_error: str | None = None  # why the last commit failed; None when it succeeded
        self.wire: Joiner | None = None  # the socket join, set before the producers start where it runs

    @property
    def live(self) -> TraceAggregate:
        """The committed aggregate: what scrapes show."""
        return self.state.aggregate

    @property
    def bounds_ns(self) -> tuple[int, ...]:
        return self.store.bounds_ns

    def change(self) -> Change:
        return Change(TraceAggregate(self.store.bounds_ns))

    def observe(self, change: Change, batches: Iterable[Batch], labels: list[str], wall_clock: bool = False) -> None:
        """Count batches into the change's delta (the model cap is judged against the live state:
        hold the lock from here to the commit). `wall_clock`: the batches' stamps are Unix time
        (OTLP), moved onto CLOCK_MONOTONIC for the socket join."""
        assert change.delta is not None
        joins = None
        if self.wire is not None:
            offset = time.time_ns() - time.monotonic_ns() if wall_clock else 0
            joins = self.wire.round(change, self._held(), offset)
        for batch, codes in batches:
            if joins is None and len(batch) <= SMALL_ROWS:  # numpy's cost per call would dominate
                observe_small(change.delta, batch, codes, labels, self.max_models, self.state.aggregate)
            else:
                change.delta.observe_batch(batch, codes, labels, self.max_models, self.state.aggregate,
                                           joins.batch if joins is not None else None)
        if joins is not None:
            count_settled(change.delta, joins.settled)

    def _held(self) -> Section:
        from ..wire.held import PRODUCER, SECTION

        return self.producer(PRODUCER).get(SECTION, {})

    def settle_wire(self) -> int:
        """The socket join's requests held from earlier batches: those joined or due now are counted,
        in a commit of their own (the daemon's tick, when no batch comes). Returns how many."""
        with self.lock:
            if self.wire is None or not self._held():
                return 0
            change = self.change()
            joins = self.wire.round(change, self._held())
            n = joins.settle()
            if n:
                assert change.delta is not None
                count_settled(change.delta, joins.settled)
                self.commit(change)
            return n

    def producer(self, name: str) -> dict[str, Section]:
        """A producer's committed sections (read it at start, under the lock; change it by commits)."""
        return self.state.producers.get(name, {})

    def commit(self, change: Change) -> None:
        """Make the change durable, then visible. Raises StateWriteError (nothing changed) when the
        state cannot be written."""
        with self.lock:
            old = self.state
            agg = old.aggregate.merged(change.delta) if change.delta is not None else old.aggregate
            change.files = {p: e for p, e in change.files.items() if e is not None or p in old.files}
            files = _with(old.files, change.files) if change.files else old.files
            streams = {**old.streams, **change.streams} if change.streams else old.streams
            new = State(agg, files, streams, old.producers)
            if self.store.state_path is not None:
                try:
                    self.store.write(change_record(old, change), lambda: self._whole(new, change))
                except StateWriteError as e:
                    if self.state_error is None:
                        log.error("%s; trace counts are held back until it can be written", e,
                                  extra={"fields": {"reason": "state_write_failed", "error": str(e)}})
                    self.state_error = str(e)
                    self.on_error("state_write_failed")
                    raise
                if self.state_error is not None:
                    log.info("state file %s written again; trace ingestion resumed", self.store.state_path)
                    self.state_error = None
            # only after the state is on disk may a scrape see the new counts
            for name, sections in change.producers.items():
                mine = old.producers.setdefault(name, {})
                for key, c in sections.items():
                    c.apply(mine.setdefault(key, {}))
            self.state = new

    @staticmethod
    def _whole(new: State, change: Change) -> dict[str, Any]:
        """The whole state once the change is made (producer sections edited on a copy)."""
        producers = {name: dict(sections) for name, sections in new.producers.items()}
        for name, edits in change.producers.items():
            mine = producers.setdefault(name, {})
            for key, c in edits.items():
                section = copy.copy(mine.get(key, {}))
                c.apply(section)
                mine[key] = section
        return {**new.to_json(), "producers": producers}

    def whole(self) -> dict[str, Any]:
        """The committed state as a state file holds it."""
        with self.lock:
            return self.state.to_json()

    def close(self) -> None:
        """At a clean stop: fold the journal into the state file, so the next start replays nothing."""
        if not self.lock.acquire(timeout=1.0):
            return  # a poll still running past the stop timeout: the journal stays, and is replayed
        try:
            self.store.close(self.state, self.state_error is not None)
        finally:
            self.lock.release()


def _with(entries: dict[str, FileEntry], changed: dict[str, FileEntry | None]) -> dict[str, FileEntry]:
    out = dict(entries)
    for p, e in changed.items():
        if e is None:
            del out[p]
        else:
            out[p] = e
    return out
