"""The wire join in the daemon: turns held in a bounded window until their traces arrive.

Traces reach the exporter late (a trace file rolls after log-frequency requests; OTLP
spans after Triton's export delay), while the kernel sends a turn as soon as its
response is acknowledged. So turns wait here, bounded:

- by age: a turn whose first read (or, for a turn of writes only, first write) is more than `hold_seconds` before the newest turn seen
  is dropped (its request, if traced later, is counted `no_socket_event` or `ambiguous`);
- by memory: at most `max_bytes` of turns (TURN_BYTES each: one numpy row, window.py), the
  oldest dropped first (down to 90 %), for every port and pod together.

A turn joined to a request stays marked joined until it ages out, so neither a later batch
nor a record of it the kernel sends again can join it twice. A join reads only the rows its
requests can need (window.joinable); one that joined nothing is remembered with those rows,
so requests held across batches (held.py) are not joined again while their turns are unchanged.
`observe()` is what a trace pipeline calls per batch of finished traces; it returns
plain arrays the aggregator adds to its own histograms and counters, so the joined
stages are committed (and survive a restart) with the rest of the batch.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..stages import Anatomy
from .join import JOIN_RESULTS, LOOKBACK_NS, WIRE_STAGES, Request, Wire, join
from .requests import requests_of
from .turns import Turn
from .window import (
    JOINED,
    RAW_ROW,
    TURN_ROW,
    HeldTurns,
    held_rows,
    joinable,
    row_of,
    taken,
    turn_of,
)

TURN_BYTES = TURN_ROW.itemsize  # a held turn: one numpy row (window.py)
HOLD_SECONDS = 300.0
_RESULT = {r: i for i, r in enumerate(JOIN_RESULTS)}
HELD = -1  # result_of of a request held for a later batch (exporter/wire/held.py)
MAX_BYTES = 16 << 20  # ~176,000 records: 300 s at ~580 records/s (joined ones stay until they age out)
# The ring buffer (1 MiB, 7,710 records) is looked at this often, and read when an eighth of it
# is waiting or READ_AT_LEAST seconds went by (and before every join): up to ~67,000 records/s
# are taken before it fills (more are dropped in the kernel and counted), and at a few hundred
# records/s it is read about once a second, not ten times (each read has a fixed cost).
READ_EVERY = 0.1
READ_AT_LEAST = 1.0
READ_FILLED = 1 / 8
RECENT_JOINS = 4  # joins that joined nothing, remembered with a digest of the rows they read
DROPS_EVERY = 10  # looks: the kernel's drop counts are read once a second


@dataclass
class WireObservations:
    """A batch's join: observations for the stage histograms, per-row segments and the results."""

    rows: npt.NDArray[np.intp]  # index into the batch's observed rows, one per observation
    stages: npt.NDArray[np.intp]  # index into WIRE_STAGES
    ns: npt.NDArray[np.int64]
    socket_wait: npt.NDArray[np.int64]  # per observed row, -1 where not joined (timeline segment)
    ack_wait: npt.NDArray[np.int64]
    result_of: npt.NDArray[np.intp]  # per observed row, index into JOIN_RESULTS (HELD: counted later)
    results: Counter[str] = field(default_factory=Counter)  # JOIN_RESULTS over the batch's rows


class TurnWindow:
    """Turns waiting for their traces; thread-safe (the reader thread adds, the pipeline joins)."""

    def __init__(self, ports: dict[str, frozenset[int]], hold_seconds: float = HOLD_SECONDS,
                 max_bytes: int = MAX_BYTES) -> None:
        self.ports = ports
        self.hold_ns = int(hold_seconds * 1e9)
        self.max_turns = max(1, max_bytes // TURN_BYTES)
        self._lock = threading.Lock()
        self._held = HeldTurns()
        self._newest = 0
        self.expired = 0  # turns dropped by age, never joined
        self.evicted = 0  # turns dropped for memory, never joined
        self._recent: dict[tuple[tuple[Request, ...], bytes], list[tuple[str, Wire | None]]] = {}
        self.reused = 0  # joins answered from _recent

    def __len__(self) -> int:
        """Turns waiting (not joined)."""
        return self._held.waiting

    def add(self, turn: Turn) -> None:
        """A record from the kernel; a later record of the same turn replaces the earlier."""
        if turn.first_read_ns or turn.first_write_ns:  # a gRPC response can begin a turn of writes only
            self._add(row_of(turn))

    def add_records(self, records: npt.NDArray[Any]) -> None:
        """Records from the kernel (turns.RECORD_DTYPE), in the order it sent them."""
        self._add(held_rows(records))

    def _add(self, rows: npt.NDArray[Any]) -> None:
        if not len(rows):
            return
        with self._lock:
            self._held.add(rows)
            self._newest = max(self._newest, int(rows["at_ns"].max()))
            self.expired += self._held.drop_before(self._newest - self.hold_ns)
            if self._held.rows > self.max_turns:  # down to 90 %: the merge this takes is not paid per add
                self.evicted += self._held.drop_oldest(self._held.rows - (self.max_turns - self.max_turns // 10))

    def observe(self, stamps: npt.NDArray[np.int64], codes: npt.NDArray[np.int8], an: Anatomy) -> WireObservations:
        """Join the rows of a batch (the rows `an` was computed over) with the held turns."""
        return observations(self.join(requests_of(stamps, codes, an)))

    def join(self, requests: Sequence[Request]) -> list[tuple[str, Wire | None]]:
        """Join requests with the held turns; a turn joined is marked so and joins nothing again."""
        arrivals = [r.arrival_ns for r in requests if r.arrival_ns >= 0]
        ends = [r.end_ns for r in requests if r.end_ns >= 0]
        with self._lock:
            # and turns begun up to a second after the last response: a gRPC response's own turn,
            # the turn after it (see join.acked_by_next)
            lo, hi = min(arrivals, default=0) - LOOKBACK_NS, max(ends, default=0) + 10**9
            parts = [(block, idx) for block, idx in self._held.between(lo, hi) if len(idx)]
            starts = np.cumsum([0] + [len(idx) for _, idx in parts])
            rows = np.empty(int(starts[-1]), dtype=TURN_ROW)  # filled part by part: cheaper than concatenate
            raw = rows.view(RAW_ROW)  # copied as bytes (window.taken)
            for (block, idx), a, b in zip(parts, starts[:-1].tolist(), starts[1:].tolist(), strict=True):
                raw[a:b] = block.view(RAW_ROW)[idx]
            need = np.flatnonzero(joinable(rows, requests, self.ports, LOOKBACK_NS))  # made Turns: these only
            needed = taken(rows, need)
            asked = (tuple(requests), hashlib.blake2b(needed.tobytes(), digest_size=16).digest())
            if asked in self._recent:  # the same requests and turns (held ones settling): the same results
                self.reused += 1
                return list(self._recent[asked])
            turns = [turn_of(values) for values in needed.tolist()]
            where = {t.key: k for t, k in zip(turns, need.tolist(), strict=True)}  # its row in `rows`
            out = join(requests, turns, self.ports)
            for _, w in out:
                if w is not None:
                    k = where[w.turn.key]
                    part = int(np.searchsorted(starts, k, side="right")) - 1
                    block, idx = parts[part]
                    block["state"][idx[k - starts[part]]] = JOINED  # joined once: stays marked until it ages out
                    self._held.waiting -= 1
            if all(w is None for _, w in out):  # else the turns change: the rows joined are not waiting now
                self._recent[asked] = list(out)
                while len(self._recent) > RECENT_JOINS:
                    del self._recent[next(iter(self._recent))]
        return out


def observations(out: Sequence[tuple[str, Wire | None]], held: Sequence[bool] = ()) -> WireObservations:
    """A batch's WireObservations from its join results; rows marked in `held` count nothing now
    (result_of HELD: their result comes with a later commit)."""
    counted = [(i, r, w) for i, (r, w) in enumerate(out) if not (held and held[i])]
    joined = [(i, w) for i, _, w in counted if w is not None]
    socket_wait = np.full(len(out), -1, dtype=np.int64)
    ack_wait = np.full(len(out), -1, dtype=np.int64)
    at = np.asarray([i for i, _ in joined], dtype=np.intp)
    ns = np.asarray([(w.socket_wait_ns, w.ack_wait_ns, w.wire_ns) for _, w in joined], dtype=np.int64).reshape(-1, 3)
    socket_wait[at], ack_wait[at] = ns[:, 0], ns[:, 1]
    results: Counter[str] = Counter({r: 0 for r in JOIN_RESULTS})
    results.update(r for _, r, _ in counted)
    result_of = np.full(len(out), HELD, dtype=np.intp)
    result_of[[i for i, _, _ in counted]] = [_RESULT[r] for _, r, _ in counted]
    # per joined row its three stages, in row order
    return WireObservations(np.repeat(at, len(WIRE_STAGES)), np.tile(np.arange(len(WIRE_STAGES), dtype=np.intp), len(at)),
                            ns.ravel(), socket_wait, ack_wait, result_of, results)


class DropCounter:
    """The kernel's counts of records it could not send (ever growing) into errors_total deltas."""

    def __init__(self, count: Callable[[str, int], None]) -> None:
        self._count = count
        self._seen: dict[str, int] = {}

    def update(self, totals: dict[str, int]) -> None:
        for reason, n in totals.items():
            delta = n - self._seen.get(reason, 0)
            if delta > 0:
                self._count(reason, delta)
            self._seen[reason] = n


class TurnFeed:
    """The reader thread: socket_turns.c's ring buffer into a TurnWindow, a batch when READ_FILLED
    of it waits or every READ_AT_LEAST seconds (and whenever a trace batch is about to join:
    drain()); the kernel's drops counted every DROPS_EVERY looks."""

    def __init__(self, window: TurnWindow, ports: Sequence[int],
                 on_dropped: Callable[[str, int], None] = lambda _reason, _n: None) -> None:
        from .recorder import TurnRecorder

        self.window = window
        self.recorder = TurnRecorder(ports)
        self.drops = DropCounter(on_dropped)
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
                self.window.add_records(self.recorder.ring.read())

    def _run(self) -> None:
        looks = 0
        ring = self.recorder.ring
        full = ring.size * READ_FILLED
        last = time.monotonic()
        while not self._stop.wait(READ_EVERY):
            now = time.monotonic()
            if now - last >= READ_AT_LEAST or ring.pending() >= full:
                self.drain()
                last = now
            looks += 1
            if looks % DROPS_EVERY == 0:
                with self._reading:
                    if not self._stop.is_set():
                        self.drops.update(self.recorder.dropped())

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._reading:
            self.drops.update(self.recorder.dropped())
            self.recorder.close()


STAGE_NAMES = WIRE_STAGES  # the `stage` label values these observations take

