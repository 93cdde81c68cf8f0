"""The OTLP/HTTP receiver: POST /v1/traces -> spans -> the trace pipeline, committed
by the trace aggregator before the reply, so what was acknowledged survives a restart.
Its own listener; TLS and basic auth from the same web config as /metrics.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..server import AuthCheck, Listener
from ..source import PREFIX
from ..traces.checkpoint import StateWriteError
from .decode import MAX_BODY_BYTES, PayloadError, decode, media_type, status_body, success_body
from .forward import Forwarder
from .ingest import OtlpIngest

__all__ = ["OtlpCollector", "OtlpIngest", "OtlpServer"]

log = logging.getLogger("otlp")

PATH = "/v1/traces"
DRAIN_BYTES = 64 << 20  # a refused body is read away up to this, then the connection is closed
REQUEST_RESULTS = ("success", "partial", "malformed", "too_large", "unsupported_media_type",
                   "unauthorized", "not_found", "failed")
SPAN_RESULTS = ("accepted", "duplicate", "rejected")


class OtlpServer(Listener):
    """POST /v1/traces on its own listener."""

    thread_name = "otlp"

    def __init__(self, ingest: OtlpIngest, host: str, port: int, forwarder: Forwarder | None = None,
                 ssl_context: ssl.SSLContext | None = None, auth: AuthCheck | None = None) -> None:
        self.ingest = ingest
        self.forwarder = forwarder
        self.auth = auth
        super().__init__(host, port, self._handler(), ssl_context)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.client_address[0], *args)

            def _reply(self, code: int, body: bytes, media: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", media)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _refuse(self, e: PayloadError, media: str) -> None:
                server.ingest.count_request(e.result)
                log.debug("OTLP request refused (%d): %s", e.status, e)
                # gRPC codes: 3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 16 UNAUTHENTICATED, 14 UNAVAILABLE, 13 INTERNAL
                code = {400: 3, 413: 8, 401: 16, 503: 14, 500: 13}.get(e.status, 3)
                headers = {"WWW-Authenticate": 'Basic realm="inference-profiler"'} if e.status == 401 else {}
                if e.status in (413, 401):
                    self.close_connection = True  # the unread body cannot be skipped safely
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
                try:
                    length = int(self.headers.get("Content-Length") or -1)
                except ValueError:
                    length = -1
                try:
                    if length < 0:
                        self.close_connection = True
                        raise PayloadError(411, "malformed", "a Content-Length is required")
                    if length > MAX_BODY_BYTES:
                        self._discard(length)
                        raise PayloadError(413, "too_large", f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
                    body = self.rfile.read(length)
                    req, media = decode(body, self.headers.get("Content-Type"),
                                        self.headers.get("Content-Encoding"))
                except PayloadError as e:
                    self._refuse(e, media)
                    return
                try:
                    fresh, bad, why = server.ingest.ingest(req)
                except (OSError, StateWriteError) as e:
                    log.error("cannot commit OTLP spans (%s); answering 503 so the sender retries", e)
                    self._refuse(PayloadError(503, "failed", "state not written; retry"), media)
                    return
                except Exception:
                    log.exception("OTLP payload could not be counted; answering 500")
                    self._refuse(PayloadError(500, "failed", "internal error, see the exporter log"), media)
                    return
                server.ingest.count_request("partial" if bad else "success")
                if fresh and server.forwarder is not None:
                    fwd = {"Content-Type": self.headers.get("Content-Type", "")}
                    if self.headers.get("Content-Encoding"):
                        fwd["Content-Encoding"] = self.headers["Content-Encoding"]
                    server.forwarder.submit(body, fwd)
                self._reply(200, success_body(media, bad, f"spans rejected: {why}" if bad else ""), media)

            def do_GET(self) -> None:
                self._refuse(PayloadError(404, "not_found", f"POST OTLP traces to {PATH}"), "application/json")

        return Handler


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
