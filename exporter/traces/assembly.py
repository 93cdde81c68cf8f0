"""Trace assembly: merge a stream's records by id into whole traces.

Objects of one trace arrive split and out of time order; the last duplicate of a
timestamp name wins. Memory is bounded: at most `window` traces are open, the
oldest is finished when a new one would pass the bound (Triton writes a trace's
objects together, so a window of thousands never splits one). Ensemble/BLS
children take the protocol of their top-level parent, also when the parent is in a
later file: such children wait (bounded, persisted with the checkpoint).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..stages import frontend_protocol, is_countable
from .records import Header, Record, Stamps

MAX_PROTOCOLS = 65536  # remembered top-level protocols per stream
MAX_PENDING = 10000  # children waiting for a parent in a later file


@dataclass(slots=True)
class Trace:
    id: int
    model: str | None = None
    version: str | None = None
    request_id: str | None = None
    parent_id: int | None = None
    stamps: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> list[Any]:
        return [self.id, self.model, self.version, self.request_id, self.parent_id, self.stamps]

    @classmethod
    def from_json(cls, v: list[Any]) -> Trace:
        return cls(int(v[0]), v[1], v[2], v[3], v[4], {str(k): int(n) for k, n in v[5].items()})


@dataclass(slots=True)
class Finished:
    trace: Trace
    protocol: str


Emit = Callable[[Finished], None]
RejectFn = Callable[[str], None]


@dataclass
class StreamState:
    """What outlives one file of a stream: protocols of recent traces and waiting children."""

    protocols: OrderedDict[int, str] = field(default_factory=OrderedDict)
    pending: OrderedDict[int, tuple[Trace, float]] = field(default_factory=OrderedDict)

    def copy(self) -> StreamState:
        return StreamState(OrderedDict(self.protocols), OrderedDict(self.pending))

    def to_json(self) -> dict[str, Any]:
        return {
            "protocols": [[k, v] for k, v in self.protocols.items()],
            "pending": [[t.to_json(), since] for t, since in self.pending.values()],
        }

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> StreamState:
        s = cls()
        for k, p in v.get("protocols", []):
            s.protocols[int(k)] = str(p)
        for tj, since in v.get("pending", []):
            t = Trace.from_json(tj)
            s.pending[t.id] = (t, float(since))
        return s


class TraceAssembler:
    """Feed records of one file; finished traces go to `emit`, unusable ones to `reject`."""

    def __init__(self, state: StreamState, emit: Emit, reject: RejectFn, window: int = 16384,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.emit = emit
        self.reject = reject
        self.window = window
        self.clock = clock
        self.open: OrderedDict[int, Trace] = OrderedDict()

    def feed(self, rec: Record) -> None:
        t = self.open.get(rec.id)
        if t is None:
            if len(self.open) >= self.window:
                _, oldest = self.open.popitem(last=False)
                self._finish(oldest)
            t = Trace(rec.id)
            self.open[rec.id] = t
        if isinstance(rec, Stamps):
            for name, ns in rec.stamps:
                t.stamps[name] = ns  # last duplicate wins
        elif isinstance(rec, Header):
            t.model, t.version, t.request_id, t.parent_id = rec.model, rec.version, rec.request_id, rec.parent_id

    def finish_file(self) -> None:
        """End of a whole file: every open trace is complete."""
        while self.open:
            _, t = self.open.popitem(last=False)
            self._finish(t)

    def expire(self, hold_seconds: float, force: bool = False) -> None:
        """Children whose parent never came: counted with protocol 'none' after the hold time."""
        now = self.clock()
        for tid in list(self.state.pending):
            t, since = self.state.pending[tid]
            if force or now - since >= hold_seconds:
                del self.state.pending[tid]
                self._remember(t.id, "none")
                self._emit_countable(t, "none")

    def _protocol_of(self, tid: int, depth: int = 0) -> str | None:
        p = self.state.protocols.get(tid)
        if p is not None:
            return p
        t = self.open.get(tid)
        if t is None or depth > 16:
            return None
        if t.parent_id is None:
            return frontend_protocol(t.stamps)
        return self._protocol_of(t.parent_id, depth + 1)

    def _remember(self, tid: int, protocol: str) -> None:
        protos = self.state.protocols
        protos[tid] = protocol
        protos.move_to_end(tid)
        while len(protos) > MAX_PROTOCOLS:
            protos.popitem(last=False)

    def _finish(self, t: Trace) -> None:
        if t.model is None:
            self.reject("missing_header")
            return
        if t.parent_id is None:
            protocol: str | None = frontend_protocol(t.stamps)
        else:
            protocol = self._protocol_of(t.parent_id)
        if protocol is None:
            pend = self.state.pending
            pend[t.id] = (t, self.clock())
            while len(pend) > MAX_PENDING:
                _, (old, _) = pend.popitem(last=False)
                self._remember(old.id, "none")
                self._emit_countable(old, "none")
            return
        self._remember(t.id, protocol)
        self._release_children(t.id, protocol)
        self._emit_countable(t, protocol)

    def _emit_countable(self, t: Trace, protocol: str) -> None:
        if is_countable(t.stamps):
            self.emit(Finished(t, protocol))
        else:
            self.reject("incomplete_trace")

    def _release_children(self, parent: int, protocol: str) -> None:
        pend = self.state.pending
        if not pend:
            return
        waiting = [tid for tid, (c, _) in pend.items() if c.parent_id == parent]
        for tid in waiting:
            child, _ = pend.pop(tid)
            self._remember(child.id, protocol)
            self._release_children(child.id, protocol)
            self._emit_countable(child, protocol)
