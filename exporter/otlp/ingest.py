"""The OTLP producer: decoded requests -> the traces of the requests they complete, handed to
the trace aggregator with this producer's state change (held spans, the keys of recent spans),
one commit per request, before the request is acknowledged."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator

import numpy as np

from ..stages import frontend_protocol
from ..traces.aggregator import TraceAggregator
from ..traces.assembly import StreamState, Trace, TraceBatch, resolve
from ..traces.pipeline import Batch, released
from ..traces.scanner import with_model
from ..traces.store import Change, SectionChange
from .decode import Decoded
from .held import MAX_HELD_BYTES, HeldSpans, HoldPlan
from .spans import Reject, Span, Tree, new_ids, spans_of, tree_traces
from .whole import Rows, split

PRODUCER = "otlp"  # the name of this producer's sections in the trace state
PATH = "/v1/traces"
DRAIN_BYTES = 64 << 20  # a refused body is read away up to this, then the connection is closed
SEEN_SPANS = 32_768  # (trace id, span id) keys remembered to recognise a resent batch (persisted)
SEEN_CHUNK = 1024  # keys per persisted chunk: a commit adds chunks and drops the oldest, never rewrites
SPAN_REJECTS = ("bad_span_id", "missing_attribute", "bad_label", "implausible_time")
REQUEST_RESULTS = ("success", "partial", "malformed", "too_large", "unsupported_media_type",
                   "unauthorized", "not_found", "failed")
SPAN_RESULTS = ("accepted", "duplicate", "rejected")


def span_key(s: Span) -> bytes:
    """A span's identity: span ids are unique only within their trace (8 bytes, hashed)."""
    return hashlib.blake2b(s.trace_id + s.span_id, digest_size=8).digest()


def _ids(chunk: str) -> list[bytes]:
    raw = base64.b64decode(chunk)
    return [raw[i:i + 8] for i in range(0, len(raw), 8)]


def _chunks(ids: list[bytes]) -> list[tuple[str, int]]:
    return [(base64.b64encode(b"".join(ids[i:i + SEEN_CHUNK])).decode(), len(ids[i:i + SEEN_CHUNK]))
            for i in range(0, len(ids), SEEN_CHUNK)]


class OtlpIngest:
    """The OTLP producer: decoded requests -> batches handed to the aggregator with this
    producer's state change (held spans, remembered keys), one commit per request."""

    def __init__(self, aggregator: TraceAggregator, hold_seconds: float, max_held_bytes: int = MAX_HELD_BYTES,
                 seen_spans: int = SEEN_SPANS) -> None:
        self.aggregator = aggregator
        self.hold_seconds = hold_seconds
        self.seen_spans = seen_spans
        self.labels = [""] * len(aggregator.label_names)  # OTLP traces carry no file-pattern labels
        with aggregator.lock:
            state = aggregator.producer(PRODUCER)
            self.holding, rewrite = HeldSpans.from_section(state.get("held", {}), hold_seconds, max_held_bytes)
            # keys of the last seen_spans spans (and up to a chunk more), oldest first, as (base64, n) chunks
            self.chunks = deque((c, len(_ids(c))) for c in state.get("seen_keys", {}).values())
            self.next_chunk = 1 + max((int(k) for k in state.get("seen_keys", {})), default=-1)
            # an earlier version remembered span ids alone: they count as seen until the window is full
            self.legacy = {i for c in state.get("seen", {}).values() for i in _ids(c)}
        self.seen: OrderedDict[bytes, None] = OrderedDict.fromkeys(i for c, _ in self.chunks for i in _ids(c))
        self.seen_total = sum(n for _, n in self.chunks)  # keys in self.chunks (kept, not summed per commit)
        self._rewrite: dict[str, SectionChange] = {"held": self.holding.section()} if rewrite else {}
        self.lock = threading.Lock()  # the counters
        self.state_lock = threading.Lock()  # one ingest at a time: held and seen change in order
        self.requests: Counter[str] = Counter()
        self.spans: Counter[str] = Counter()

    @property
    def held(self) -> OrderedDict[bytes, tuple[Tree, float]]:
        return self.holding.waiting

    def count_request(self, result: str) -> None:
        with self.lock:
            self.requests[result] += 1

    def ingest(self, req: Decoded) -> tuple[int, int, str]:
        """(new spans, rejected spans, why) of one request, committed; raises OSError when the
        state cannot be written (nothing counted then)."""
        with self.state_lock:
            return self._ingest(req)

    def _ingest(self, req: Decoded) -> tuple[int, int, str]:
        now = time.time()
        rejected: Counter[str] = Counter()
        change = self.aggregator.change()
        delta = change.delta
        assert delta is not None

        def reject(reason: str, n: int) -> None:
            rejected[reason] += n
            delta.reject(reason, n)

        fast = split(req, time.time_ns(), self.holding.entries, self.seen, self.legacy)
        if fast is not None:  # the compiled path: whole trees are rows already, the rest placed below
            for reason, n in fast.rejects.items():
                if n:
                    reject(reason, n)
            fresh, keys, duplicates, rows = fast.slow, fast.keys, fast.duplicates, fast.rows
        else:
            fresh, keys, duplicates, rows = self._fresh(req, reject)
        plan = self.holding.plan(fresh, now)
        gone = self._commit(change, plan, now, reject, keys, rows)
        rejected["model_cap"] += delta.rejected["model_cap"]  # told in the reply, spans not rejected
        for k in keys:
            self.seen[k] = None
        for c, _ in gone:
            for i in _ids(c):
                self.seen.pop(i, None)
        bad = sum(rejected[r] for r in SPAN_REJECTS)
        with self.lock:
            self.spans["accepted"] += len(keys)
            self.spans["duplicate"] += duplicates
            self.spans["rejected"] += bad
        why = ", ".join(f"{r}={rejected[r]}" for r in (*SPAN_REJECTS, "model_cap") if rejected[r])
        if rejected["model_cap"]:
            why += f" (traces of more than {self.aggregator.max_models} model versions are not counted)"
        return len(keys), bad, why

    def _fresh(self, req: Decoded, reject: Reject) -> tuple[list[Span], list[bytes], int, None]:
        """The Python path: (the request's new spans, their keys, how many were duplicates, no rows)."""
        fresh: list[Span] = []
        keys: list[bytes] = []
        in_batch: set[bytes] = set()
        duplicates = 0
        for s in spans_of(req, reject, time.time_ns()):
            k = span_key(s)
            if k in self.seen or k in in_batch or s.span_id in self.legacy:
                duplicates += 1
                continue
            in_batch.add(k)
            keys.append(k)
            fresh.append(s)
        return fresh, keys, duplicates, None

    def expire(self) -> int:
        """Count the requests that waited hold_seconds for their root; returns how many."""
        with self.state_lock:
            now = time.time()
            plan = self.holding.plan_expiry(now)
            if not plan.ready:
                return 0
            change = self.aggregator.change()
            assert change.delta is not None
            self._commit(change, plan, now, change.delta.reject, [])
            return len(plan.ready)

    def _commit(self, change: Change, plan: HoldPlan, now: float, reject: Reject,
                keys: list[bytes], rows: Rows | None = None) -> list[tuple[str, int]]:
        """The plan's ready requests counted, this producer's sections edited, as one commit; held
        spans and remembered keys change only once it is durable. Returns the chunks of keys that
        went."""
        sections = {**self._rewrite, **plan.sections()}
        # whole chunks go while the rest still hold seen_spans keys: the journal records only the
        # chunks added and how many went (self.chunks changed only once the commit is durable)
        old = len(self.chunks)
        new = _chunks(keys)
        total = self.seen_total + len(keys)
        d = 0
        while d < old + len(new):
            n = self.chunks[d][1] if d < old else new[d - old][1]
            if total - n < self.seen_spans:
                break
            total -= n
            d += 1
        added = [(str(self.next_chunk + i), c) for i, (c, _) in enumerate(new) if old + i >= d]
        if d or added:
            sections["seen_keys"] = SectionChange(min(d, old), added)
        if self.legacy and total >= self.seen_spans:
            sections["seen"] = SectionChange(replace=True)  # the window is full of keys: ids alone go
        with self.aggregator.lock:
            self.aggregator.observe(change, self._batches(plan.ready, now, reject, change, rows), self.labels,
                                    wall_clock=True)
            if sections:
                change.producers[PRODUCER] = sections
            self.aggregator.commit(change)
        self._rewrite = {}
        self.holding.apply(plan)
        gone = [self.chunks.popleft() for _ in range(min(d, old))] + new[:max(0, d - old)]
        self.chunks.extend(new[max(0, d - old):])
        self.seen_total = total
        self.next_chunk += len(new)
        if "seen" in sections:
            self.legacy = set()
        return gone

    @staticmethod
    def _batches(trees: list[Tree], now: float, reject: Reject, change: Change,
                 rows: Rows | None = None) -> Iterator[Batch]:
        """The same path as trace files from here: a batch and its protocols (the compiled path's
        rows of whole trees first, where there are some)."""
        assert change.delta is not None
        if rows is not None:
            change.delta.last_ingest = now
            yield with_model(rows[0]), rows[1]
        ids = new_ids(1 if rows is None else len(rows[0]) + 1)
        traces: list[Trace] = []
        w3c: dict[int, str] = {}
        codes: dict[int, int] = {}  # each trace's protocol: a child takes its parent's, which came before it
        for tree in trees:
            for t, trace_id in tree_traces(tree, ids, reject):
                traces.append(t)
                w3c[t.id] = trace_id
                codes[t.id] = int(frontend_protocol(t.stamps)) if t.parent_id is None else codes.get(t.parent_id, -1)
        if not traces:
            return
        change.delta.last_ingest = now  # TraceIngestionStalled watches OTLP-fed traces too
        batch = with_model(TraceBatch.from_traces(traces))
        batch.trace_ids = list(w3c.values())
        if -1 not in codes.values():  # what resolve() gives, without its table of a stream's protocols
            yield batch, np.fromiter(codes.values(), dtype=np.int8, count=len(codes))
            return
        stream = StreamState()  # a chain of ensembles too deep for tree_traces' order
        by_id = {t.id: t for t in traces}
        yield resolve(batch, stream, by_id.get, now, lambda t: None)
        for b, c in released(stream, now, 0, force=True):  # a parent that never came: protocol none
            with_model(b)
            b.trace_ids = [w3c[i] for i in b.ids.tolist()]
            yield b, np.asarray(c, dtype=np.int8)


