"""Triton's OpenTelemetry spans -> the traces a trace file gives (pure logic, no I/O).

Triton 2.51 sends three spans per request, all in one OTel trace: `InferRequest` (the
root: frontend events, repeated per response on streams), a span named after the model
(REQUEST_START, QUEUE_START, REQUEST_END and the triton.* attributes) and `compute` (the
COMPUTE_* events). An ensemble step's model span is a child of the ensemble's model span.
Spans are exported when they end and the root ends last, so a request's spans are
complete when its root arrives; until then they are held (held.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..stages import COLUMN, CUSTOM_NAME, KNOWN_TIMESTAMPS, REPEATED
from ..traces.assembly import Trace
from .decode import Decoded, SpanRecord

MODEL_NAME, MODEL_VERSION = "triton.model_name", "triton.model_version"
REQUEST_ID = "triton.request_id"
MAX_NAME = 256  # longer model names / request ids are rejected, as in trace files
MIN_WALL_NS = 946_684_800 * 10**9  # 2000-01-01: earlier event times are not a wall clock
MAX_AHEAD_NS = 24 * 3600 * 10**9  # events this far in the future are not plausible
# Triton writes an HTTP send it did not capture as 0, which its OTel mode converts to
# the wall clock at boot: a send before the request was received is such a zero.
HTTP_SENDS = frozenset(("HTTP_SEND_START", "HTTP_SEND_END"))
RECEIVED = frozenset(("HTTP_RECV_START", "GRPC_WAITREAD_END"))  # when the frontend had the request
_NEVER = 1 << 64  # later than any uint64 time
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR

Reject = Callable[[str, int], None]  # (reason, how many)
_SINGLE = frozenset(COLUMN) - frozenset(REPEATED)  # names kept as one column each: the last wins


@dataclass(slots=True)
class Span:
    trace_id: bytes  # 16 bytes (W3C)
    span_id: bytes  # 8 bytes
    parent_id: bytes  # b"": a root
    name: str
    attrs: dict[str, str]  # the triton.* attributes, as text
    events: list[tuple[str, int]]  # (timestamp name, wall-clock ns)
    error: bool = False  # the span's status is ERROR: its request failed


    @property
    def is_model(self) -> bool:
        return MODEL_NAME in self.attrs

    def to_json(self) -> list[Any]:
        out = [self.trace_id.hex(), self.span_id.hex(), self.parent_id.hex(), self.name, self.attrs,
               [list(e) for e in self.events]]
        return [*out, 1] if self.error else out

    @classmethod
    def from_json(cls, v: list[Any]) -> Span:
        return cls(bytes.fromhex(v[0]), bytes.fromhex(v[1]), bytes.fromhex(v[2]), str(v[3]),
                   {str(k): str(x) for k, x in v[4].items()}, [(str(n), int(t)) for n, t in v[5]],
                   len(v) > 6 and bool(v[6]))


def spans_of(records: Decoded, reject: Reject, now_ns: int) -> Iterator[Span]:
    """The request's spans that can be counted; each other span is rejected once, by reason."""
    for r in records:
        span = _span(r, reject, now_ns)
        if span is not None:
            yield span


def _span(r: SpanRecord, reject: Reject, now_ns: int) -> Span | None:
    tid, sid, pid, attrs = r.trace_id, r.span_id, r.parent_id, r.attrs
    if len(tid) != 16 or len(sid) != 8 or len(pid) not in (0, 8) or not any(tid) or not any(sid):
        reject("bad_span_id", 1)
        return None
    model = attrs.get(MODEL_NAME)
    if model is not None or r.name not in ("InferRequest", "compute"):
        if not model or MODEL_VERSION not in attrs:
            reject("missing_attribute", 1)
            return None
        if len(model) > MAX_NAME or len(attrs.get(REQUEST_ID, "")) > MAX_NAME:
            reject("bad_label", 1)
            return None
    if r.events:
        names, times = zip(*r.events, strict=True)
        if min(times) < MIN_WALL_NS or max(times) > now_ns + MAX_AHEAD_NS:
            reject("implausible_time", 1)
            return None
        if not KNOWN_TIMESTAMPS.issuperset(names):
            unknown = sum(1 for n in names if n not in KNOWN_TIMESTAMPS and not CUSTOM_NAME.fullmatch(n))
            if unknown:
                reject("unknown_timestamp", unknown)
    return checked_span(r)


def checked_span(r: SpanRecord) -> Span:
    """The span of a record that passed _span's checks (here or in the compiled path, which counted
    its unknown timestamp names): those names left out."""
    events = r.events
    if not KNOWN_TIMESTAMPS.issuperset(n for n, _ in events):
        events = [(n, t) for n, t in events if n in KNOWN_TIMESTAMPS or CUSTOM_NAME.fullmatch(n)]
    return Span(r.trace_id, r.span_id, r.parent_id, r.name, r.attrs, events, r.status == STATUS_ERROR)


# --- a tree -> traces -------------------------------------------------------------------

Tree = dict[bytes, Span]  # one OTel trace's spans by span id


def tree_traces(tree: Tree, ids: Iterator[int], reject: Reject) -> list[tuple[Trace, str]]:
    """One trace per model span, with its compute span's events and, for a top-level
    request, its root's frontend events; ensemble steps point at their parent's trace.
    Parents come before children. Paired with the W3C trace id (hex)."""
    models = {sid: s for sid, s in tree.items() if MODEL_NAME in s.attrs}
    below: dict[bytes, list[Span]] = {}  # a model span's other children (its compute span)
    if len(models) < len(tree):
        above = {s.parent_id for s in models.values()}  # roots (and parents) of model spans
        orphans = 0
        for sid, s in tree.items():
            if sid in models:
                continue
            if s.parent_id in models:
                below.setdefault(s.parent_id, []).append(s)
            elif sid not in above:
                orphans += 1
        if orphans:
            reject("orphan_span", orphans)  # a root or compute span whose model span never came
    trace_of = {sid: next(ids) for sid in models}
    out: list[tuple[int, Trace, str]] = []
    for sid, s in models.items():
        attrs = s.attrs
        t = Trace(trace_of[sid], attrs[MODEL_NAME], attrs[MODEL_VERSION], attrs.get(REQUEST_ID) or None)
        depth = 0
        parent = tree.get(s.parent_id)
        if parent is not None and parent.span_id in models:
            t.parent_id = trace_of[parent.span_id]
            p: Span | None = parent
            while p is not None and p.span_id in models and depth < 16:
                depth += 1
                p = tree.get(p.parent_id)
        elif parent is not None:
            _add_frontend(t, parent.events)
            t.failed = parent.error
        t.failed |= s.error
        for c in below.get(sid, ()):  # the compute span: never a model span
            t.failed |= c.error
            _add(t, c.events)
        _add(t, s.events)
        out.append((depth, t, s.trace_id.hex()))
    if len(out) > 1:
        out.sort(key=lambda x: x[0])
    return [(t, w3c) for _, t, w3c in out]


def _add(t: Trace, events: list[tuple[str, int]]) -> None:
    """Trace.add for each event; a name that is a single column is set directly (most are)."""
    stamps = t.stamps
    for name, ns in events:
        if name in _SINGLE:
            stamps[name] = ns  # the last wins, as in Trace.add
        else:
            t.add(name, ns)


def _add_frontend(t: Trace, events: list[tuple[str, int]]) -> None:
    received = first_send = _NEVER  # one pass: roots carry most events, and come with every request
    for name, ns in events:
        if name in RECEIVED:
            received = min(received, ns)
        elif name in HTTP_SENDS:
            first_send = min(first_send, ns)
    if first_send < received < _NEVER:
        # a send before the request was received was not captured: a zero converted to the wall clock at boot
        events = [(name, ns) for name, ns in events if not (name in HTTP_SENDS and ns < received)]
    _add(t, events)


def new_ids(start: int = 1) -> Iterator[int]:
    return itertools.count(start)
