"""The HTTP side of an OTLP POST alone: the CPU the OTLP listener spends on one POST in
Triton's shape (about a dozen spans of OTLP/JSON, one POST at a time on one keep-alive
connection) with decoding and counting replaced by no-ops: the connection's deadlines, the
request head, the body read, the checks, the budget, the counters and the reply. Beside it,
the floor of any Python server: a bare socket loop that reads the same requests and writes
a fixed answer. The client is another process, so only the server's CPU is counted.

    .venv/bin/python bench/otlp_http.py [--posts 3000] [--root /path/to/another/checkout]

--root measures another checkout's listener (its exporter package, this venv), for a
before/after in one session. Run it in turns with and without --root on a shared machine.
"""

from __future__ import annotations

import argparse
import http.client
import resource
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLOOR_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def client(port: int, posts: int) -> None:
    """Post `posts` Triton bodies after a line on stdin (so body generation is not measured)."""
    sys.path.insert(0, str(ROOT))
    from bench.otlp_ingest import triton_bodies

    bodies = triton_bodies(posts)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()
    for b in bodies:
        conn.request("POST", "/v1/traces", b, {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status


def drive(port: int, posts: int) -> None:
    c = subprocess.Popen([sys.executable, __file__, "--client", str(port), "--posts", str(posts)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert c.stdout is not None and c.stdin is not None
    assert c.stdout.readline().strip() == "ready"
    c.stdin.write("go\n")
    c.stdin.flush()
    assert c.wait() == 0


def thread_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


def floor(posts: int) -> float:
    """CPU seconds per POST of a bare loop: read the head, read the body, write a fixed answer."""
    ls = socket.create_server(("127.0.0.1", 0))
    spent: list[float] = []

    def serve() -> None:
        c, _ = ls.accept()
        f = c.makefile("rb")
        t0 = thread_cpu()
        while f.readline():
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            f.read(length)
            c.sendall(FLOOR_REPLY)
        spent.append(thread_cpu() - t0)
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    drive(ls.getsockname()[1], posts)
    t.join()
    ls.close()
    return spent[0] / posts


def listener(posts: int) -> float:
    """CPU seconds per POST of the OTLP listener's connection thread, decode and ingest no-ops."""
    from exporter.histogram import DEFAULT_STAGE_BUCKETS
    from exporter.otlp import receiver
    from exporter.traces.source import bounds_ns
    from exporter.traces.tailer import TailerSettings, TraceTailer

    def no_decode(body: bytes, ctype: str | None, enc: str | None, charge: Any = None) -> tuple[list[Any], str]:
        return [], "application/json"

    receiver.decode = no_decode  # type: ignore[assignment]
    receiver.OtlpIngest.ingest = lambda self, req: (12, 0, "")  # type: ignore[method-assign]
    spent: list[float] = []
    with tempfile.TemporaryDirectory() as state:
        tailer = TraceTailer(TailerSettings([], state, bounds_ns(list(DEFAULT_STAGE_BUCKETS))))
        server = receiver.OtlpServer(receiver.OtlpIngest(tailer.aggregator, 60.0), "127.0.0.1", 0)
        handler = server.httpd.RequestHandlerClass
        handle = handler.handle

        def timed(self: Any) -> None:
            t0 = thread_cpu()
            try:
                handle(self)
            finally:
                spent.append(thread_cpu() - t0)

        handler.handle = timed  # type: ignore[method-assign]
        server.start()
        drive(server.port, posts)
        while not spent:
            threading.Event().wait(0.05)
        server.stop()
    return spent[0] / posts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=3000)
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose listener is measured")
    ap.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        client(a.client, a.posts)
        return
    sys.path.insert(0, str(a.root.resolve()))
    base = floor(a.posts)
    ms = listener(a.posts)
    import exporter

    print(f"{a.posts} POSTs of 12 spans (OTLP/JSON), one at a time on one keep-alive connection")
    print(f"bare socket loop (the floor)          {base * 1000:6.3f} ms CPU per POST")
    print(f"OTLP listener, decode/ingest no-ops   {ms * 1000:6.3f} ms CPU per POST  "
          f"({Path(exporter.__file__).parent.parent})")


if __name__ == "__main__":
    main()
