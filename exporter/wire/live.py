"""The wire join in the daemon: turns held in a bounded window until their traces arrive.

Traces reach the exporter late (a trace file rolls after log-frequency requests; OTLP
spans after Triton's export delay), while the kernel sends a turn as soon as its
response is acknowledged. So turns wait here, bounded:

- by age: a turn whose first read is more than `hold_seconds` before the newest turn seen
  is dropped (its request, if traced later, is counted `no_socket_event` or `ambiguous`);
- by memory: at most `max_bytes` of turns (TURN_BYTES each, measured), the oldest dropped
  first, for every port and pod together.

A turn joined to a request leaves the window, so a later batch cannot join it twice.
`observe()` is what a trace pipeline calls per batch of finished traces; it returns
plain arrays the aggregator adds to its own histograms and counters, so the joined
stages are committed (and survive a restart) with the rest of the batch.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..stages import Anatomy
from .join import JOIN_RESULTS, LOOKBACK_NS, WIRE_STAGES, join
from .requests import requests_of
from .turns import Turn

TURN_BYTES = 400  # a held Turn and its index entries (sys.getsizeof of its fields, rounded up)
HOLD_SECONDS = 300.0
_RESULT = {r: i for i, r in enumerate(JOIN_RESULTS)}
MAX_BYTES = 32 << 20  # ~80,000 turns: 300 s at ~270 requests/s
# The ring buffer (1 MiB, 7,710 records) is read this often: up to 77,000 records/s are
# taken before it fills; more are dropped in the kernel and counted.
READ_EVERY = 0.1


@dataclass
class WireObservations:
    """A batch's join: observations for the stage histograms, per-row segments and the results."""

    rows: npt.NDArray[np.intp]  # index into the batch's observed rows, one per observation
    stages: npt.NDArray[np.intp]  # index into WIRE_STAGES
    ns: npt.NDArray[np.int64]
    socket_wait: npt.NDArray[np.int64]  # per observed row, -1 where not joined (timeline segment)
    ack_wait: npt.NDArray[np.int64]
    result_of: npt.NDArray[np.intp]  # per observed row, index into JOIN_RESULTS
    results: Counter[str] = field(default_factory=Counter)  # JOIN_RESULTS over the batch's rows


class TurnWindow:
    """Turns waiting for their traces; thread-safe (the reader thread adds, the pipeline joins)."""

    def __init__(self, ports: dict[str, frozenset[int]], hold_seconds: float = HOLD_SECONDS,
                 max_bytes: int = MAX_BYTES) -> None:
        self.ports = ports
        self.hold_ns = int(hold_seconds * 1e9)
        self.max_turns = max(1, max_bytes // TURN_BYTES)
        self._lock = threading.Lock()
        self._turns: dict[tuple[int, int, int], Turn] = {}
        self._reads: list[tuple[int, tuple[int, int, int]]] = []  # (first read, key), sorted
        self._joined: dict[tuple[int, int, int], None] = {}  # recently joined, so a re-sent record is ignored
        self._newest = 0
        self.expired = 0  # turns dropped by age, never joined
        self.evicted = 0  # turns dropped for memory, never joined

    def __len__(self) -> int:
        return len(self._turns)

    def add(self, turn: Turn) -> None:
        """A record from the kernel; a later record of the same turn replaces the earlier."""
        self.add_many((turn,))

    def add_many(self, turns: Sequence[Turn]) -> None:
        """Records from the kernel, in the order it sent them."""
        with self._lock:
            for t in turns:
                self._add(t)

    def _add(self, turn: Turn) -> None:
        if not turn.first_read_ns:
            return
        if turn.key in self._joined:
            return
        if turn.key not in self._turns:
            entry = (turn.first_read_ns, turn.key)
            if not self._reads or entry >= self._reads[-1]:
                self._reads.append(entry)  # the usual case: turns come in order
            else:
                bisect.insort(self._reads, entry)
        self._turns[turn.key] = turn
        self._newest = max(self._newest, turn.first_read_ns)
        self._trim()

    def _trim(self) -> None:
        cut = 0
        while cut < len(self._reads) and self._reads[cut][0] < self._newest - self.hold_ns:
            cut += 1
        self.expired += self._drop(cut)
        self.evicted += self._drop(max(0, len(self._reads) - self.max_turns))

    def _drop(self, n: int) -> int:
        """Drop the n oldest entries; how many of them were still unjoined."""
        lost = sum(self._turns.pop(key, None) is not None for _, key in self._reads[:n])
        del self._reads[:n]
        return lost

    def observe(self, stamps: npt.NDArray[np.int64], codes: npt.NDArray[np.int8], an: Anatomy) -> WireObservations:
        """Join the rows of a batch (the rows `an` was computed over) with the held turns."""
        requests = requests_of(stamps, codes, an)
        arrivals = [r.arrival_ns for r in requests if r.arrival_ns >= 0]
        with self._lock:
            lo = bisect.bisect_left(self._reads, (min(arrivals, default=0) - LOOKBACK_NS,))
            hi = bisect.bisect_right(self._reads, (max(arrivals, default=0) + 1,))
            turns = [t for _, key in self._reads[lo:hi] if (t := self._turns.get(key)) is not None]
            out = join(requests, turns, self.ports)
            joined = {w.turn.key for _, w in out if w is not None}
            for key in joined:
                self._turns.pop(key, None)  # joined once
                self._joined[key] = None
            while len(self._joined) > self.max_turns:
                del self._joined[next(iter(self._joined))]
            if joined:
                self._reads = [e for e in self._reads if e[1] not in joined]
        n = len(requests)
        socket_wait = np.full(n, -1, dtype=np.int64)
        ack_wait = np.full(n, -1, dtype=np.int64)
        rows: list[int] = []
        stages: list[int] = []
        ns: list[int] = []
        for i, (_, w) in enumerate(out):
            if w is None:
                continue
            socket_wait[i], ack_wait[i] = w.socket_wait_ns, w.ack_wait_ns
            for j, v in enumerate((w.socket_wait_ns, w.ack_wait_ns, w.wire_ns)):
                rows.append(i)
                stages.append(j)
                ns.append(v)
        results: Counter[str] = Counter({r: 0 for r in JOIN_RESULTS})
        results.update(r for r, _ in out)
        result_of = np.asarray([_RESULT[r] for r, _ in out], dtype=np.intp)
        return WireObservations(np.asarray(rows, dtype=np.intp), np.asarray(stages, dtype=np.intp),
                                np.asarray(ns, dtype=np.int64), socket_wait, ack_wait, result_of, results)


class TurnFeed:
    """The reader thread: socket_turns.c's ring buffer into a TurnWindow, a batch every READ_EVERY
    seconds (and whenever a trace batch is about to join: drain())."""

    def __init__(self, window: TurnWindow, ports: Sequence[int]) -> None:
        from .recorder import TurnRecorder

        self.window = window
        self.recorder = TurnRecorder(ports)
        self._reading = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire-turns", daemon=True)

    def start(self) -> TurnFeed:
        self._thread.start()
        return self

    def drain(self) -> None:
        """Every record the kernel has sent, into the window (turns never read are left out)."""
        with self._reading:
            if not self._stop.is_set():
                self.window.add_many(self.recorder.take(read_only=True))

    def _run(self) -> None:
        while not self._stop.wait(READ_EVERY):
            self.drain()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._reading:
            self.recorder.close()


STAGE_NAMES = WIRE_STAGES  # the `stage` label values these observations take


def unjoinable(stamps: npt.NDArray[np.int64], codes: npt.NDArray[np.int8], an: Anatomy) -> WireObservations:
    """The join where it cannot run (eBPF unavailable): every request `unsupported`."""
    n = len(stamps)
    none = np.zeros(0, dtype=np.intp)
    return WireObservations(none, none, np.zeros(0, dtype=np.int64), np.full(n, -1, dtype=np.int64),
                            np.full(n, -1, dtype=np.int64), np.full(n, _RESULT["unsupported"], dtype=np.intp),
                            Counter({r: n if r == "unsupported" else 0 for r in JOIN_RESULTS}))
