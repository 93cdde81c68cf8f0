"""The join's indexes (searches that skip what cannot match) against a plain reference that scans
every turn in the look-back, and the turn window's choice of the rows a batch can need against
all of them, on random turns and requests: the results must be the same."""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from exporter.wire import join as join_module
from exporter.wire.join import LOOKBACK_NS, GrpcIndex, Request, TurnIndex, acked_by_next, join
from exporter.wire.live import TurnWindow
from exporter.wire.turns import Turn
from exporter.wire.window import joinable, row_of

HTTP, GRPC = 8000, 8001
PORTS = {"http": frozenset({HTTP}), "grpc": frozenset({GRPC})}


class ScanningTurnIndex(TurnIndex):
    """Every acknowledged turn read in the look-back, tested one by one."""

    def candidate_lists(self, reqs: Sequence[Request]) -> list[list[int]]:
        out = []
        for req in reqs:
            hi = bisect.bisect_right(self.reads, req.arrival_ns)
            lo = bisect.bisect_left(self.reads, req.arrival_ns - LOOKBACK_NS)
            mine = []
            for k in range(lo, hi):
                t = self.turns[k]
                if t.start_ns > req.arrival_ns or t.first_write_ns < max(req.send_start_ns, req.arrival_ns):
                    continue
                if req.protocol == "http":
                    if t.acked_ns < req.end_ns or 0 <= req.read_end_ns < t.last_read_ns:
                        continue
                elif t.first_write_ns > req.end_ns:
                    continue
                mine.append(k)
            out.append(mine)
        return out


class ScanningGrpcIndex(GrpcIndex):
    """Every connection read in the look-back, each of its turns tested one by one."""

    def candidate_lists(self, reqs: Sequence[Request]) -> list[list[int]]:
        out = []
        for req in reqs:
            hi = bisect.bisect_right(self.every_reads, req.arrival_ns)
            lo = bisect.bisect_left(self.every_reads, req.arrival_ns - LOOKBACK_NS)
            mine = []
            for conn in {t.connection for t in self.every[lo:hi]}:
                on = self.by_conn[conn]
                t_in = max((t for t in on if 0 < t.first_read_ns <= req.arrival_ns), key=lambda t: t.turn)
                at = next((k for k, t in enumerate(on) if t.turn >= t_in.turn
                           and t.last_write_ns >= max(req.send_start_ns, req.arrival_ns)), None)
                if at is None:
                    continue
                t_out = on[at]
                if not t_out.acked_ns and at + 1 < len(on):
                    t_out = acked_by_next(t_out, on[at + 1])
                if not t_out.acked_ns or t_out.first_write_ns > req.end_ns or t_in.start_ns > req.arrival_ns:
                    continue
                key = (*conn, t_in.turn, t_out.turn)
                if key not in self._made:
                    self._made[key] = len(self.exchanges)
                    self.exchanges.append(dataclasses.replace(
                        t_out, first_in_ns=t_in.first_in_ns, first_read_ns=t_in.first_read_ns))
                    self.resource.append(self._resources.setdefault((*conn, t_out.turn), len(self._resources)))
                mine.append(self._made[key])
            out.append(mine)
        return out


def workload(rng: random.Random) -> tuple[list[Request], list[Turn]]:
    """Connections of both protocols with turns that read, write, both, acknowledged or not,
    overlapping and out of order in their writes (now and then in their reads), sometimes seconds
    apart (around the look-back),
    and requests made from some of the turns, nudged, plus strays."""
    unit = rng.choice((1, 1000, 10**6))
    turns: list[Turn] = []
    reqs: list[Request] = []
    for sock in range(1, rng.randint(2, 7)):
        port = rng.choice((HTTP, GRPC))
        protocol = "http" if port == HTTP else "grpc"
        clock = rng.randint(0, 3000) * unit
        for n in range(1, rng.randint(2, 30)):
            clock += rng.randint(0, 2000) * unit
            if rng.random() < 0.05:
                clock += rng.randint(3, 12) * 10**9  # a pause around the look-back
            elif rng.random() < 0.05:
                clock = max(0, clock - rng.choice((rng.randint(0, 4000) * unit, rng.randint(3, 12) * 10**9)))
            kind = rng.random()
            first_in = clock
            read = clock + rng.randint(0, 50) * unit
            last_read = read + rng.randint(0, 20) * unit
            first_write = read + rng.randint(0, 3000) * unit
            last_write = first_write + rng.randint(0, 500) * unit
            acked = last_write + rng.randint(0, 500) * unit if rng.random() < 0.8 else 0
            if kind < 0.15:  # a turn of writes only
                first_in = read = last_read = 0
            elif kind < 0.35:  # reads only (an HTTP/2 control frame)
                first_write = last_write = acked = 0
            turns.append(Turn(sock, 7, first_in, read, last_read, first_write, last_write, acked, 0, n,
                              100, 100, 2, port, 40000 + sock, 0, "127.0.0.1", "127.0.0.1"))
            if read and first_write and rng.random() < 0.6:
                arrival = read + rng.randint(-5, 40) * unit
                end = max(arrival, first_write + rng.randint(-100, 60) * unit)
                reqs.append(Request(protocol, arrival, end,
                                    last_read + rng.randint(-5, 20) * unit if rng.random() < 0.9 else -1,
                                    end - rng.randint(0, 80) * unit if rng.random() < 0.9 else -1))
    span = max((t.first_read_ns for t in turns), default=0) + 1
    for _ in range(rng.randint(0, 4)):
        arrival = rng.randint(0, span)
        reqs.append(Request(rng.choice(("http", "grpc", "none")), arrival, arrival + rng.randint(0, 3000) * unit))
    rng.shuffle(turns)
    rng.shuffle(reqs)
    return reqs, turns


def test_the_indexes_join_as_a_scan_of_every_turn_does(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(21)
    seen: Counter[str] = Counter()
    for case in range(400):
        reqs, turns = workload(rng)
        fast = join(reqs, turns, PORTS)
        with monkeypatch.context() as m:
            m.setattr(join_module, "TurnIndex", ScanningTurnIndex)
            m.setattr(join_module, "GrpcIndex", ScanningGrpcIndex)
            slow = join(reqs, turns, PORTS)
        assert fast == slow, f"case {case}"
        seen.update(f"{r.protocol}:{result}" for r, (result, _) in zip(reqs, slow, strict=True))
    # the cases reach every outcome of both protocols, so the comparison means something
    for protocol in ("http", "grpc"):
        for result in ("joined", "ambiguous", "no_socket_event"):
            assert seen[f"{protocol}:{result}"] >= 20, seen


def test_the_rows_a_batch_can_need_join_as_all_rows_do() -> None:
    rng = random.Random(2121)
    left_out = 0
    for case in range(400):
        reqs, turns = workload(rng)
        if not turns:
            continue
        keep = joinable(np.concatenate([row_of(t) for t in turns]), reqs, PORTS, LOOKBACK_NS)
        needed = [t for t, k in zip(turns, keep.tolist(), strict=True) if k]
        assert join(reqs, needed, PORTS) == join(reqs, turns, PORTS), f"case {case}"
        left_out += len(turns) - len(needed)
    assert left_out > 1000  # it does leave turns out


def test_a_join_that_joined_nothing_is_not_redone_while_its_turns_are_unchanged() -> None:
    w = TurnWindow(PORTS)
    shared = [Turn(s, 7, 0, 10 + s, 10 + s, 900, 900, 1000, 0, 1, 100, 100, 2, HTTP, 40000 + s, 0, "", "")
              for s in (1, 2)]
    for t in shared:
        w.add(t)
    held = [Request("http", 15, 800, 16, 850)]  # two turns fit it: ambiguous, held for later
    assert [r for r, _ in w.join(held)] == ["ambiguous"] and w.reused == 0
    w.add(Turn(3, 7, 0, 50 * 10**9, 50 * 10**9, 0, 0, 0, 0, 1, 100, 0, 2, HTTP, 40003, 0, "", ""))  # far later
    assert [r for r, _ in w.join(held)] == ["ambiguous"] and w.reused == 1
    # a second request comes, stamped before the second turn's read: it can only be the first
    # turn's, so the held one is the second's; a different join, and both join
    both = [*held, Request("http", 11, 800, 11, 850)]
    assert [r for r, _ in w.join(both)] == ["joined", "joined"] and w.reused == 1
    # their turns taken (no longer waiting), nothing is left for the held request: no stale answer
    assert [r for r, _ in w.join(held)] == ["no_socket_event"] and w.reused == 1
    w.add(Turn(4, 7, 0, 12, 12, 900, 900, 1000, 0, 1, 100, 100, 2, HTTP, 40004, 0, "", ""))
    (result, wire), = w.join(held)
    assert result == "joined" and wire is not None and wire.turn.sock == 4 and w.reused == 1
