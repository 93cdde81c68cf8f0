"""Passing accepted OTLP payloads on, unchanged, to the user's trace backends.

One bounded queue (payloads and bytes) and one thread per backend: ingestion only ever enqueues (a full queue
drops the payload, counted), so a slow or dead backend never slows it. A payload is
retried with backoff only where the backend cannot have taken it (no connection, or
429/502/503/504); a timeout after sending is counted as dropped, not retried, so nothing
is forwarded twice.
"""

from __future__ import annotations

import http.client
import logging
import queue
import socket
import threading
import urllib.error
import urllib.request

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
        body, headers = payload
        backoff = self.first_backoff
        why = ""
        for _ in range(MAX_ATTEMPTS):
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    r.read()
                with self.lock:
                    self.sent += 1
                return
            except urllib.error.HTTPError as e:
                why = f"HTTP {e.code}"
                if e.code not in RETRY_STATUS:
                    break
            except (TimeoutError, http.client.RemoteDisconnected) as e:
                why = f"no answer ({e}); not resent, the backend may have it"
                break
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    why = "no answer in time; not resent, the backend may have it"
                    break
                why = f"cannot connect ({reason})"
            if self.stopping.wait(backoff):
                break
            backoff = min(backoff * 2, 5.0)
        self._drop(why)


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
