"""HTTP endpoint: /metrics (Prometheus text or OpenMetrics by Accept), /healthz, /readyz."""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

from prometheus_client.registry import CollectorRegistry

from .exposition import choose_encoder
from .httphead import HeadError, http_date, read_fields, request_line
from .listen import bind_listening

log = logging.getLogger("server")

# (Authorization header or None) -> True when the request may proceed
AuthCheck = Callable[[str | None], bool]


# Connection limits: each connection holds a thread and a file descriptor.
LISTEN_BACKLOG = 1024  # connections the kernel queues before accept (a burst of scrapes)
MAX_CONNECTIONS = 512  # open at once; further ones push out the oldest connection not being served
FD_RESERVE = 64  # descriptors kept free for trace files, the state file, Triton and eBPF
HEADER_SECONDS = 10.0  # from a request's first byte to its last header line
IDLE_SECONDS = 60.0  # a connection may wait this long for its next request (TLS handshake included)


@dataclass
class _Conn:
    sock: socket.socket
    phase: str  # "idle": waiting for a request, "headers": reading one, "busy": answering it
    since: float  # monotonic time the phase began


@dataclass(frozen=True)
class Timeouts:
    """A listener's connection deadlines (tests shorten them; defaults read when built)."""

    header: float = field(default_factory=lambda: HEADER_SECONDS)
    idle: float = field(default_factory=lambda: IDLE_SECONDS)


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.header_seconds = HEADER_SECONDS  # the Listener sets its own; read at every check
        self.idle_seconds = IDLE_SECONDS
        self.conns: dict[int, _Conn] = {}
        self.conns_lock = threading.Lock()
        self.evicted = 0  # connections closed to make room or for being too slow (tests read it)
        self._fd_warned = 0.0
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # failed TLS handshakes and dropped clients are the client's problem, not a traceback
        log.debug("connection from %s failed", client_address, exc_info=True)

    def capacity(self) -> int:
        """Connections allowed now: read each time, the fd limit can change under a running process."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return MAX_CONNECTIONS
        return max(8, min(MAX_CONNECTIONS, soft - FD_RESERVE))

    def get_request(self) -> tuple[socket.socket, object]:
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                now = time.monotonic()
                if now - self._fd_warned > 60:
                    self._fd_warned = now
                    log.warning("out of file descriptors accepting a connection; closing the oldest idle one")
                if not self._evict_oldest():
                    time.sleep(0.05)  # nothing to close: back off instead of spinning on accept
                else:
                    time.sleep(0.005)  # let the evicted connection's thread close its descriptor
            raise

    def verify_request(self, request: object, client_address: object) -> bool:
        sock = request if isinstance(request, socket.socket) else None
        if sock is None:
            return False
        with self.conns_lock:
            full = len(self.conns) >= self.capacity()
        if full and not self._evict_oldest():
            return False  # every connection is being answered: refuse this one
        with self.conns_lock:
            self.conns[id(sock)] = _Conn(sock, "idle", time.monotonic())
        return True

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self.conns_lock:
            self.conns.pop(id(request), None)
        super().shutdown_request(request)

    def mark(self, sock: socket.socket, phase: str) -> None:
        with self.conns_lock:
            c = self.conns.get(id(sock))
            if c is not None:
                c.phase, c.since = phase, time.monotonic()

    def _evict_oldest(self) -> bool:
        """Close the connection that has waited longest without being answered; False if none."""
        with self.conns_lock:
            waiting = [c for c in self.conns.values() if c.phase != "busy"]
            if not waiting:
                return False
            oldest = min(waiting, key=lambda c: c.since)
            oldest.phase = "busy"  # not picked twice while its thread winds down
        self._kill(oldest.sock)
        return True

    def _kill(self, sock: socket.socket) -> None:
        self.evicted += 1
        # the plain socket's shutdown: SSLSocket.shutdown would touch TLS state another thread uses
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def server_bind(self) -> None:
        # the address picks the family: ':P' and '[::]:P' dual-stack, '[::1]:P' IPv6 (exporter/listen.py)
        self.socket.close()
        host, port = self.server_address[:2]
        self.socket = bind_listening(str(host), int(port))
        self.server_address = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def service_actions(self) -> None:
        """Runs in the accept loop (every poll interval): drops clients that send headers too slowly."""
        now = time.monotonic()
        with self.conns_lock:
            slow = [c for c in self.conns.values()
                    if (c.phase == "headers" and now - c.since > self.header_seconds)
                    or (c.phase == "idle" and now - c.since > self.idle_seconds)]
            for c in slow:
                c.phase = "busy"
        for c in slow:
            self._kill(c.sock)


class Listener:
    """A bounded HTTP server (TLS optional) serving one handler class from its own thread."""

    thread_name = "http"

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler],
                 ssl_context: ssl.SSLContext | None = None, timeouts: Timeouts | None = None) -> None:
        self.httpd = _HTTPServer((host, port), handler)
        t = timeouts or Timeouts()
        self.httpd.header_seconds, self.httpd.idle_seconds = t.header, t.idle
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
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TrackedHandler(BaseHTTPRequestHandler):
    """The connection life every listener shares: "idle" while waiting for a request (the idle
    deadline runs from the end of the last answer), "headers" from its first byte (the header
    deadline), "busy" from the parsed request line and headers until the answer is written.
    Refuses what a proxy could read otherwise: two Content-Length headers, or one that is not a number."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS  # one silent read; the whole-header and idle deadlines are the server's

    def setup(self) -> None:
        super().setup()
        # a read silent this long ends the connection; a second later than the server's own idle
        # deadline, which closes a waiting connection first (and counts it)
        self.connection.settimeout(cast(_HTTPServer, self.server).idle_seconds + 1.0)

    def handle_one_request(self) -> None:
        httpd = cast(_HTTPServer, self.server)
        httpd.mark(self.connection, "idle")
        try:
            if not self.rfile.peek(1):  # type: ignore[attr-defined]
                self.close_connection = True
                return
        except (OSError, ValueError):
            self.close_connection = True
            return
        httpd.mark(self.connection, "headers")
        super().handle_one_request()

    def parse_request(self) -> bool:
        """The request line and headers (exporter/httphead.py: no email parser), with
        http.server's limits and replies; False when the request was refused here."""
        # refusals before the version is known still get a status line (http.server sent a bare body)
        self.command, self.request_version, self.close_connection = "", self.protocol_version, True
        raw: bytes = self.raw_requestline  # type: ignore[attr-defined]
        self.requestline = str(raw, "latin-1").rstrip("\r\n")
        if not self.requestline.strip():
            cast(_HTTPServer, self.server).mark(self.connection, "busy")
            return False  # an empty line: close without an answer, as http.server does
        try:
            self.command, self.path, version = request_line(raw)
            self.request_version = f"HTTP/{version[0]}.{version[1]}"
            self.close_connection = version < (1, 1)
            self.headers = read_fields(self.rfile)  # type: ignore[assignment]
        except HeadError as e:
            cast(_HTTPServer, self.server).mark(self.connection, "busy")
            self.close_connection = True
            self.send_error(e.status, str(e))
            return False
        cast(_HTTPServer, self.server).mark(self.connection, "busy")  # the header deadline stops here
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
            self.close_connection = True
            self.send_error(400, "one Content-Length header with a number is required")
            return False
        connection = (self.headers.get("Connection") or "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if (self.headers.get("Expect") or "").lower() == "100-continue" and version >= (1, 1):
            return self.handle_expect_100()
        return True

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def answer(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        """Status, headers and body in one write: a second small write would wait for the
        client's delayed ACK (Nagle), 40 ms a request on a keep-alive connection."""
        if log.isEnabledFor(logging.DEBUG):
            self.log_request(code, len(body))
        phrase = self.responses[code][0] if code in self.responses else ""
        head = [f"{self.protocol_version} {code} {phrase}\r\nServer: {self.version_string()}\r\n"
                f"Date: {http_date()}\r\nContent-Type: {ctype}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in (headers or {}).items()]
        head.append(f"Content-Length: {len(body)}\r\n")
        if self.close_connection:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        data = "".join(head).encode("latin-1")
        self.wfile.write(data if self.command == "HEAD" else data + body)


class MetricsHandler(TrackedHandler):
    """/metrics, /healthz, /readyz of one MetricsServer (bound by `MetricsHandler.factory`)."""

    owner: MetricsServer

    @classmethod
    def factory(cls, owner: MetricsServer) -> type[MetricsHandler]:
        return type(cls.__name__, (cls,), {"owner": owner})

    def parse_request(self) -> bool:
        ok = super().parse_request()
        # a body on GET/HEAD would be read as the next request (smuggling behind a proxy)
        if ok and (self.headers.get("Transfer-Encoding")
                   or self.headers.get("Content-Length", "0").strip() not in ("", "0")):
            self.close_connection = True
        return ok

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.answer(code, body, ctype, headers)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        server = self.owner
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


class MetricsServer(Listener):
    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        ready: Callable[[], bool] = lambda: True,
        ssl_context: ssl.SSLContext | None = None,
        auth: AuthCheck | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.auth = auth
        super().__init__(host, port, MetricsHandler.factory(self), ssl_context, timeouts)
