"""The join: each traced request matched to its server-side socket turn on the shared clock.

Triton's trace stamps and the kernel's turn stamps are both CLOCK_MONOTONIC ns on one
host, so a request belongs to the turn whose read came before Triton began reading it
and whose acknowledgement came after Triton's last response went out. Pure logic over
plain data; no I/O.

A turn is a candidate for a request when, on a port of the request's protocol:

- its first read is at or before the request's arrival (HTTP_RECV_START; GRPC_WAITREAD_END),
  and no more than LOOKBACK_NS before it;
- its first write is at or after the arrival and the first send's start (Triton's frontends
  stamp a send's start before they write);
- HTTP/1.1 (one request at a time per connection): its last read is at or before
  HTTP_RECV_END, and its response was acknowledged at or after HTTP_SEND_END;
- gRPC: a turn of the same connection (the one its bytes were read in, or a later one) wrote
  at or after its first send's start, and began writing at or before its last response out. gRPC stamps
  GRPC_SEND_END when its completion queue reports the write done, which can come after the
  peer's ACK; there ack_wait is 0 and `wire` ends at GRPC_SEND_END, so the parts still add up.

A request with one candidate that no other request claims is joined; a turn taken this
way leaves every other request's candidates, and this repeats until nothing changes.
HTTP requests that still share turns all read by one thread are paired in read order
(in_read_order). A request whose candidates stay shared, or that has none although the kernel recorded reads
on the ports shortly before it arrived, is `ambiguous` (gRPC multiplexes requests on one
connection: where several are in flight on it, no guess is made); one before whose arrival
no read was recorded is `no_socket_event` (the recorder was not running, or the kernel
dropped the record). A request of no frontend (in-process, ensemble children) is
`unsupported`.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .names import JOIN_RESULTS as JOIN_RESULTS  # re-exported
from .names import WIRE_STAGES as WIRE_STAGES
from .turns import Turn

LOOKBACK_NS = 10 * 10**9  # a turn read more than this before the arrival is not its request's


@dataclass(slots=True, unsafe_hash=True)  # not frozen, for speed as Turn (one per traced request); never assigned to
class Request:
    """One traced request as the join sees it; -1 where a stamp is absent."""

    protocol: str  # "http", "grpc"; anything else cannot join
    arrival_ns: int  # end_to_end's start
    end_ns: int  # end_to_end's end: the last response out
    read_end_ns: int = -1  # HTTP_RECV_END
    send_start_ns: int = -1  # the first response's send start (HTTP or gRPC)


@dataclass(slots=True, unsafe_hash=True)  # not frozen, for speed as Turn; never assigned to
class Wire:
    """A joined request's time outside Triton: they add up, socket_wait + end_to_end + ack_wait = wire."""

    turn: Turn
    socket_wait_ns: int  # first byte in -> arrival
    ack_wait_ns: int  # last response out -> last byte acknowledged
    wire_ns: int  # first byte in -> last byte acknowledged


def wire_of(req: Request, turn: Turn) -> Wire:
    socket_wait = req.arrival_ns - turn.start_ns
    ack_wait = max(0, turn.acked_ns - req.end_ns)
    return Wire(turn, socket_wait, ack_wait, socket_wait + (req.end_ns - req.arrival_ns) + ack_wait)


def previous_greater(values: Sequence[int]) -> list[int]:
    """Per position, the nearest earlier one holding a greater value (-1: none): walking back
    from k to it passes only values at most values[k]."""
    out, stack = [-1] * len(values), list[int]()
    for k, v in enumerate(values):
        while stack and values[stack[-1]] <= v:
            stack.pop()
        out[k] = stack[-1] if stack else -1
        stack.append(k)
    return out


def next_greater(values: Sequence[int]) -> list[int]:
    """Per position, the nearest later one holding a greater value (len(values): none)."""
    out, stack = [len(values)] * len(values), list[int]()
    for k in range(len(values) - 1, -1, -1):
        while stack and values[stack[-1]] <= values[k]:
            stack.pop()
        out[k] = stack[-1] if stack else len(values)
        stack.append(k)
    return out


class TurnIndex:
    """Turns of one protocol's ports, by first read. A request's candidates are found walking
    back from its arrival over the turns that wrote late enough (previous_greater skips the
    runs that wrote before its send began), so a request costs its candidates, not the turns
    read in the LOOKBACK_NS before it."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        self.every = sorted((t for t in turns if t.first_read_ns), key=lambda t: t.first_read_ns)
        self.every_reads = [t.first_read_ns for t in self.every]
        self.turns = [t for t in self.every if t.acked_ns]  # a request's turn is acknowledged
        self.reads = [t.first_read_ns for t in self.turns]
        self._back = previous_greater([t.first_write_ns for t in self.turns])

    def seen(self, req: Request) -> bool:
        """Whether the kernel recorded a read on these ports in the LOOKBACK_NS before the
        request's arrival (its own bytes were read then, if they were recorded at all)."""
        k = bisect.bisect_right(self.every_reads, req.arrival_ns)
        return k > 0 and self.every_reads[k - 1] >= req.arrival_ns - LOOKBACK_NS

    def candidate_lists(self, reqs: Sequence[Request]) -> list[list[int]]:
        """candidates() of each request."""
        return [self.candidates(r) for r in reqs]

    def candidates(self, req: Request) -> list[int]:
        """Positions in self.turns of the turns that can hold `req`, in read order."""
        lo = bisect.bisect_left(self.reads, req.arrival_ns - LOOKBACK_NS)
        writes_from = max(req.send_start_ns, req.arrival_ns)
        http = req.protocol == "http"
        out: list[int] = []
        k = bisect.bisect_right(self.reads, req.arrival_ns) - 1
        while k >= lo:
            t = self.turns[k]
            if t.first_write_ns < writes_from:
                k = self._back[k]  # the turns between wrote no later than this one
                continue
            k -= 1
            if t.start_ns > req.arrival_ns:
                continue
            if http:
                if t.acked_ns < req.end_ns or 0 <= req.read_end_ns < t.last_read_ns:
                    continue
            elif t.first_write_ns > req.end_ns:
                continue
            out.append(k + 1)
        out.reverse()
        return out


def acked_by_next(t: Turn, after: Turn) -> Turn:
    """A response turn whose ACK was not recorded (the client's ACK rode on its next frames,
    which began the next turn before the ACK was seen), acknowledged at the latest when the
    next turn's first byte came in: that upper bound, where it is after the last write."""
    ack = after.first_in_ns or after.first_read_ns
    return dataclasses.replace(t, acked_ns=ack) if ack >= t.last_write_ns > 0 else t


class GrpcIndex(TurnIndex):
    """gRPC turns, joined per connection into exchanges. HTTP/2 peers trade small control frames
    (window updates, pings) while a request is handled, and each such frame from the client
    begins a turn; so a request's bytes arrive in one turn (the last read before its arrival)
    and its response goes out in a later turn of the same connection (the first write within
    its send; a turn of writes only where the kernel began one for them). The exchange runs
    from the first to the second; self.exchanges holds them as made. Two exchanges that end in
    one response turn exclude each other (`assign`): one response is one request's."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        super().__init__(turns)
        self.by_conn: dict[tuple[int, int], list[Turn]] = {}
        for t in sorted(turns, key=lambda t: t.turn):  # write-only turns too: a response can start one
            self.by_conn.setdefault(t.connection, []).append(t)
        self._on: dict[tuple[int, int], _Connection] = {}
        self.exchanges: list[Turn] = []
        self._made: dict[tuple[int, int, int, int], int] = {}
        self.resource: list[int] = []  # per exchange: the turn it shares with any other exchange holding it
        self._resources: dict[tuple[int, int, int], int] = {}
        by_write = sorted(turns, key=lambda t: t.first_write_ns)  # every turn (0: wrote nothing), see _writing
        self._writes = [t.first_write_ns for t in by_write]
        self._write_ends = [t.last_write_ns for t in by_write]
        self._writers = [t.connection for t in by_write]
        self._write_back = previous_greater(self._write_ends)

    def candidate_lists(self, reqs: Sequence[Request]) -> list[list[int]]:
        """candidates() of each request, taken in arrival order so that the connections read
        in the LOOKBACK_NS before each arrival are kept as a sliding count, not found again."""
        out: list[list[int]] = [[] for _ in reqs]
        live: dict[tuple[int, int], int] = {}  # connection -> its reads in the window
        lo = hi = 0
        for j in sorted(range(len(reqs)), key=lambda j: reqs[j].arrival_ns):
            req = reqs[j]
            new_hi = bisect.bisect_right(self.every_reads, req.arrival_ns)
            new_lo = bisect.bisect_left(self.every_reads, req.arrival_ns - LOOKBACK_NS)
            for t in self.every[hi:new_hi]:
                live[t.connection] = live.get(t.connection, 0) + 1
            hi = max(hi, new_hi)
            for t in self.every[lo:new_lo]:
                if live[t.connection] == 1:
                    del live[t.connection]
                else:
                    live[t.connection] -= 1
            lo = max(lo, new_lo)
            writing = self._writing(max(req.send_start_ns, req.arrival_ns), req.end_ns)
            out[j] = [k for conn in live if conn in writing and (k := self._exchange(req, conn)) is not None]
        return out

    def _writing(self, writes_from: int, end: int) -> set[tuple[int, int]]:
        """The connections with a turn that wrote between writes_from and end (first write at or
        before end, last at or after writes_from). A request's response turn is one (_exchange),
        so the other connections read in its look-back are not searched. Walks back from the last
        turn that began writing by `end`, over the turns that wrote late enough (previous_greater
        skips the runs that ended writing before writes_from)."""
        out: set[tuple[int, int]] = set()
        k = bisect.bisect_right(self._writes, end) - 1
        while k >= 0:
            if self._write_ends[k] < writes_from:
                k = self._write_back[k]
                continue
            out.add(self._writers[k])
            k -= 1
        return out

    def candidates(self, req: Request) -> list[int]:
        return self.candidate_lists([req])[0]

    def _exchange(self, req: Request, conn: tuple[int, int]) -> int | None:
        """The exchange of `req` on connection `conn` (one read in the look-back), if any."""
        c = self._on.get(conn)
        if c is None:
            c = self._on[conn] = _Connection(self.by_conn[conn])
        on = c.on
        t_in = on[c.latest[bisect.bisect_right(c.reads, req.arrival_ns) - 1]]
        at = bisect.bisect_left(c.numbers, t_in.turn)
        writes_from = max(req.send_start_ns, req.arrival_ns)
        while at < len(on) and on[at].last_write_ns < writes_from:
            at = c.ahead[at]  # the turns between wrote no later than this one
        if at == len(on):
            return None
        t_out = on[at]
        if not t_out.acked_ns and at + 1 < len(on):  # see acked_by_next
            t_out = acked_by_next(t_out, on[at + 1])
        if not t_out.acked_ns or t_out.first_write_ns > req.end_ns or t_in.start_ns > req.arrival_ns:
            return None
        key = (*conn, t_in.turn, t_out.turn)
        if key not in self._made:
            self._made[key] = len(self.exchanges)
            self.exchanges.append(_spanning(t_in, t_out))
            shared = (*conn, t_out.turn)
            self.resource.append(self._resources.setdefault(shared, len(self._resources)))
        return self._made[key]

    def assign(self, cands: Sequence[Sequence[int]]) -> dict[int, int]:
        """assign() over the turns the exchanges hold, so that two exchanges holding one turn
        (one request's read, another's exchange built on it) exclude each other."""
        by_turn = assign([[self.resource[k] for k in c] for c in cands])
        return {j: next(k for k in cands[j] if self.resource[k] == r) for j, r in by_turn.items()}


def _spanning(t_in: Turn, t_out: Turn) -> Turn:
    """An exchange: t_out with t_in's first byte in and first read (dataclasses.replace, without
    its cost per call)."""
    return Turn(t_out.sock, t_out.born_ns, t_in.first_in_ns, t_in.first_read_ns, t_out.last_read_ns,
                t_out.first_write_ns, t_out.last_write_ns, t_out.acked_ns, t_out.cgroup, t_out.turn,
                t_out.bytes_in, t_out.bytes_out, t_out.family, t_out.lport, t_out.rport, t_out.final,
                t_out.laddr, t_out.raddr)


class _Connection:
    """One connection's turns by number, searchable: its reads in time order with, per read, the
    highest-numbered turn read by then (the first of equals), and next_greater over last writes."""

    def __init__(self, on: list[Turn]) -> None:
        self.on = on
        self.numbers = [t.turn for t in on]
        read = sorted((t.first_read_ns, k) for k, t in enumerate(on) if t.first_read_ns > 0)
        self.reads = [r for r, _ in read]
        self.latest: list[int] = []
        best = -1
        for _, k in read:
            if best < 0 or on[k].turn > on[best].turn or (on[k].turn == on[best].turn and k < best):
                best = k
            self.latest.append(best)
        self.ahead = next_greater([t.last_write_ns for t in on])


def overlapping(requests: Sequence[Request], joined: Mapping[int, Turn],
                may_be_on: Sequence[set[tuple[int, int]] | None]) -> set[int]:
    """Joined requests (by position) that were in flight while another request that may have
    been on the same connection was: one joined to that connection, or one not joined that
    may have been on it (`may_be_on[o]`: the connections of o's candidates; None: any, where
    it has none, its turns not recorded). Which bytes were whose cannot be told, so they do not
    count as joined; repeated until none is left (a request taken out is then unknown in turn)."""
    order = sorted(range(len(requests)), key=lambda i: requests[i].arrival_ns)
    arrivals = [requests[i].arrival_ns for i in order]
    latest_end = list(itertools.accumulate((requests[i].end_ns for i in order), max))
    out: set[int] = set()
    changed = True
    while changed:
        changed = False
        for j in order:
            if j not in joined or j in out:
                continue
            a, b = requests[j].arrival_ns, requests[j].end_ns
            conn = joined[j].connection
            k = bisect.bisect_left(arrivals, b) - 1
            while k >= 0 and latest_end[k] > a:  # earlier ones all ended before j arrived
                o = order[k]
                k -= 1
                if o == j or requests[o].end_ns <= a:
                    continue
                unknown = o not in joined or o in out
                if (unknown and (may_be_on[o] is None or conn in (may_be_on[o] or ()))) or (
                        not unknown and joined[o].connection == conn):
                    out.add(j)
                    changed = True
                    break
    return out


def assign(cands: Sequence[Sequence[int]]) -> dict[int, int]:
    """request -> turn, where a request's candidates narrow to one turn no other request still
    holds as its only candidate; repeated as taken turns leave the other requests' sets."""
    live = [set(c) for c in cands]
    out: dict[int, int] = {}
    taken: set[int] = set()
    changed = True
    while changed:
        changed = False
        single = Counter(next(iter(c)) for i, c in enumerate(live) if len(c) == 1 and i not in out)
        for i, c in enumerate(live):
            if i in out or len(c) != 1:
                continue
            (k,) = c
            if single[k] == 1 and k not in taken:
                out[i] = k
                taken.add(k)
                changed = True
        if changed:
            for i, c in enumerate(live):
                if i not in out and c & taken:
                    live[i] = c - taken
    return out


def in_read_order(arrivals: Sequence[int], cands: Sequence[Sequence[int]], chosen: Mapping[int, int],
                  turns: Sequence[Turn]) -> dict[int, int]:
    """HTTP/1.1 requests still sharing candidates, where every turn they share was read by one
    thread: a thread of Triton's HTTP frontend takes the requests it read in that order (it reads
    every connection that is ready, then handles them one by one), so where k requests share
    exactly k such turns, the i-th arrival is the i-th turn read. Applied only where that pairing
    satisfies every request's own candidates. Turns of several threads, or of an unknown one
    (reader 0), are not paired: the thread that read second can stamp HTTP_RECV_START first."""
    taken = set(chosen.values())
    left = [j for j in range(len(cands)) if j not in chosen and cands[j]]
    parent = {j: j for j in left}

    def root(j: int) -> int:
        while parent[j] != j:
            parent[j] = parent[parent[j]]
            j = parent[j]
        return j

    owner: dict[int, int] = {}
    for j in left:
        for k in cands[j]:
            if k in taken:
                continue
            if k in owner:
                parent[root(j)] = root(owner[k])
            else:
                owner[k] = j
    components: dict[int, list[int]] = {}
    for j in left:
        components.setdefault(root(j), []).append(j)
    out: dict[int, int] = {}
    for members in components.values():
        free = sorted({k for j in members for k in cands[j] if k not in taken}, key=lambda k: (turns[k].first_read_ns, k))
        readers = {turns[k].reader for k in free}
        if len(readers) != 1 or 0 in readers:
            continue
        ordered = sorted(members, key=lambda j: arrivals[j])
        if len(free) == len(ordered) and all(k in cands[j] for j, k in zip(ordered, free, strict=True)):
            out.update(zip(ordered, free, strict=True))
    return out


def join(requests: Sequence[Request], turns: Sequence[Turn],
         ports: Mapping[str, frozenset[int]]) -> list[tuple[str, Wire | None]]:
    """Per request its result (one of JOIN_RESULTS) and, where joined, its Wire. `ports`:
    the server ports of each protocol ("http", "grpc") whose turns it may join."""
    out: list[tuple[str, Wire | None]] = [("unsupported", None)] * len(requests)
    for protocol, wanted in ports.items():
        rows = [i for i, r in enumerate(requests) if r.protocol == protocol and r.arrival_ns >= 0 and r.end_ns >= 0]
        if not rows:
            continue
        mine = [t for t in turns if t.lport in wanted]
        index = GrpcIndex(mine) if protocol == "grpc" else TurnIndex(mine)
        cands = index.candidate_lists([requests[i] for i in rows])
        if isinstance(index, GrpcIndex):  # no pairing by order here: gRPC reads on other threads
            chosen = index.assign(cands)
            picked = {j: index.exchanges[k] for j, k in chosen.items()}
            may_be_on = [{index.exchanges[k].connection for k in c} or None for c in cands]
            for j in overlapping([requests[i] for i in rows], picked, may_be_on):
                del picked[j]
        else:
            chosen = assign(cands)
            chosen.update(in_read_order([requests[i].arrival_ns for i in rows], cands, chosen, index.turns))
            picked = {j: index.turns[k] for j, k in chosen.items()}
        for j, i in enumerate(rows):
            if j in picked:
                out[i] = ("joined", wire_of(requests[i], picked[j]))
            else:
                seen = bool(cands[j]) or index.seen(requests[i])
                out[i] = ("ambiguous" if seen else "no_socket_event", None)
    return out


def join_counts(results: Sequence[tuple[str, Wire | None]]) -> Counter[str]:
    """How many requests had each of JOIN_RESULTS (every result present, 0 where none)."""
    counts: Counter[str] = Counter({r: 0 for r in JOIN_RESULTS})
    counts.update(r for r, _ in results)
    return counts


def wire_segments(segments: Sequence[int], wire: Wire) -> list[int]:
    """A joined request's timeline: socket_wait, Triton's own segments, ack_wait; adds up to wire."""
    return [wire.socket_wait_ns, *segments, wire.ack_wait_ns]
