"""HTTP requests to one Triton within hard bounds: a deadline for the whole fetch, a byte cap per
answer, no redirects.

A socket timeout bounds each read, not a reply that drips a byte at a time; so a watchdog
shuts the fetch's sockets at its deadline, which wakes any read blocked on them. Bodies are
read in chunks and refused past the byte cap, whatever Content-Length says. Redirects are
never followed: an answer from another host would be exposed as this target's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

CHUNK = 64 * 1024
# Python objects cost up to ~64 bytes per JSON value: at most one value per 32 bytes of the
# byte cap keeps a hostile answer's parse within about twice the cap
JSON_BYTES_PER_VALUE = 32


class FetchError(Exception):
    """A request failed; `reason` is the errors_total reason, the message says why in one line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class HttpSession:
    """Requests of one fetch, sharing its deadline; one keep-alive connection per host:port."""

    def __init__(self, deadline: float, max_bytes: int) -> None:
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.expired = False
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self._lock = threading.Lock()
        self._watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def __enter__(self) -> HttpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._watchdog.cancel()
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            c.close()

    def _expire(self) -> None:
        """At the deadline: wake every read blocked on this session's sockets."""
        with self._lock:
            self.expired = True
            socks = [c.sock for c in self._conns.values() if c.sock is not None]
        for s in socks:
            with contextlib.suppress(OSError):  # already closed
                s.shutdown(socket.SHUT_RDWR)

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 or self.expired:
            raise FetchError("timeout", "no complete answer within the timeout")
        return left

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        with self._lock:
            conn = self._conns.get((scheme, netloc))
            if conn is None:
                u = urlsplit(f"{scheme}://{netloc}")
                host, port = u.hostname or "", u.port
                conn = (http.client.HTTPSConnection(host, port, context=ssl.create_default_context())
                        if scheme == "https" else http.client.HTTPConnection(host, port))
                self._conns[(scheme, netloc)] = conn
        conn.timeout = self._left()  # each connect and read; the watchdog bounds their sum
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        with self._lock:
            conn = self._conns.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def stream(self, url: str, method: str = "GET", body: bytes | None = None) -> Iterator[bytes]:
        """The answer's body in chunks as they arrive; FetchError for any failure or bound."""
        u = urlsplit(url)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn = self._connection(u.scheme, u.netloc)
        done = False
        try:
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers={"Accept-Encoding": "identity"})
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # a keep-alive connection the server closed meanwhile: one fresh try
                self._drop(u.scheme, u.netloc)
                conn = self._connection(u.scheme, u.netloc)
                conn.request(method, path, body=body, headers={"Accept-Encoding": "identity"})
                resp = conn.getresponse()
            if 300 <= resp.status < 400:
                where = resp.getheader("Location") or "nowhere"
                raise FetchError("redirected", f"{method} {url} answered {resp.status} to {where}; "
                                 "redirects are not followed (give the final URL)")
            if resp.status >= 400:
                raise FetchError("http_error", f"{method} {url} answered HTTP {resp.status} {resp.reason}")
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                raise FetchError("too_large", f"{url}: answer of {int(length):,} bytes, over the "
                                 f"{self.max_bytes:,}-byte cap")
            got = 0
            while chunk := resp.read1(CHUNK):
                got += len(chunk)
                if got > self.max_bytes:
                    raise FetchError("too_large", f"{url}: answer over the {self.max_bytes:,}-byte cap")
                self._left()
                yield chunk
            if self.expired:  # the watchdog's shutdown reads as an end of file
                raise FetchError("timeout", f"{url}: no complete answer within the timeout")
            if length is not None and length.isdigit() and got < int(length):
                raise FetchError("unreachable", f"{url}: connection closed {got:,} bytes into a "
                                 f"{int(length):,}-byte answer")
            resp.close()  # read1 does not mark a fully read answer done: the connection is free again
            done = True
        except FetchError:
            raise
        except (OSError, http.client.HTTPException) as e:
            raise self._failure(url, e) from None
        finally:
            if not done:  # a half-read answer leaves the connection unusable
                self._drop(u.scheme, u.netloc)

    def _failure(self, url: str, e: BaseException) -> FetchError:
        if self.expired or isinstance(e, (TimeoutError, socket.timeout)):  # the watchdog shut the socket
            return FetchError("timeout", f"{url}: no complete answer within the timeout")
        if isinstance(e, http.client.RemoteDisconnected):
            return FetchError("unreachable", f"{url}: closed the connection without an answer")
        if isinstance(e, http.client.HTTPException):  # a bad status line, headers, chunking, length
            return FetchError("bad_response", f"{url}: not a valid HTTP answer ({type(e).__name__})")
        text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)  # refused, reset, DNS, TLS
        return FetchError("unreachable", f"{url}: {text}")

    def read(self, url: str, method: str = "GET", body: bytes | None = None) -> bytearray:
        out = bytearray()  # grown in place: no list of chunks and joined copy side by side
        for chunk in self.stream(url, method, body):
            out += chunk
        return out

    def read_json(self, url: str, method: str = "GET", body: bytes | None = None) -> Any:
        raw = self.read(url, method, body)
        values = raw.count(b",") + raw.count(b"{") + raw.count(b"[")
        if values > self.max_bytes // JSON_BYTES_PER_VALUE:
            raise FetchError("too_large", f"{url}: {values:,} JSON values, over the "
                             f"{self.max_bytes // JSON_BYTES_PER_VALUE:,} the byte cap allows")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise FetchError("bad_response", f"{url}: not JSON ({str(e)[:80]})") from None
