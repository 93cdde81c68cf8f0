"""Bursts of requests that keep Triton's HTTP frontend busy before its trace starts.

Shared by bench/wire_frontend.py and tests/test_wire_frontend_real.py: request bodies that
are small on the wire but cost the frontend thread time to inflate and parse, and a client
of many keep-alive connections in one process (raw sockets, one selector) that stamps
time.monotonic_ns() at send and receipt, and can send in waves (every connection at once,
the next wave when every response is in).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from exporter.demo.launcher import MODEL
from tests.wire_driver import Sent

Body = Callable[[str], tuple[bytes, dict[str, str]]]  # request id -> (HTTP body, extra headers)


def add_sub_inputs() -> list[dict[str, Any]]:
    data = [1.0] * 4
    return [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": data},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": data}]


def gzip_body(kb: int) -> Body:
    """gzip-compressed JSON (Content-Encoding: gzip, as tritonclient's request_compression_algorithm
    sends it) that inflates to kb KiB: a top-level field Triton parses and ignores, so its HTTP
    thread inflates and parses all of it before the request starts, and add_sub gets 8 floats.
    On the wire a few hundred bytes: one read."""
    pad = "x" * (kb * 1024)

    def body(rid: str) -> tuple[bytes, dict[str, str]]:
        doc = json.dumps({"id": rid, "inputs": add_sub_inputs(), "padding": pad}).encode()
        return gzip.compress(doc, 6), {"Content-Encoding": "gzip"}
    return body


def request_bytes(port: int, body: bytes, headers: dict[str, str], model: str = MODEL) -> bytes:
    head = [f"POST /v2/models/{model}/infer HTTP/1.1", f"Host: 127.0.0.1:{port}",
            "Content-Type: application/json", f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Conn:
    """One keep-alive connection of loop_clients and the request it has in flight."""

    def __init__(self, port: int, payloads: list[tuple[str, bytes]]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_port = self.sock.getsockname()[1]
        self.payloads = payloads
        self.next = 0
        self.sent_ns = 0
        self.buf = b""

    def send(self) -> None:
        self.buf = b""
        self.sent_ns = time.monotonic_ns()
        self.sock.sendall(self.payloads[self.next][1])

    def response_done(self) -> bool:
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return False
        head = self.buf[:head_end].decode("latin-1").lower()
        if not head.startswith("http/1.1 200"):
            raise AssertionError(f"Triton answered: {self.buf[:300]!r}")
        length = re.search(r"content-length:\s*(\d+)", head)
        if length is None:
            raise AssertionError(f"no Content-Length in Triton's answer: {head!r}")
        return len(self.buf) >= head_end + 4 + int(length.group(1))


def loop_clients(port: int, clients: int, requests: int, body: Body, waves: bool, realtime: bool = False,
                 prefix: str = "b") -> list[Sent]:
    """`clients` keep-alive connections of this process, `requests` each (ids prefix{c}-{k}): each
    sends its next request as soon as it read a response, or (`waves`) every connection sends at
    once and the next wave starts when every response is in. Every body is built before the first
    is sent; a response read whole is acknowledged at once (TCP_QUICKACK), so the server sees its
    ACK when the client has it, not with the client's next request. `realtime`: the process runs at SCHED_FIFO (root) while it sends, so that on a busy
    machine it reads each response when it arrives (call it in a process of its own)."""
    conns = []
    for c in range(clients):
        payloads = []
        for k in range(requests):
            rid = f"{prefix}{c}-{k}"
            data, headers = body(rid)
            payloads.append((rid, request_bytes(port, data, headers)))
        conns.append(_Conn(port, payloads))
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    out: list[Sent] = []
    try:
        if realtime:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        idle: list[_Conn] = []
        for conn in conns:
            conn.send()
        live = len(conns)
        while live:
            events = sel.select(timeout=120)
            if not events:
                raise AssertionError(f"no response for 120 s ({live} connections waiting)")
            for key, _ in events:
                conn = key.data
                chunk = conn.sock.recv(1 << 20)
                if not chunk:
                    raise AssertionError("Triton closed a connection")
                conn.buf += chunk
                if not conn.response_done():
                    continue
                # acknowledged now, not with the next request (a wave's next request can be ms away)
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                out.append(Sent(conn.payloads[conn.next][0], conn.local_port, conn.sent_ns, time.monotonic_ns()))
                conn.next += 1
                if conn.next == requests:
                    sel.unregister(conn.sock)
                    conn.sock.close()
                    live -= 1
                elif not waves:
                    conn.send()
                else:
                    idle.append(conn)
                    if len(idle) == live:
                        for waiting in idle:
                            waiting.send()
                        idle.clear()
    finally:
        if realtime:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        for conn in conns:
            conn.sock.close()
        sel.close()
    return out
