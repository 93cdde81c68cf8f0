"""Requests held across batches: a request the join could not settle waits for the next ones.

The daemon joins one batch of finished traces at a time (a trace file, the requests of one
OTLP post). A request whose turn is shared with a request of a later batch, or whose turn
was not recorded yet, cannot be joined then, although it could be with the next batch. So
such a request (result `ambiguous` or `no_socket_event`) is held, its Triton stages counted
with its batch as always, and joined again with every later batch of nearby requests. It
is counted in socket_joins_total (and, where joined, in the wire stages and segments) once,
in the commit that settles it:

- when it joins;
- when traces of requests that ended more than SETTLE_NS after it have come in (every
  request that was in flight with it has then been traced: traces are written as requests
  finish), or HOLD_SECONDS after it was first held (traffic stopped: no later batch);
- when more than MAX_HELD requests are held, the oldest first.

Then it counts its latest result. The held requests are a section of the trace state
(producer "wire", section "held"), edited by the same commits that count them: a restart
resumes them, and a request is counted once (the commit that counts it drops it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..stages import Anatomy
from ..traces.store import Change, Section, SectionChange
from .join import Request, Wire
from .live import WireObservations, observations
from .requests import requests_of

log = logging.getLogger("wire")

PRODUCER, SECTION = "wire", "held"
SETTLE_NS = 2 * 10**9  # trace clock: a request is settled once requests ending this much later are traced
HOLD_SECONDS = 10.0  # wall clock: at most this long held when no later trace settles it
MAX_HELD = 10_000  # requests held at most (about 150 bytes each in the state)
NEAR_NS = 2 * 10**9  # a held request is joined again with a batch whose requests are this close in time
SETTLING = ("ambiguous", "no_socket_event")  # the results a later batch can change

JoinFn = Callable[[Sequence[Request]], list[tuple[str, Wire | None]]]
IdsOf = Callable[[int], tuple[str, str | None]]  # a batch row -> (trace id, request id), for exemplars


@dataclass(frozen=True, slots=True)
class Held:
    """One held request: its series, what the join needs of it, its exemplar ids."""

    base: tuple[str, ...]  # (*pattern labels, model, version, protocol)
    request: Request
    trace_id: str
    request_id: str | None
    since: float  # Unix time it was first held
    result: str  # its result when held

    def to_json(self) -> list[Any]:
        r = self.request
        return [list(self.base), r.protocol, r.arrival_ns, r.end_ns, r.read_end_ns, r.send_start_ns,
                self.trace_id, self.request_id, self.since, self.result]

    @classmethod
    def from_json(cls, v: Any) -> Held:
        base, protocol, arrival, end, read_end, send_start, trace_id, request_id, since, result = v
        if result not in SETTLING:
            raise ValueError(f"held result {result!r}")
        return cls(tuple(map(str, base)), Request(str(protocol), int(arrival), int(end), int(read_end),
                                                  int(send_start)),
                   str(trace_id), None if request_id is None else str(request_id), float(since), result)


@dataclass(frozen=True, slots=True)
class Settled:
    """A held request counted now."""

    base: tuple[str, ...]
    result: str
    wire: Wire | None
    trace_id: str
    request_id: str | None


class Joiner:
    """The daemon's join: each commit's batches joined (`round`) with the requests held so far.
    `join` is the turn window's join; None where the join cannot run (every request
    `unsupported`, the held ones settled as they were)."""

    def __init__(self, join: JoinFn | None, hold_seconds: float = HOLD_SECONDS, settle_ns: int = SETTLE_NS,
                 max_held: int = MAX_HELD) -> None:
        self.join = join
        self.hold_seconds, self.settle_ns, self.max_held = hold_seconds, settle_ns, max_held
        self.newest_end = 0  # the latest end of a traced request seen (trace clock)
        self._parsed: dict[str, Held] = {}  # the committed section's values, decoded once

    def round(self, change: Change, committed: Section, offset_ns: int = 0) -> JoinRound:
        """The joins of one commit; `committed` is the held section as committed. `offset_ns`: the
        batches' stamps minus this are CLOCK_MONOTONIC (OTLP's Unix-time stamps)."""
        held: dict[str, Held] = {}
        bad: list[str] = []
        for k, v in committed.items():
            h = self._parsed.get(k)
            if h is None:
                try:
                    h = self._parsed[k] = Held.from_json(v)
                except (TypeError, ValueError) as e:  # a state edited by hand: dropped, never counted
                    log.warning("held request %s in the state is not one (%s); dropped", k, e)
                    bad.append(k)
                    continue
            held[k] = h
        if bad:
            dropping = change.producers.setdefault(PRODUCER, {}).setdefault(SECTION, SectionChange(drop=[]))
            if isinstance(dropping.drop, list):
                dropping.drop.extend(k for k in bad if k not in dropping.drop)
        if len(self._parsed) > 2 * len(committed) + 1000:  # forget what commits dropped
            self._parsed = {k: h for k, h in self._parsed.items() if k in committed}
        edit = change.producers.get(PRODUCER, {}).get(SECTION)
        if edit is not None:  # an earlier batch of this commit
            for k in edit.drop if isinstance(edit.drop, list) else []:
                held.pop(k, None)
            for k, v in edit.add:
                held[k] = Held.from_json(v)
        return JoinRound(self, change, held, offset_ns)


class JoinRound:
    """One commit's joins: batch() per batch, settle() without one; what settles is counted into
    the change's delta, what is held or settled edits the change's held section."""

    def __init__(self, joiner: Joiner, change: Change, held: dict[str, Held], offset_ns: int) -> None:
        self.joiner, self.change, self.held, self.offset_ns = joiner, change, held, offset_ns
        self.settled: list[Settled] = []

    def _edit(self) -> SectionChange:
        return self.change.producers.setdefault(PRODUCER, {}).setdefault(SECTION, SectionChange(drop=[]))

    def _hold(self, key: str, h: Held) -> None:
        self.held[key] = h
        self._edit().add.append((key, h.to_json()))

    def _settle(self, key: str, result: str, wire: Wire | None) -> None:
        h = self.held.pop(key)
        self.settled.append(Settled(h.base, result, wire, h.trace_id, h.request_id))
        edit = self._edit()
        added = [i for i, (k, _) in enumerate(edit.add) if k == key]
        if added:  # held by this very commit: never in the committed section
            del edit.add[added[0]]
        else:
            assert isinstance(edit.drop, list)
            edit.drop.append(key)

    def _due(self, h: Held, now: float) -> bool:
        j = self.joiner
        return h.request.end_ns + j.settle_ns < j.newest_end or now - h.since > j.hold_seconds

    def batch(self, stamps: npt.NDArray[np.int64], codes: npt.NDArray[np.int8], an: Anatomy,
              bases: Sequence[tuple[str, ...]], ids_of: IdsOf) -> WireObservations:
        """The joins of a batch's rows (the rows `an` was computed over; `bases` their series);
        held requests near them in time are joined again with them."""
        if self.offset_ns:
            stamps = np.where(stamps >= 0, stamps - self.offset_ns, -1)
        requests = requests_of(stamps, codes, an)
        j = self.joiner
        now = time.time()
        timed = [r for r in requests if r.arrival_ns >= 0 and r.end_ns >= 0]
        if j.join is None:
            out: list[tuple[str, Wire | None]] = [("unsupported", None)] * len(requests)
            self.settle(now)
            return observations(out)
        lo = min((r.arrival_ns for r in timed), default=0) - NEAR_NS
        hi = max((r.end_ns for r in timed), default=0) + NEAR_NS
        near = [k for k, h in self.held.items() if h.request.end_ns >= lo and h.request.arrival_ns <= hi]
        out = j.join([*requests, *(self.held[k].request for k in near)])
        j.newest_end = max(j.newest_end, max((r.end_ns for r in timed), default=0))
        hold = [False] * len(requests)
        for i, (r, (result, _)) in enumerate(zip(requests, out, strict=False)):
            if result in SETTLING and r.end_ns + j.settle_ns >= j.newest_end:
                trace_id, request_id = ids_of(i)
                hold[i] = True
                self._hold(f"{trace_id}@{r.arrival_ns}", Held(tuple(bases[i]), r, trace_id, request_id, now, result))
        latest = dict(zip(near, out[len(requests):], strict=True))
        for k, (result, w) in latest.items():
            if result == "joined":
                self._settle(k, result, w)
        self._settle_due(now, {k: r for k, (r, _) in latest.items()})
        return observations(out[:len(requests)], hold)

    def settle(self, now: float | None = None) -> int:
        """Without a batch (the daemon's tick): held requests joined again and those due settled.
        Returns how many settled."""
        now = time.time() if now is None else now
        before = len(self.settled)
        j = self.joiner
        keys = list(self.held)
        latest: dict[str, str] = {}
        if j.join is not None and keys:
            for k, (result, w) in zip(keys, j.join([self.held[k].request for k in keys]), strict=True):
                if result == "joined":
                    self._settle(k, result, w)
                else:
                    latest[k] = result
        self._settle_due(now if j.join is not None else float("inf"), latest)
        return len(self.settled) - before

    def _settle_due(self, now: float, latest: dict[str, str]) -> None:
        for k in [k for k, h in self.held.items() if self._due(h, now)]:
            self._settle(k, latest.get(k, self.held[k].result), None)
        over = len(self.held) - self.joiner.max_held
        for k in list(self.held)[:max(0, over)]:  # oldest first
            self._settle(k, latest.get(k, self.held[k].result), None)
