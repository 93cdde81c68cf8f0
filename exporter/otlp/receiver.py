"""The OTLP/HTTP receiver: POST /v1/traces -> spans -> the trace pipeline, committed
with the trace tailer's state before the reply, so what was acknowledged survives a
restart. Its own listener; TLS and basic auth from the same web config as /metrics.
"""

from __future__ import annotations

import base64
import logging
import ssl
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..server import AuthCheck, Listener, Timeouts, TrackedHandler
from ..source import PREFIX
from ..traces.aggregate import TraceAggregate
from ..traces.assembly import StreamState, Trace, TraceBatch, resolve
from ..traces.checkpoint import StateWriteError
from ..traces.pipeline import released
from ..traces.tailer import TraceTailer
from .decode import (
    MAX_BODY_BYTES,
    RETRY_AFTER_SECONDS,
    DecodeBudget,
    Decoded,
    PayloadError,
    decode,
    media_type,
    status_body,
    success_body,
)
from .forward import Forwarder
from .spans import (
    Held,
    Reject,
    Span,
    Tree,
    expire,
    held_from_json,
    held_to_json,
    new_ids,
    regroup,
    spans_of,
    tree_traces,
)

log = logging.getLogger("otlp")

FEED = "otlp"  # the key of this feed's state in the tailer's state file
PATH = "/v1/traces"
MAX_HELD_SPANS = 100_000  # spans waiting for their request's root span
DRAIN_BYTES = 64 << 20  # a refused body is read away up to this, then the connection is closed
SEEN_SPANS = 32_768  # span ids remembered to recognise a resent batch (persisted)
SEEN_CHUNK = 1024  # span ids per persisted chunk: a commit adds chunks and drops the oldest, never rewrites
SPAN_REJECTS = ("bad_span_id", "missing_attribute", "bad_label", "implausible_time")
REQUEST_RESULTS = ("success", "partial", "malformed", "too_large", "unsupported_media_type",
                   "unauthorized", "not_found", "throttled", "failed")
SPAN_RESULTS = ("accepted", "duplicate", "rejected")


def _ids(chunk: str) -> list[bytes]:
    raw = base64.b64decode(chunk)
    return [raw[i:i + 8] for i in range(0, len(raw), 8)]


def _chunks(ids: list[bytes]) -> list[tuple[str, int]]:
    return [(base64.b64encode(b"".join(ids[i:i + SEEN_CHUNK])).decode(), len(ids[i:i + SEEN_CHUNK]))
            for i in range(0, len(ids), SEEN_CHUNK)]


class OtlpIngest:
    """Decoded requests -> traces counted in the tailer's live aggregate (thread-safe: every
    change happens under the tailer's lock, in its commit)."""

    def __init__(self, tailer: TraceTailer, max_models: int, hold_seconds: float,
                 max_held_spans: int = MAX_HELD_SPANS, seen_spans: int = SEEN_SPANS) -> None:
        self.tailer = tailer
        self.max_models = max_models
        self.hold_seconds = hold_seconds
        self.max_held_spans = max_held_spans
        self.seen_spans = seen_spans
        self.labels = [""] * len(tailer.label_names)  # OTLP traces carry no file-pattern labels
        state = tailer.feeds.get(FEED) or {}
        self.held: Held = held_from_json(state.get("held", []))
        seen = state.get("seen", [])
        # the ids of the last seen_spans spans (and up to a chunk more), oldest first, as (base64, ids) chunks
        self.chunks = _chunks(_ids(seen)) if isinstance(seen, str) else [(c, len(_ids(c))) for c in seen]
        self.seen: OrderedDict[bytes, None] = OrderedDict.fromkeys(i for c, _ in self.chunks for i in _ids(c))
        self.lock = threading.Lock()  # the counters
        self.state_lock = threading.Lock()  # one ingest at a time: held and seen change in order
        self.requests: Counter[str] = Counter()
        self.spans: Counter[str] = Counter()

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
        result: dict[str, Any] = {}

        def observe(delta: TraceAggregate, live: TraceAggregate) -> Any:
            def reject(reason: str, n: int) -> None:
                rejected[reason] += n
                delta.reject(reason, n)

            fresh: list[Span] = []
            in_batch: set[bytes] = set()
            duplicates = 0
            for s in spans_of(req, reject, time.time_ns()):
                if s.span_id in self.seen or s.span_id in in_batch:
                    duplicates += 1
                    continue
                in_batch.add(s.span_id)
                fresh.append(s)
            held, trees = regroup(self.held, fresh, now, self.hold_seconds, self.max_held_spans)
            self._observe_trees(delta, live, trees, now, reject)
            rejected["model_cap"] += delta.rejected["model_cap"]  # told in the reply, spans not rejected
            kept, gone = self._seen_after([s.span_id for s in fresh])
            result.update(held=held, fresh=fresh, duplicates=duplicates, chunks=(kept, gone))
            return self._state(held, kept)

        self.tailer.observe_feed(FEED, observe)
        fresh: list[Span] = result["fresh"]
        self.held = result["held"]
        for s in fresh:
            self.seen[s.span_id] = None
        kept, gone = result["chunks"]
        for c, _ in gone:
            for i in _ids(c):
                self.seen.pop(i, None)
        self.chunks = kept
        bad = sum(rejected[r] for r in SPAN_REJECTS)
        with self.lock:
            self.spans["accepted"] += len(fresh)
            self.spans["duplicate"] += result["duplicates"]
            self.spans["rejected"] += bad
        why = ", ".join(f"{r}={rejected[r]}" for r in (*SPAN_REJECTS, "model_cap") if rejected[r])
        if rejected["model_cap"]:
            why += f" (traces of more than {self.max_models} model versions are not counted)"
        return len(fresh), bad, why

    def expire(self) -> int:
        """Count the trees that waited hold_seconds for their root; returns how many."""
        with self.state_lock:
            return self._expire()

    def _expire(self) -> int:
        now = time.time()
        if not self.held or now - next(iter(self.held.values()))[1] < self.hold_seconds:
            return 0
        result: dict[str, Any] = {}

        def observe(delta: TraceAggregate, live: TraceAggregate) -> Any:
            held: Held = OrderedDict(self.held)
            trees = expire(held, now, self.hold_seconds, self.max_held_spans)
            self._observe_trees(delta, live, trees, now, delta.reject)
            result.update(held=held, n=len(trees))
            return self._state(held, self.chunks)

        self.tailer.observe_feed(FEED, observe)
        self.held = result["held"]
        return int(result["n"])

    def _seen_after(self, new: list[bytes]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(the chunks of span ids once new is added, the oldest chunks that drop out): chunks go
        while the rest still hold seen_spans ids. Whole chunks only, so the journal records only
        the chunks added and how many went."""
        chunks = self.chunks + _chunks(new)
        total = sum(n for _, n in chunks)
        d = 0
        while d < len(chunks) and total - chunks[d][1] >= self.seen_spans:
            total -= chunks[d][1]
            d += 1
        return chunks[d:], chunks[:d]

    @staticmethod
    def _state(held: Held, chunks: list[tuple[str, int]]) -> dict[str, Any]:
        return {"held": held_to_json(held), "seen": [c for c, _ in chunks]}

    def _observe_trees(self, delta: TraceAggregate, live: TraceAggregate, trees: list[Tree], now: float,
                       reject: Reject) -> None:
        """The same path as trace files from here: a batch, its protocols, the aggregate."""
        ids = new_ids()
        traces: list[Trace] = []
        w3c: dict[int, str] = {}
        for tree in trees:
            for t, trace_id in tree_traces(tree, ids, reject):
                traces.append(t)
                w3c[t.id] = trace_id
        if not traces:
            return
        delta.last_ingest = now  # TraceIngestionStalled watches OTLP-fed traces too
        batch = TraceBatch.from_traces(traces)
        batch.trace_ids = [w3c[i] for i in batch.ids.tolist()]
        stream = StreamState()
        by_id = {t.id: t for t in traces}
        out, codes = resolve(batch, stream, by_id.get, now, lambda t: None)
        delta.observe_batch(out, codes, self.labels, self.max_models, live)
        for b, c in released(stream, now, 0, force=True):  # a parent that never came: protocol none
            b.trace_ids = [w3c[i] for i in b.ids.tolist()]
            delta.observe_batch(b, np.asarray(c, dtype=np.int8), self.labels, self.max_models, live)


class OtlpHandler(TrackedHandler):
    """POST /v1/traces of one OtlpServer (bound by `OtlpHandler.factory`); the connection's
    life (idle, header and busy deadlines) is TrackedHandler's, as on /metrics."""

    owner: OtlpServer

    @classmethod
    def factory(cls, owner: OtlpServer) -> type[OtlpHandler]:
        return type(cls.__name__, (cls,), {"owner": owner})

    def _reply(self, code: int, body: bytes, media: str, headers: dict[str, str] | None = None) -> None:
        self.answer(code, body, media, headers)

    def _refuse(self, e: PayloadError, media: str) -> None:
        self.owner.ingest.count_request(e.result)
        log.debug("OTLP request refused (%d): %s", e.status, e)
        # gRPC codes: 3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 16 UNAUTHENTICATED, 14 UNAVAILABLE, 13 INTERNAL
        code = {400: 3, 413: 8, 401: 16, 503: 14, 500: 13}.get(e.status, 3)
        headers = {"WWW-Authenticate": 'Basic realm="inference-profiler"'} if e.status == 401 else {}
        if e.retry_after is not None:
            headers["Retry-After"] = str(e.retry_after)
        if e.status in (413, 401, 400, 411):
            self.close_connection = True  # an unread or short body cannot be skipped safely
        self._reply(e.status, status_body(media, code, str(e)), media, headers)

    def _discard(self, length: int) -> None:
        """Read a refused body away (bounded), so the client can read our 413."""
        left = min(length, DRAIN_BYTES)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def do_POST(self) -> None:
        server = self.owner
        try:
            media = media_type(self.headers.get("Content-Type"))
        except PayloadError:
            media = "application/json"
        if self.path.split("?", 1)[0] != PATH:
            self.close_connection = True
            self._refuse(PayloadError(404, "not_found", f"no such path; OTLP traces go to {PATH}"), media)
            return
        if server.auth is not None and not server.auth(self.headers.get("Authorization")):
            self._refuse(PayloadError(401, "unauthorized", "credentials required"), media)
            return
        length = int(self.headers.get("Content-Length") or -1)  # a number: TrackedHandler checked
        body: bytes | None = None
        try:
            if length < 0 or self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise PayloadError(411, "malformed", "a Content-Length is required")
            if length > MAX_BODY_BYTES:
                self._discard(length)
                raise PayloadError(413, "too_large", f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
            with server.budget.hold(length) as charge:
                body = self.rfile.read(length)
                if len(body) != length:
                    raise PayloadError(400, "malformed", f"body ended after {len(body)} of {length} bytes")
                records, media = decode(body, self.headers.get("Content-Type"),
                                        self.headers.get("Content-Encoding"), charge)
                answer = self._commit(records, body, media)
                del records  # the budget is released below: nothing it charged stays held
            self._reply(200, answer, media)
        except PayloadError as e:
            if body is None and e.result == "throttled":
                self._discard(length)  # read away unheld, so the connection serves the retry
            self._refuse(e, media)

    def _commit(self, records: Decoded, body: bytes, media: str) -> bytes:
        """Count and commit the records; the reply's body (PayloadError when nothing was counted)."""
        server = self.owner
        try:
            fresh, bad, why = server.ingest.ingest(records)
        except (OSError, StateWriteError) as e:
            log.error("cannot commit OTLP spans (%s); answering 503 so the sender retries", e)
            raise PayloadError(503, "failed", "state not written; retry", retry_after=RETRY_AFTER_SECONDS) from None
        except Exception:
            log.exception("OTLP payload could not be counted; answering 500")
            raise PayloadError(500, "failed", "internal error, see the exporter log") from None
        server.ingest.count_request("partial" if bad else "success")
        if fresh and server.forwarder is not None:
            fwd = {"Content-Type": self.headers.get("Content-Type", "")}
            if self.headers.get("Content-Encoding"):
                fwd["Content-Encoding"] = self.headers["Content-Encoding"]
            server.forwarder.submit(body, fwd)
        return success_body(media, bad, f"not counted: {why}" if why else "")

    def do_GET(self) -> None:
        self._refuse(PayloadError(404, "not_found", f"POST OTLP traces to {PATH}"), "application/json")


class OtlpServer(Listener):
    """POST /v1/traces on its own listener."""

    thread_name = "otlp"

    def __init__(self, ingest: OtlpIngest, host: str, port: int, forwarder: Forwarder | None = None,
                 ssl_context: ssl.SSLContext | None = None, auth: AuthCheck | None = None,
                 timeouts: Timeouts | None = None, budget: DecodeBudget | None = None) -> None:
        self.ingest = ingest
        self.forwarder = forwarder
        self.auth = auth
        self.budget = budget or DecodeBudget()
        super().__init__(host, port, OtlpHandler.factory(self), ssl_context, timeouts)


class OtlpCollector(Collector):
    def __init__(self, ingest: OtlpIngest, forwarder: Forwarder | None) -> None:
        self.ingest = ingest
        self.forwarder = forwarder

    def describe(self) -> Iterator[Metric]:
        return self.collect()  # counters only: cheap at registration

    def collect(self) -> Iterator[Metric]:
        with self.ingest.lock:
            requests, spans = dict(self.ingest.requests), dict(self.ingest.spans)
        r = CounterMetricFamily(PREFIX + "otlp_requests", "OTLP export requests received, by result.",
                                labels=["result"])
        for result in sorted(set(REQUEST_RESULTS) | set(requests)):
            r.add_metric([result], float(requests.get(result, 0)))
        yield r
        s = CounterMetricFamily(PREFIX + "otlp_spans",
                                "OTLP spans received: accepted, duplicate (a resent batch), rejected "
                                "(by reason in trace_records_rejected_total).", labels=["result"])
        for result in SPAN_RESULTS:
            s.add_metric([result], float(spans.get(result, 0)))
        yield s
        d = CounterMetricFamily(PREFIX + "otlp_forward_dropped",
                                "OTLP payloads not passed on to an --otlp-forward backend (queue full, "
                                "backend down or failing).")
        d.add_metric([], float(self.forwarder.dropped if self.forwarder is not None else 0))
        yield d
