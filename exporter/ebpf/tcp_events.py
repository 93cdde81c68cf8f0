"""`tcp-events`: live per-call TCP send/recv lines on the watched ports, from a ring buffer."""

from __future__ import annotations

import argparse
import ctypes as ct
import socket
import sys
import time
from datetime import datetime
from typing import Any

from .declaration import DeclarationError, bpf_dir, load_declaration, metric_key
from .loader import LoadError, load_program

DEFAULT_PORTS = (8000, 8001)
HEADER = f"{'TIME':15} {'PID':>7} {'COMM':16} {'SADDR:SPORT':>28} {'DADDR:DPORT':>28} {'BYTES':>8} DIR"


def address(family: int, raw: bytes, port: int) -> str:
    if family == socket.AF_INET6:
        return f"[{socket.inet_ntop(socket.AF_INET6, raw[:16])}]:{port}"
    return f"{socket.inet_ntop(socket.AF_INET, raw[:4])}:{port}"


def event_line(e: Any, mono_to_wall: float) -> str:
    """One event of bpf/tcp_events.c as a line; its monotonic stamp shown as local wall time."""
    when = datetime.fromtimestamp(e.ts_ns / 1e9 + mono_to_wall).strftime("%H:%M:%S.%f")
    comm = bytes(e.comm).split(b"\0", 1)[0].decode(errors="replace")
    direction = metric_key().field("direction").label(e.direction).upper()
    return (f"{when:15} {e.pid:>7} {comm:16} {address(e.family, bytes(e.saddr), e.sport):>28} "
            f"{address(e.family, bytes(e.daddr), e.dport):>28} {e.bytes:>8} {direction}")


def run_tcp_events(args: argparse.Namespace) -> int:
    ports = args.port or list(DEFAULT_PORTS)
    bad = [p for p in ports if not 0 < p < 65536]
    if bad:
        print(f"inference-profiler: error: --port must be 1-65535, got {bad[0]}", file=sys.stderr)
        return 2
    if args.record:
        from ..wire.recorder import run_record

        return run_record(args.record, ports, args.count or 0)
    try:
        prog = load_program(load_declaration(bpf_dir() / "tcp_events.yaml"), ports)
    except (LoadError, DeclarationError) as e:
        print(f"inference-profiler: error: tcp-events: {e}", file=sys.stderr)
        return 1
    wanted = args.count or 0
    printed = 0
    mono_to_wall = time.time() - time.monotonic()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
    table = prog.bpf[b"events"]

    def on_event(_ctx: Any, data: Any, _size: int) -> None:
        nonlocal printed
        if wanted and printed >= wanted:
            return
        print(event_line(table.event(data), mono_to_wall))
        printed += 1

    table.open_ring_buffer(on_event)
    print(f"watching TCP send/recv on port(s) {', '.join(map(str, ports))} "
          f"(attach method {prog.method}); Ctrl-C to stop", file=sys.stderr)
    print(HEADER, flush=True)
    try:
        while not wanted or printed < wanted:
            prog.bpf.ring_buffer_poll(200)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        dropped = int(prog.bpf[b"dropped"][ct.c_int(0)].value)
        prog.close()
    if dropped:
        print(f"{dropped} event(s) dropped: the ring buffer was full", file=sys.stderr)
    return 0
