"""HTTP endpoint: /metrics (Prometheus text or OpenMetrics by Accept), /healthz, /readyz."""

from __future__ import annotations

import gzip
import logging
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("server")

# (Authorization header or None) -> True when the request may proceed
AuthCheck = Callable[[str | None], bool]


class _HTTPServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # failed TLS handshakes and dropped clients are the client's problem, not a traceback
        log.debug("connection from %s failed", client_address, exc_info=True)


class MetricsServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        ready: Callable[[], bool] = lambda: True,
        ssl_context: ssl.SSLContext | None = None,
        auth: AuthCheck | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.auth = auth
        handler = self._handler()
        self.httpd = _HTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        if ssl_context is not None:
            # handshake in the request thread: done in accept(), one idle client would block everyone
            self.httpd.socket = ssl_context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60  # seconds a connection may stay silent (TLS handshake included)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.client_address[0], *args)

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                # probes (kubelet, Docker HEALTHCHECK) carry no credentials; health reveals nothing
                if (server.auth is not None and path not in ("/healthz", "/readyz")
                        and not server.auth(self.headers.get("Authorization"))):
                    self._send(401, b"Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="inference-profiler"'})
                    return
                if path == "/metrics":
                    encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                    try:
                        body = encoder(server.registry)
                    except Exception:
                        log.exception("scrape failed")
                        self._send(500, b"scrape failed, see the exporter log\n")
                        return
                    extra: dict[str, str] = {}
                    if "gzip" in self.headers.get("Accept-Encoding", ""):
                        body = gzip.compress(body, compresslevel=1)
                        extra["Content-Encoding"] = "gzip"
                    self._send(200, body, ctype, extra)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    if server.ready():
                        self._send(200, b"ready\n")
                    else:
                        self._send(503, b"sources initialising\n")
                elif path == "/":
                    self._send(200, b"<html><body><h1>Inference Profiler</h1><p><a href='/metrics'>/metrics</a> "
                               b"<a href='/healthz'>/healthz</a> <a href='/readyz'>/readyz</a></p></body></html>\n",
                               "text/html; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

        return Handler
