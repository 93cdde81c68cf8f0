"""bpf/socket_turns.c in the real kernel: one record per request/response turn on loopback, its
stamps in order and its byte counts exact; a port not watched gives nothing."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from exporter.ebpf import handoff
from exporter.wire.turns import Turn, latest

pytestmark = pytest.mark.ebpf


def _echo_server(listener: socket.socket, request: int, response: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            while True:
                got = 0
                while got < request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                if got < request:
                    break
                conn.sendall(b"r" * response)


def test_each_exchange_is_one_turn_with_ordered_stamps_and_exact_bytes() -> None:
    from exporter.wire.recorder import TurnRecorder

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    other = socket.socket()  # the same traffic on a port not watched
    other.bind(("127.0.0.1", 0))
    other.listen()
    other.settimeout(0.2)
    got: list[Turn] = []
    recorder = TurnRecorder([port], got.append)
    handed = recorder.program is not None or not handoff.available()
    stop = threading.Event()
    servers = [threading.Thread(target=_echo_server, args=(s, 3000, 20000, stop)) for s in (listener, other)]
    for t in servers:
        t.start()
    sent: list[tuple[int, int, int]] = []  # (client port, send, receipt)
    try:
        for target in (port, other.getsockname()[1]):
            for _conn in range(2):
                with socket.create_connection(("127.0.0.1", target)) as c:
                    for _ in range(5):
                        t0 = time.monotonic_ns()
                        c.sendall(b"q" * 3000)
                        n = 0
                        while n < 20000:
                            n += len(c.recv(65536))
                        if target == port:
                            sent.append((c.getsockname()[1], t0, time.monotonic_ns()))
        time.sleep(0.2)
        recorder.poll(100)
    finally:
        stop.set()
        for t in servers:
            t.join()
        dropped = recorder.dropped()
        recorder.close()
        listener.close()
        other.close()
    turns = latest(got)
    assert handed, "compiled in the handoff child: this process never loads BCC for it"
    assert dropped == {"ring_full": 0, "rate": 0, "sockets_full": 0}
    assert all(t.lport == port for t in turns)
    assert len(turns) == len(sent) == 10
    for (cport, t0, t1), t in zip(sent, turns, strict=True):
        assert t.rport == cport and t.laddr == t.raddr == "127.0.0.1"
        assert (t.bytes_in, t.bytes_out) == (3000, 20000)
        assert t0 <= t.first_in_ns <= t.first_read_ns <= t.last_read_ns <= t.first_write_ns <= t.last_write_ns
        assert t.last_write_ns <= t.acked_ns  # the client's ACK of the last byte
        assert t.acked_ns <= t1 + 50_000_000
    assert [t.turn for t in turns] == [1, 2, 3, 4, 5] * 2
