"""Trace assembly: merge a stream's records by id into whole traces, then give each
finished trace its protocol.

Objects of one trace arrive split and out of time order; names Triton repeats once per
response keep their first and last occurrence and their count (stages.merge_stamp), other
duplicates: the last wins. Memory is bounded: at most `window` traces are open, the one
opened first is finished when a new one would pass the bound (Triton writes a
trace's objects together, so a window of thousands never splits one). Ensemble/BLS
children take the protocol of their top-level parent, also when the parent is in a
later file: such children wait (bounded, persisted with the checkpoint).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..stages import (
    COLUMN,
    COLUMNS,
    NCOLS,
    REPEATED,
    Anatomy,
    Extra,
    Protocol,
    anatomy,
    countable_rows,
    custom_spans,
    frontend_protocol,
    merge_stamp,
    protocol_codes,
)
from .records import Header, Record, Stamps

# Protocols of recently finished traces, per stream, for children that finish after their
# parent. They are written with every checkpoint, so the bound also bounds each state write.
MAX_PROTOCOLS = 16384
MAX_PENDING = 10000  # children waiting for a parent in a later file


@dataclass(slots=True)
class Trace:
    id: int
    model: str | None = None
    version: str | None = None
    request_id: str | None = None
    parent_id: int | None = None
    stamps: dict[str, int] = field(default_factory=dict)  # by column of stages.COLUMNS
    # every occurrence of a name repeated more than twice, and custom activity timestamps
    extra: list[tuple[str, int]] = field(default_factory=list)
    failed: bool = False  # the source says the request failed (OTLP: the span status)

    def add(self, name: str, ns: int) -> None:
        if name in COLUMN:
            merge_stamp(self.stamps, self.extra, name, ns)
        else:
            self.extra.append((name, ns))

    def to_json(self) -> list[Any]:
        out = [self.id, self.model, self.version, self.request_id, self.parent_id, self.stamps,
               [list(e) for e in self.extra]]
        return [*out, 1] if self.failed else out

    @classmethod
    def from_json(cls, v: list[Any]) -> Trace:
        extra = [(str(n), int(ns)) for n, ns in v[6]] if len(v) > 6 else []
        return cls(int(v[0]), v[1], v[2], v[3], v[4], {str(k): int(n) for k, n in v[5].items()}, extra,
                   len(v) > 7 and bool(v[7]))


@dataclass
class TraceBatch:
    """Finished traces as columns: the unit the stage math works on."""

    ids: npt.NDArray[np.int64]
    parents: npt.NDArray[np.int64]  # -1: top-level
    stamps: npt.NDArray[np.int64]  # [rows, len(COLUMNS)], -1 where absent
    hdr: npt.NDArray[np.int32]  # index into `headers`, -1: no header object was seen
    headers: list[tuple[str, str]]  # (model, version) table, shared by a scan's batches
    request_ids: list[str | None]
    # (row, code, ns) sorted by row: code < NCOLS a repeated name's column (every occurrence
    # where it occurs more than twice), else the custom activity customs[code - NCOLS]
    extra: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    customs: list[str] = field(default_factory=list)  # shared by a scan's batches
    trace_ids: list[str] | None = None  # per row, the W3C trace id where there is one (OTLP)
    failed: npt.NDArray[np.bool_] | None = None  # rows the source says failed; None: no such rows
    model: npt.NDArray[np.int64] | None = None  # the C scanner's request model per row (stages.scan_model)
    model_gaps: npt.NDArray[np.int64] | None = None  # (row, gap) of streaming rows the model finished

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_traces(cls, traces: list[Trace], headers: list[tuple[str, str]] | None = None,
                    customs: list[str] | None = None) -> TraceBatch:
        table = headers if headers is not None else []
        index = {h: i for i, h in enumerate(table)}
        custom_table = customs if customs is not None else []
        code = {n: NCOLS + i for i, n in enumerate(custom_table)}
        n = len(traces)
        stamps = np.full((n, len(COLUMNS)), -1, dtype=np.int64)
        hdr = np.full(n, -1, dtype=np.int32)
        extra: list[tuple[int, int, int]] = []
        cells: list[int] = []  # flat index of every stamp, set in one assignment below
        values: list[int] = []
        width = len(COLUMNS)
        for i, t in enumerate(traces):
            base = i * width
            for name, ns in t.stamps.items():
                cells.append(base + COLUMN[name])
                values.append(ns)
            for name, ns in t.extra:
                c = COLUMN.get(name)
                if c is None:
                    c = code.get(name)
                    if c is None:
                        c = code[name] = NCOLS + len(custom_table)
                        custom_table.append(name)
                extra.append((i, c, ns))
            if t.model is not None:
                key = (t.model, t.version or "")
                h = index.get(key)
                if h is None:
                    h = index[key] = len(table)
                    table.append(key)
                hdr[i] = h
        if cells:
            stamps.reshape(-1)[cells] = values
        failed = np.array([t.failed for t in traces], dtype=bool)
        return cls(
            np.array([t.id for t in traces], dtype=np.int64),
            np.array([-1 if t.parent_id is None else t.parent_id for t in traces], dtype=np.int64),
            stamps, hdr, table, [t.request_id for t in traces],
            np.array(extra, dtype=np.int64).reshape(-1, 3), custom_table,
            failed=failed if failed.any() else None,
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
        n = len(Protocol)
        uniq, inverse = np.unique(self.hdr[rows].astype(np.int64) * n + codes[rows], return_inverse=True)
        keys = [(*self.headers[u // n], u % n) for u in uniq.tolist()]
        return keys, inverse.astype(np.intp)

    def _extra_rows(self, i: int) -> npt.NDArray[np.int64]:
        ex = self.extra
        a, b = np.searchsorted(ex[:, 0], [i, i + 1])
        return ex[a:b]

    def extra_names(self, i: int) -> list[tuple[str, int]]:
        """Row i's extra timestamps by name."""
        return [(COLUMNS[c] if c < NCOLS else self.customs[c - NCOLS], ns)
                for _, c, ns in self._extra_rows(i).tolist()]

    def repeats(self, i: int) -> Extra:
        """Every occurrence of the names row i repeats more than twice."""
        out: dict[str, list[int]] = {}
        for name, ns in self.extra_names(i):
            if name in REPEATED:
                out.setdefault(name, []).append(ns)
        return out

    def customs_of(self, i: int) -> dict[str, list[int]]:
        """Row i's custom activity timestamps by name."""
        out: dict[str, list[int]] = {}
        for name, ns in self.extra_names(i):
            if name not in COLUMN:
                out.setdefault(name, []).append(ns)
        return out

    def anatomy(self, rows: npt.NDArray[np.intp]) -> Anatomy:
        """The stage table over the given rows."""
        every = len(rows) == len(self)  # rows are ascending: all of them, in order, need no copy
        return anatomy(self.stamps if every else self.stamps[rows], lambda i: self.repeats(int(rows[i])),
                       None if self.failed is None else self.failed[rows],
                       None if self.model is None else self.model if every else self.model[rows],
                       self.model_gaps if every else self._gaps_of(rows))

    def _gaps_of(self, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.int64] | None:
        """model_gaps of the given (ascending) rows, renumbered as their index in rows."""
        g = self.model_gaps
        if g is None or not len(g):
            return g
        pos = np.searchsorted(rows, g[:, 0])
        keep = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == g[:, 0]) if len(rows) else pos < 0
        return np.column_stack([pos[keep], g[keep, 1]]).astype(np.int64)

    def custom_spans(self, rows: npt.NDArray[np.intp]) -> Iterator[tuple[int, str, int]]:
        """(index into rows, stage, ns) of the custom activity spans of the given rows."""
        ex = self.extra
        if not len(ex) or not (ex[:, 1] >= NCOLS).any():
            return
        with_custom = set(ex[ex[:, 1] >= NCOLS, 0].tolist())
        for r, row in enumerate(rows.tolist()):
            if row in with_custom:
                for stage, ns in custom_spans(self.customs_of(row)).items():
                    yield r, stage, ns

    def trace(self, i: int) -> Trace:
        row = self.stamps[i]
        p = int(self.parents[i])
        h = int(self.hdr[i])
        model, version = self.headers[h] if h >= 0 else (None, None)
        return Trace(int(self.ids[i]), model, version, self.request_ids[i], None if p < 0 else p,
                     {COLUMNS[j]: int(row[j]) for j in np.flatnonzero(row >= 0)}, self.extra_names(i),
                     self.failed is not None and bool(self.failed[i]))

    def select(self, rows: npt.NDArray[np.intp]) -> TraceBatch:
        extra = self.extra
        if len(extra):
            new_index = np.full(len(self), -1, dtype=np.int64)
            new_index[rows] = np.arange(len(rows))
            extra = extra.copy()
            extra[:, 0] = new_index[extra[:, 0]]
            extra = extra[extra[:, 0] >= 0]
            extra = extra[np.argsort(extra[:, 0], kind="stable")]
        return TraceBatch(self.ids[rows], self.parents[rows], self.stamps[rows], self.hdr[rows], self.headers,
                          [self.request_ids[i] for i in rows.tolist()], extra, self.customs,
                          None if self.trace_ids is None else [self.trace_ids[i] for i in rows.tolist()],
                          None if self.failed is None else self.failed[rows],
                          None if self.model is None else self.model[rows], self._gaps_of(rows))


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
                t.add(name, ns)
        elif isinstance(rec, Header):
            t.model, t.version, t.request_id, t.parent_id = rec.model, rec.version, rec.request_id, rec.parent_id

    def open_trace(self, tid: int) -> Trace | None:
        return self.open.get(tid)

    def finish_all(self) -> None:
        while self.open:
            self.emit(self.open.popitem(last=False)[1])


OpenLookup = Callable[[int], "Trace | None"]


def _closed(_: int) -> Trace | None:
    """The lookup once a file is done: no trace is open any more."""
    return None


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
            return int(frontend_protocol(t.stamps))
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
    # no trimming until this batch's children are resolved: a batch can hold more tops than are kept
    state.protocols.update(zip(batch.ids[top].tolist(), codes[top].tolist(), strict=True))
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
        while len(state.pending) > MAX_PENDING:
            _, (old, _) = state.pending.popitem(last=False)
            state.remember([old.id], [Protocol.NONE])
            overflow(old)
    state.remember([], [])
    out = batch if keep.all() else batch.select(np.flatnonzero(keep))
    return out, codes if keep.all() else codes[keep]


def release_pending(state: StreamState, hold_seconds: float, now: float,
                    force: bool = False) -> tuple[list[Trace], list[int]]:
    """Waiting children whose parent's protocol is now known, or that waited too long ('none')."""
    out: list[Trace] = []
    codes: list[int] = []
    progress = True
    while progress and state.pending:
        progress = False
        for tid in list(state.pending):
            t, since = state.pending[tid]
            p = _open_protocol(t.parent_id, _closed, state) if t.parent_id is not None else None
            if p is None and (force or now - since >= hold_seconds):
                p = Protocol.NONE
            if p is not None:
                del state.pending[tid]
                state.remember([tid], [p])
                out.append(t)
                codes.append(p)
                progress = True
    return out, codes
