"""The OTLP/HTTP receiver: POST /v1/traces -> spans -> the trace pipeline, committed
by the trace aggregator before the reply, so what was acknowledged survives a restart.
Its own listener; TLS and basic auth from the same web config as /metrics.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..server import AuthCheck, Listener, Timeouts, TrackedHandler
from ..source import PREFIX
from ..traces.checkpoint import StateWriteError
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
from .ingest import OtlpIngest

__all__ = ["OtlpCollector", "OtlpIngest", "OtlpServer"]

log = logging.getLogger("otlp")

PATH = "/v1/traces"
DRAIN_BYTES = 64 << 20  # a refused body is read away up to this, then the connection is closed
REQUEST_RESULTS = ("success", "partial", "malformed", "too_large", "unsupported_media_type",
                   "unauthorized", "not_found", "throttled", "failed")
SPAN_RESULTS = ("accepted", "duplicate", "rejected")
# A POST this large is answered at once whatever the pacing: an OTel SDK exports at most 512 spans
# a POST by default, so its queue may hold more and must drain, not fill.
PACE_FULL_SPANS = 512


class OtlpHandler(TrackedHandler):
    """POST /v1/traces of one OtlpServer (bound by `OtlpHandler.factory`); the connection's
    life (idle, header and busy deadlines) is TrackedHandler's, as on /metrics."""

    owner: OtlpServer
    rbufsize = 1 << 16  # a small POST's head and body in one read (the default 8 KiB takes two or three)
    answered = 0.0  # time.monotonic() of this connection's last answer (one handler per connection)
    largest = 0  # spans in this connection's largest POST so far

    @classmethod
    def factory(cls, owner: OtlpServer) -> type[OtlpHandler]:
        return type(cls.__name__, (cls,), {"owner": owner})

    def _reply(self, code: int, body: bytes, media: str, headers: dict[str, str] | None = None) -> None:
        self.answer(code, body, media, headers)
        self.answered = time.monotonic()

    def _pace(self, spans: int) -> None:
        """Hold a small POST's answer (already committed) until `pace` seconds after this connection's
        last answer. An OTel batch span processor has one export in flight and exports again as soon
        as it is answered, so a quick answer brings many small POSTs, each costing a commit; a paced
        one lets the sender's queue gather the spans into fewer, larger POSTs.

        A POST as large as the connection's largest so far (or of PACE_FULL_SPANS) is answered at once:
        it may be a full batch with more spans queued behind it, whatever batch size the sender uses.
        One smaller than that emptied the sender's queue, which then fills only for `pace` seconds."""
        full = spans >= min(PACE_FULL_SPANS, self.largest)
        self.largest = max(self.largest, spans)
        wait = self.answered + self.owner.pace - time.monotonic()
        if not full and wait > 0:
            time.sleep(wait)

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
                spans = len(records)
                del records  # the budget is released below: nothing it charged stays held
            self._pace(spans)
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
                 timeouts: Timeouts | None = None, budget: DecodeBudget | None = None, pace: float = 0.0) -> None:
        self.ingest = ingest
        self.forwarder = forwarder
        self.auth = auth
        self.budget = budget or DecodeBudget()
        self.pace = pace  # seconds: a small POST's answer comes no sooner after its connection's last (0: at once)
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
