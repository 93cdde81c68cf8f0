"""Passing accepted OTLP payloads on, unchanged, to the user's trace backends.

One bounded queue (payloads and bytes) and one thread per backend: ingestion only ever enqueues (a full queue
drops the payload, counted), so a slow or dead backend never slows it. A payload is
retried with backoff only where the backend cannot have taken it (no connection, or
429/502/503/504); once the body may have gone out (a timeout or a reset while waiting for
the answer) it is counted as dropped, not retried, so nothing is forwarded twice.
Redirects are not followed (a 3xx is a dropped payload).
"""

from __future__ import annotations

import http.client
import logging
import queue
import threading
import urllib.parse

log = logging.getLogger("otlp")

QUEUE_PAYLOADS = 256  # per backend
QUEUE_BYTES = 64 << 20  # per backend: bounds memory whatever the payload sizes
TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 5
RETRY_STATUS = frozenset({429, 502, 503, 504})

Payload = tuple[bytes, dict[str, str]]  # body as received, its Content-Type / Content-Encoding


class _Backend(threading.Thread):
    def __init__(self, url: str, queue_size: int, timeout: float, first_backoff: float) -> None:
        super().__init__(name=f"otlp-forward {url}", daemon=True)
        self.url = url
        self.queue: queue.Queue[Payload] = queue.Queue(maxsize=queue_size)
        self.timeout = timeout
        self.first_backoff = first_backoff
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.dropped = 0
        self.sent = 0
        self.queued_bytes = 0
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def submit(self, payload: Payload) -> None:
        size = len(payload[0])
        with self.lock:
            if self.queued_bytes + size > QUEUE_BYTES:
                full = True
            else:
                full = False
                self.queued_bytes += size
        if not full:
            try:
                self.queue.put_nowait(payload)
                return
            except queue.Full:
                with self.lock:
                    self.queued_bytes -= size
        self._drop("queue full")

    def _drop(self, why: str) -> None:
        with self.lock:
            self.dropped += 1
            first = self.dropped == 1
        (log.warning if first else log.debug)("OTLP payload for %s dropped: %s", self.url, why)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                payload = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            with self.lock:
                self.queued_bytes -= len(payload[0])
            self._send(payload)

    def _send(self, payload: Payload) -> None:
        """Retried only while the backend cannot have the payload: the connection failed, or it
        answered 429/502/503/504. From the moment the body may have gone out, one try only; a
        redirect is not followed (it would be a GET without the body). Ends counted once: sent or dropped."""
        body, headers = payload
        backoff = self.first_backoff
        why = ""
        for _ in range(MAX_ATTEMPTS):
            outcome, why = self._attempt(body, headers)
            if outcome == "sent":
                with self.lock:
                    self.sent += 1
                return
            if outcome == "final" or self.stopping.wait(backoff):
                break
            backoff = min(backoff * 2, 5.0)
        self._drop(why)

    def _attempt(self, body: bytes, headers: dict[str, str]) -> tuple[str, str]:
        """("sent" | "retry" | "final", why) of one POST."""
        conn = self.connection()
        try:
            try:
                conn.connect()
            except OSError as e:
                return "retry", f"cannot connect ({e})"
            try:
                conn.request("POST", self.target, body=body, headers=headers)
                r = conn.getresponse()
                r.read(64 << 10)  # the answer is not used: read a bounded part so the connection ends cleanly
            except (OSError, http.client.HTTPException) as e:
                return "final", f"no answer ({e!r}); not resent, the backend may have it"
        finally:
            conn.close()
        if 200 <= r.status < 300:
            return "sent", ""
        if r.status in RETRY_STATUS:
            return "retry", f"HTTP {r.status}"
        if 300 <= r.status < 400:
            return "final", f"HTTP {r.status} redirect to {r.getheader('Location', '?')!r} not followed"
        return "final", f"HTTP {r.status}"

    def connection(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)


class Forwarder:
    def __init__(self, urls: list[str], queue_size: int = QUEUE_PAYLOADS, timeout: float = TIMEOUT_SECONDS,
                 first_backoff: float = 0.25) -> None:
        self.backends = [_Backend(u, queue_size, timeout, first_backoff) for u in urls]

    def submit(self, body: bytes, headers: dict[str, str]) -> None:
        for b in self.backends:
            b.submit((body, headers))

    @property
    def dropped(self) -> int:
        return sum(b.dropped for b in self.backends)

    def start(self) -> None:
        for b in self.backends:
            b.start()

    def stop(self) -> None:
        for b in self.backends:
            b.stopping.set()
        for b in self.backends:
            b.join(timeout=5)
