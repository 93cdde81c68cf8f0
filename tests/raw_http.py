"""Plain-socket HTTP pieces for tests that need bytes no HTTP library would send or take:
read a message's head, and serve every connection a listening socket accepts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


def read_head(c: socket.socket) -> bytes:
    """What the peer sent up to the end of its message head (and whatever came with it), or
    until it closed: the caller checks for b"\\r\\n\\r\\n" where a cut-short head matters."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def serve_forever(sock: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Accept on `sock` in a daemon thread until it is closed, `handle` called with each
    connection in that thread (it closes the connection itself)."""
    def run() -> None:
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            handle(c)

    threading.Thread(target=run, daemon=True).start()
