"""Loading bpf/socket_turns.c and reading its ring buffer: the per-turn socket records."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable, Sequence
from typing import Any

from ..ebpf.declaration import bpf_dir, load_declaration
from ..ebpf.loader import LoadedProgram, load_program
from .btf import kernel_offsets
from .turns import DROP_REASONS, RECORD_SIZE, Turn, decode

# The fields bpf/socket_turns.c reads beyond the head of struct sock_common.
_OFFSETS: dict[str, tuple[str, ...]] = {"tcp_sock": ("write_seq",), "sk_buff": ("data",)}
_DEFINES = {("tcp_sock", "write_seq"): "TCP_WRITE_SEQ_OFFSET", ("sk_buff", "data"): "SKB_DATA_OFFSET"}


def offset_defines() -> list[str]:
    """-D values for the running kernel's struct layout (none: the headers' layout is used)."""
    found = kernel_offsets(_OFFSETS)
    return [f"{_DEFINES[k]}={v}" for k, v in sorted(found.items())] if found else []


class TurnRecorder:
    """The socket_turns program, loaded and attached; poll() hands each record to `on_turn`."""

    def __init__(self, ports: Sequence[int], on_turn: Callable[[Turn], None]) -> None:
        decl = load_declaration(bpf_dir() / "socket_turns.yaml")
        self.program: LoadedProgram = load_program(decl, ports, extra_defines=offset_defines())
        self._on_turn = on_turn
        self.bad_records = 0

        def on_record(_ctx: Any, data: Any, size: int) -> None:
            if size < RECORD_SIZE:
                self.bad_records += 1
                return
            self._on_turn(decode(ct.string_at(data, RECORD_SIZE)))

        self.program.bpf[b"turns"].open_ring_buffer(on_record)

    @property
    def method(self) -> str:
        return self.program.method

    def poll(self, timeout_ms: int = 200) -> None:
        self.program.bpf.ring_buffer_poll(timeout_ms)

    def dropped(self) -> dict[str, int]:
        """Records the kernel could not send, by reason (DROP_REASONS)."""
        table = self.program.bpf[b"dropped"]
        return {r: int(table[ct.c_int(i)].value) for i, r in enumerate(DROP_REASONS)}

    def close(self) -> None:
        self.program.close()


def run_record(path: str, ports: Sequence[int], count: int = 0) -> int:
    """`tcp-events --record FILE`: every socket turn on the watched ports as one JSON line, until
    Ctrl-C (or SIGTERM), or `count` records."""
    import signal
    import sys

    from ..ebpf.declaration import DeclarationError
    from ..ebpf.loader import LoadError

    try:
        out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
    except OSError as e:
        print(f"inference-profiler: error: tcp-events: cannot write {path}: {e.strerror}", file=sys.stderr)
        return 1
    written = 0

    def on_turn(t: Turn) -> None:
        nonlocal written
        if not count or written < count:
            out.write(t.to_json() + "\n")
            written += 1

    try:
        recorder = TurnRecorder(ports, on_turn)
    except (LoadError, DeclarationError) as e:
        out.close()
        print(f"inference-profiler: error: tcp-events: {e}", file=sys.stderr)
        return 1
    stop: list[int] = []  # a flag, not KeyboardInterrupt: one raised inside BCC's callback is lost

    def on_signal(signum: int, _frame: object) -> None:
        stop.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"recording socket turns on port(s) {', '.join(map(str, ports))} to {path} "
          f"(attach method {recorder.method}); Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while not stop and (not count or written < count):
            recorder.poll(200)
            out.flush()
    finally:
        recorder.poll(0)  # what the kernel sent before the stop
        dropped = recorder.dropped()
        recorder.close()
        out.close()
    lost = {r: n for r, n in dropped.items() if n}
    print(f"{written} socket turn record(s) written"
          + (f"; dropped in the kernel: {', '.join(f'{r}={n}' for r, n in lost.items())}" if lost else ""),
          file=sys.stderr)
    return 0
