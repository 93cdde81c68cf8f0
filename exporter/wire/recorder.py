"""Loading bpf/socket_turns.c and reading its ring buffer: the per-turn socket records.

The program is compiled by the short-lived child that compiles the metric programs
(exporter/ebpf/handoff.py), so BCC and LLVM never enter the reading process; where
the daemon cannot read maps by itself it is loaded here with BCC. Either way the ring
buffer is read through its own mapping (ring.py), a batch of records at a time.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Sequence

from ..ebpf import handoff
from ..ebpf.bpfsys import BpfMap
from ..ebpf.declaration import bpf_dir, load_declaration
from ..ebpf.loader import load_program
from .btf import btf_defines
from .ring import RingReader
from .turns import DROP_REASONS, RECORD_DTYPE, Turn, decode_many

# The fields bpf/socket_turns.c reads beyond the head of struct sock_common, by the -D naming each.
BTF_MEMBERS = {"TCP_WRITE_SEQ_OFFSET": ("tcp_sock", "write_seq"), "SKB_DATA_OFFSET": ("sk_buff", "data")}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class TurnRecorder:
    """The socket_turns program, loaded and attached. take() returns the records the kernel sent
    since the last call; poll() hands each to `on_turn`."""

    def __init__(self, ports: Sequence[int], on_turn: Callable[[Turn], None] | None = None) -> None:
        decl = load_declaration(bpf_dir() / "socket_turns.yaml")
        self.program: handoff.Handed | None = None
        if handoff.available():
            self.program = handoff.load_plain_in_child(decl, ports, BTF_MEMBERS)
            self.method = self.program.method
            self._dropped = self.program.maps["dropped"]
            turns_fd = self.program.maps["turns"].fd
        else:  # no bpf(2) number known here: BCC in this process
            self._bcc = load_program(decl, ports, extra_defines=btf_defines(BTF_MEMBERS))
            self.method = self._bcc.method
            self._dropped = BpfMap(os.dup(self._bcc.bpf[b"dropped"].map_fd))
            turns_fd = self._bcc.bpf[b"turns"].map_fd
        self.ring = RingReader(turns_fd, RECORD_DTYPE)
        self._on_turn = on_turn

    def take(self, read_only: bool = False) -> list[Turn]:
        """The records sent since the last take; read_only: only turns whose request was read."""
        return decode_many(self.ring.read(), read_only)

    def poll(self, timeout_ms: int = 200) -> None:
        """Wait up to timeout_ms if nothing is there yet (the program wakes no reader: records are
        read by time, in batches), then hand each record to on_turn."""
        if not self.ring.pending():
            time.sleep(timeout_ms / 1000)
        for t in self.take():
            if self._on_turn is not None:
                self._on_turn(t)

    def dropped(self) -> dict[str, int]:
        """Records the kernel could not send, by reason (DROP_REASONS)."""
        out = {}
        for i, r in enumerate(DROP_REASONS):
            v = self._dropped.lookup(_U32.pack(i))
            out[r] = _U64.unpack_from(v)[0] if v else 0
        return out

    def close(self) -> None:
        self.ring.close()
        if self.program is not None:
            self.program.close()
        else:
            self._dropped.close()
            self._bcc.close()


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
            recorder.poll(50)  # the 1 MiB ring fills in ~0.3 s at 25,000 records/s
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
