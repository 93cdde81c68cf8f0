"""Triton's OpenTelemetry spans -> the traces a trace file gives (pure logic, no I/O).

Triton 2.51 sends three spans per request, all in one OTel trace: `InferRequest` (the
root: frontend events, repeated per response on streams), a span named after the model
(REQUEST_START, QUEUE_START, REQUEST_END and the triton.* attributes) and `compute` (the
COMPUTE_* events). An ensemble step's model span is a child of the ensemble's model span.
Spans are exported when they end and the root ends last, so a request's spans are
complete when its root arrives; until then they are held (bounded in time and number).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..stages import CUSTOM_NAME, KNOWN_TIMESTAMPS
from ..traces.assembly import Trace

MODEL_NAME, MODEL_VERSION = "triton.model_name", "triton.model_version"
REQUEST_ID = "triton.request_id"
MAX_NAME = 256  # longer model names / request ids are rejected, as in trace files
MIN_WALL_NS = 946_684_800 * 10**9  # 2000-01-01: earlier event times are not a wall clock
MAX_AHEAD_NS = 24 * 3600 * 10**9  # events this far in the future are not plausible
# Triton writes an HTTP send it did not capture as 0, which its OTel mode converts to
# the wall clock at boot: a send before the request was received is such a zero.
HTTP_SENDS = ("HTTP_SEND_START", "HTTP_SEND_END")
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR

Reject = Callable[[str, int], None]  # (reason, how many)


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


def _text(value: Any) -> str | None:
    which = value.WhichOneof("value")
    if which == "string_value":
        return str(value.string_value)
    if which == "int_value":
        return str(value.int_value)
    return None


def spans_of(req: ExportTraceServiceRequest, reject: Reject, now_ns: int) -> Iterator[Span]:
    """The request's spans that can be counted; each other span is rejected once, by reason."""
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                span = _span(s, reject, now_ns)
                if span is not None:
                    yield span


def _span(s: Any, reject: Reject, now_ns: int) -> Span | None:
    tid, sid, pid = bytes(s.trace_id), bytes(s.span_id), bytes(s.parent_span_id)
    if len(tid) != 16 or len(sid) != 8 or len(pid) not in (0, 8) or not any(tid) or not any(sid):
        reject("bad_span_id", 1)
        return None
    attrs: dict[str, str] = {}
    for kv in s.attributes:
        if kv.key.startswith("triton."):
            text = _text(kv.value)
            if text is not None:
                attrs[kv.key] = text
    model = attrs.get(MODEL_NAME)
    if model is not None or s.name not in ("InferRequest", "compute"):
        if not model or MODEL_VERSION not in attrs:
            reject("missing_attribute", 1)
            return None
        if len(model) > MAX_NAME or len(attrs.get(REQUEST_ID, "")) > MAX_NAME:
            reject("bad_label", 1)
            return None
    events: list[tuple[str, int]] = []
    for e in s.events:
        t = int(e.time_unix_nano)
        if t < MIN_WALL_NS or t > now_ns + MAX_AHEAD_NS:
            reject("implausible_time", 1)
            return None
        if e.name in KNOWN_TIMESTAMPS or CUSTOM_NAME.fullmatch(e.name):
            events.append((str(e.name), t))
        else:
            reject("unknown_timestamp", 1)
    return Span(tid, sid, pid, str(s.name), attrs, events, s.status.code == STATUS_ERROR)


# --- holding a request's spans until its root arrives ---------------------------------

Tree = dict[bytes, Span]  # one OTel trace's spans by span id
Held = OrderedDict[bytes, tuple[Tree, float]]  # trace id -> (spans, first arrival), oldest first


def regroup(held: Held, spans: list[Span], now: float, hold_seconds: float, max_held_spans: int
            ) -> tuple[Held, list[Tree]]:
    """The new held set and the trees ready to count: those whose root arrived, those held
    hold_seconds, and the oldest past max_held_spans. `held` itself is left untouched, so
    the caller can drop the result when its commit fails."""
    out: Held = OrderedDict(held)
    touched: set[bytes] = set()
    done: list[bytes] = []
    for s in spans:
        entry = out.get(s.trace_id)
        if entry is None:
            tree: Tree = {}
            out[s.trace_id] = (tree, now)
            touched.add(s.trace_id)
        else:
            tree = entry[0]
            if s.trace_id not in touched:  # copy on write: `held` stays as it was
                tree = dict(tree)
                out[s.trace_id] = (tree, entry[1])
                touched.add(s.trace_id)
        tree[s.span_id] = s
        if not s.parent_id:
            done.append(s.trace_id)
    ready = [out.pop(t)[0] for t in dict.fromkeys(done) if t in out]
    ready.extend(expire(out, now, hold_seconds, max_held_spans))
    return out, ready


def expire(held: Held, now: float, hold_seconds: float, max_held_spans: int) -> list[Tree]:
    """Trees (removed from `held`, in place) that waited too long or overflow the bound."""
    out: list[Tree] = []
    total = sum(len(t) for t, _ in held.values())
    while held:
        tid, (tree, since) = next(iter(held.items()))
        if now - since < hold_seconds and total <= max_held_spans:
            break
        del held[tid]
        total -= len(tree)
        out.append(tree)
    return out


def held_to_json(held: Held) -> list[Any]:
    return [[[s.to_json() for s in tree.values()], since] for tree, since in held.values()]


def held_from_json(v: list[Any]) -> Held:
    held: Held = OrderedDict()
    for spans, since in v:
        tree = {s.span_id: s for s in map(Span.from_json, spans)}
        if tree:
            held[next(iter(tree.values())).trace_id] = (tree, float(since))
    return held


# --- a tree -> traces -------------------------------------------------------------------

def tree_traces(tree: Tree, ids: Iterator[int], reject: Reject) -> list[tuple[Trace, str]]:
    """One trace per model span, with its compute span's events and, for a top-level
    request, its root's frontend events; ensemble steps point at their parent's trace.
    Parents come before children. Paired with the W3C trace id (hex)."""
    models = [s for s in tree.values() if s.is_model]
    if len(models) < len(tree):
        used = {s.parent_id for s in models} | {s.span_id for s in tree.values()
                                                 if s.parent_id in tree and tree[s.parent_id].is_model}
        orphans = sum(1 for s in tree.values() if not s.is_model and s.span_id not in used)
        if orphans:
            reject("orphan_span", orphans)  # a root or compute span whose model span never came
    trace_of = {s.span_id: next(ids) for s in models}
    below: dict[bytes, list[Span]] = {}
    for s in tree.values():
        below.setdefault(s.parent_id, []).append(s)
    out: list[tuple[int, Trace, str]] = []
    for s in models:
        t = Trace(trace_of[s.span_id], s.attrs[MODEL_NAME], s.attrs[MODEL_VERSION], s.attrs.get(REQUEST_ID) or None)
        depth = 0
        parent = tree.get(s.parent_id)
        if parent is not None and parent.is_model:
            t.parent_id = trace_of[parent.span_id]
            p: Span | None = parent
            while p is not None and p.is_model and depth < 16:
                depth += 1
                p = tree.get(p.parent_id)
        elif parent is not None:
            _add_frontend(t, parent.events)
            t.failed = parent.error
        t.failed |= s.error
        for c in below.get(s.span_id, ()):
            if not c.is_model:
                t.failed |= c.error
                for name, ns in c.events:
                    t.add(name, ns)
        for name, ns in s.events:
            t.add(name, ns)
        out.append((depth, t, s.trace_id.hex()))
    out.sort(key=lambda x: x[0])
    return [(t, w3c) for _, t, w3c in out]


def _add_frontend(t: Trace, events: list[tuple[str, int]]) -> None:
    received = min((ns for name, ns in events if name in ("HTTP_RECV_START", "GRPC_WAITREAD_END")), default=0)
    for name, ns in events:
        if name in HTTP_SENDS and ns < received:
            continue  # not captured: a zero converted to the wall clock at boot
        t.add(name, ns)


def new_ids() -> Iterator[int]:
    return itertools.count(1)
