"""Trace assembly: merge a stream's records by id into whole traces, then give each
finished trace its protocol.

Objects of one trace arrive split and out of time order; the last duplicate of a
timestamp name wins. Memory is bounded: at most `window` traces are open, the one
opened first is finished when a new one would pass the bound (Triton writes a
trace's objects together, so a window of thousands never splits one). Ensemble/BLS
children take the protocol of their top-level parent, also when the parent is in a
later file: such children wait (bounded, persisted with the checkpoint).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..stages import COLUMN, COLUMNS, countable_rows, frontend_protocol, protocol_codes
from .records import Header, Record, Stamps

# Protocols of recently finished traces, per stream, for children that finish after their
# parent. They are written with every checkpoint, so the bound also bounds each state write.
MAX_PROTOCOLS = 16384
MAX_PENDING = 10000  # children waiting for a parent in a later file
PROTOCOL_CODE = {"none": 0, "http": 1, "grpc": 2}


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


@dataclass
class TraceBatch:
    """Finished traces as columns: the unit the stage math works on."""

    ids: npt.NDArray[np.int64]
    parents: npt.NDArray[np.int64]  # -1: top-level
    stamps: npt.NDArray[np.int64]  # [rows, len(COLUMNS)], -1 where absent
    hdr: npt.NDArray[np.int32]  # index into `headers`, -1: no header object was seen
    headers: list[tuple[str, str]]  # (model, version) table, shared by a scan's batches
    request_ids: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_traces(cls, traces: list[Trace], headers: list[tuple[str, str]] | None = None) -> TraceBatch:
        table = headers if headers is not None else []
        index = {h: i for i, h in enumerate(table)}
        n = len(traces)
        stamps = np.full((n, len(COLUMNS)), -1, dtype=np.int64)
        hdr = np.full(n, -1, dtype=np.int32)
        for i, t in enumerate(traces):
            for name, ns in t.stamps.items():
                stamps[i, COLUMN[name]] = ns
            if t.model is not None:
                key = (t.model, t.version or "")
                h = index.get(key)
                if h is None:
                    h = index[key] = len(table)
                    table.append(key)
                hdr[i] = h
        return cls(
            np.array([t.id for t in traces], dtype=np.int64),
            np.array([-1 if t.parent_id is None else t.parent_id for t in traces], dtype=np.int64),
            stamps, hdr, table, [t.request_id for t in traces],
        )

    def usable(self, reject: Callable[[str, int], None]) -> npt.NDArray[np.bool_]:
        """Rows that count (a header, REQUEST_START and REQUEST_END); the others rejected by reason."""
        has_header = self.hdr >= 0
        countable = countable_rows(self.stamps)
        reject("missing_header", int((~has_header).sum()))
        reject("incomplete_trace", int((has_header & ~countable).sum()))
        return has_header & countable

    def groups(self, rows: npt.NDArray[np.intp], codes: npt.NDArray[np.int8]
               ) -> tuple[list[tuple[str, str, int]], npt.NDArray[np.intp]]:
        """(model, version, protocol code) of the given rows: distinct keys and each row's key index."""
        uniq, inverse = np.unique(self.hdr[rows].astype(np.int64) * 4 + codes[rows], return_inverse=True)
        keys = [(*self.headers[u // 4], u % 4) for u in uniq.tolist()]
        return keys, inverse.astype(np.intp)

    def trace(self, i: int) -> Trace:
        row = self.stamps[i]
        p = int(self.parents[i])
        h = int(self.hdr[i])
        model, version = self.headers[h] if h >= 0 else (None, None)
        return Trace(int(self.ids[i]), model, version, self.request_ids[i],
                     None if p < 0 else p, {COLUMNS[j]: int(row[j]) for j in np.flatnonzero(row >= 0)})

    def select(self, rows: npt.NDArray[np.intp]) -> TraceBatch:
        return TraceBatch(self.ids[rows], self.parents[rows], self.stamps[rows], self.hdr[rows], self.headers,
                          [self.request_ids[i] for i in rows.tolist()])


class MergeWindow:
    """The pure-Python assembler: records in, finished traces out (see the module doc)."""

    def __init__(self, window: int, emit: Callable[[Trace], None]) -> None:
        self.window = window
        self.emit = emit
        self.open: OrderedDict[int, Trace] = OrderedDict()

    def feed(self, rec: Record) -> None:
        t = self.open.get(rec.id)
        if t is None:
            if len(self.open) >= self.window:
                self.emit(self.open.popitem(last=False)[1])
            t = Trace(rec.id)
            self.open[rec.id] = t
        if isinstance(rec, Stamps):
            for name, ns in rec.stamps:
                t.stamps[name] = ns  # last duplicate wins
        elif isinstance(rec, Header):
            t.model, t.version, t.request_id, t.parent_id = rec.model, rec.version, rec.request_id, rec.parent_id

    def open_trace(self, tid: int) -> Trace | None:
        return self.open.get(tid)

    def finish_all(self) -> None:
        while self.open:
            self.emit(self.open.popitem(last=False)[1])


OpenLookup = Callable[[int], "Trace | None"]


@dataclass
class StreamState:
    """What outlives one file of a stream: protocols of recent traces and waiting children."""

    protocols: dict[int, int] = field(default_factory=dict)
    pending: OrderedDict[int, tuple[Trace, float]] = field(default_factory=OrderedDict)

    def copy(self) -> StreamState:
        return StreamState(dict(self.protocols), OrderedDict(self.pending))

    def remember(self, ids: list[int], codes: list[int]) -> None:
        protos = self.protocols
        protos.update(zip(ids, codes, strict=True))
        if len(protos) > 2 * MAX_PROTOCOLS:  # keep the newest (dicts keep insertion order)
            self.protocols = dict(list(protos.items())[-MAX_PROTOCOLS:])

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol_ids": list(self.protocols),
            "protocol_codes": list(self.protocols.values()),
            "pending": [[t.to_json(), since] for t, since in self.pending.values()],
        }

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> StreamState:
        s = cls()
        s.protocols = dict(zip(v.get("protocol_ids", []), v.get("protocol_codes", []), strict=False))
        for tj, since in v.get("pending", []):
            t = Trace.from_json(tj)
            s.pending[t.id] = (t, float(since))
        return s


def _open_protocol(tid: int, lookup: OpenLookup, state: StreamState) -> int | None:
    """Protocol of a trace still open (or finished earlier), walking up to its top-level parent."""
    for _ in range(16):
        known = state.protocols.get(tid)
        if known is not None:
            return known
        t = lookup(tid)
        if t is None:
            return None
        if t.parent_id is None:
            return PROTOCOL_CODE[frontend_protocol(t.stamps)]
        tid = t.parent_id
    return None


def resolve(batch: TraceBatch, state: StreamState, lookup: OpenLookup, now: float,
            overflow: Callable[[Trace], None]) -> tuple[TraceBatch, npt.NDArray[np.int8]]:
    """Protocols of a batch of finished traces; children whose parent is unknown yet wait
    in state.pending (the returned batch leaves them out; `overflow` gets any pushed out)."""
    codes = protocol_codes(batch.stamps)
    parents = batch.parents
    child_rows = np.flatnonzero(parents >= 0)
    top = np.flatnonzero(parents < 0)
    state.remember(batch.ids[top].tolist(), codes[top].tolist())
    keep = np.ones(len(batch), dtype=bool)
    if len(child_rows):
        ids = batch.ids
        for i in child_rows.tolist():
            p = _open_protocol(int(parents[i]), lookup, state)
            if p is None:
                t = batch.trace(i)
                state.pending[t.id] = (t, now)
                keep[i] = False
                continue
            codes[i] = p
            state.protocols[int(ids[i])] = p  # at once: a grandchild may follow in this batch
        state.remember([], [])
        while len(state.pending) > MAX_PENDING:
            _, (old, _) = state.pending.popitem(last=False)
            state.remember([old.id], [0])
            overflow(old)
    out = batch if keep.all() else batch.select(np.flatnonzero(keep))
    return out, codes if keep.all() else codes[keep]


def release_pending(state: StreamState, lookup: OpenLookup, hold_seconds: float, now: float,
                    force: bool = False) -> tuple[list[Trace], list[int]]:
    """Waiting children whose parent's protocol is now known, or that waited too long ('none')."""
    out: list[Trace] = []
    codes: list[int] = []
    progress = True
    while progress and state.pending:
        progress = False
        for tid in list(state.pending):
            t, since = state.pending[tid]
            p = _open_protocol(t.parent_id, lookup, state) if t.parent_id is not None else None
            if p is None and (force or now - since >= hold_seconds):
                p = 0
            if p is not None:
                del state.pending[tid]
                state.remember([tid], [p])
                out.append(t)
                codes.append(p)
                progress = True
    return out, codes
