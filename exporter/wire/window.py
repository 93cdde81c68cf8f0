"""Turns waiting for their traces, held as numpy rows: ~100 bytes a turn, not a Python object.

A turn is held as one row of TURN_ROW: what the join reads (its stamps, socket, number and
local port), not its addresses. Rows are kept in a few blocks, each sorted by first read (by first write for a turn that
began with one, see _at);
the kernel's records come nearly in that order, so a batch of them becomes a block as
it is, and the blocks are merged into one when there are many. A Turn object is made
only for the rows a batch of traces can join (those read within the join's look-back).

A turn's records share its first read, so the record that replaces an earlier one (the
kernel sends a turn again when more was written after its ACK) is found among the rows
read at that instant or later. A joined row stays, marked, until it ages out: a record
of it sent again is ignored, never joined twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .join import Request
from .turns import Turn

TURN_ROW = np.dtype([("first_read_ns", "<u8"), ("key", "<u8"), ("sock", "<u8"), ("born_ns", "<u8"),
                 ("first_in_ns", "<u8"), ("last_read_ns", "<u8"), ("first_write_ns", "<u8"),
                 ("last_write_ns", "<u8"), ("acked_ns", "<u8"), ("cgroup", "<u8"), ("turn", "<u4"),
                 ("bytes_in", "<u4"), ("bytes_out", "<u4"), ("reader", "<u4"), ("lport", "<u2"), ("state", "u1"),
                 ("at_ns", "<u8")])  # the turn's first read, or its first write where that came first
RAW_ROW = np.dtype((np.void, TURN_ROW.itemsize))  # a row as bytes (taken)
WAITING, JOINED, REPLACED = 0, 1, 2  # `state` of a row
MAX_BLOCKS = 64  # more are merged into one (compaction keeps them far fewer anyway)
COMPACT_AT = 8  # more blocks than this: the newest are merged (HeldTurns._newest_to_merge)
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))
_COPIED = [n for n in TURN_ROW.names or () if n not in ("key", "state", "at_ns")]


def turn_key(sock: npt.NDArray[np.uint64], born: npt.NDArray[np.uint64],
             turn: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint64]:
    """(sock, born, turn) mixed into 64 bits: two different turns read at the same ns share it
    with a chance of about 2^-64."""
    with np.errstate(over="ignore"):
        mixed: npt.NDArray[np.uint64] = sock ^ (born * _MIX[0]) ^ (turn.astype(np.uint64) * _MIX[1])
    return mixed


def _at(rows: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """The instant a turn is indexed by: its first read, or its first write where that came first
    or alone (a gRPC response can begin a turn of writes only). The earlier of the two, so a later
    record of the same turn keeps it."""
    read, write = rows["first_read_ns"], rows["first_write_ns"]
    at: npt.NDArray[np.uint64] = np.where((read != 0) & ((write == 0) | (read <= write)), read, write)
    return at


def taken(rows: npt.NDArray[Any], index: Any) -> npt.NDArray[Any]:
    """rows[index] (a copy), copied as whole rows of bytes: numpy copies a structured array of
    unaligned fields field by field, about ten times slower."""
    raw = np.dtype((np.void, rows.dtype.itemsize))
    out: npt.NDArray[Any] = rows.view(raw)[index].view(rows.dtype)
    return out


def joined_blocks(blocks: Sequence[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """np.concatenate of blocks of one structured dtype, as bytes (see taken)."""
    raw = np.dtype((np.void, blocks[0].dtype.itemsize))
    out: npt.NDArray[Any] = np.concatenate([b.view(raw) for b in blocks]).view(blocks[0].dtype)
    return out


def held_rows(records: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Rows of the records that read or wrote (the others can join nothing), the last record of
    each turn, sorted by the instant they are indexed by (_at)."""
    records = taken(records, (records["first_read_ns"] != 0) | (records["first_write_ns"] != 0))
    rows = np.zeros(len(records), dtype=TURN_ROW)
    for name in _COPIED:
        rows[name] = records[name]
    rows["key"] = turn_key(rows["sock"], rows["born_ns"], rows["turn"])
    rows["at_ns"] = _at(rows)
    if len(rows) > 1:
        _, last = np.unique(rows["key"][::-1], return_index=True)
        rows = taken(rows, np.sort(len(rows) - 1 - last))  # the last of each turn, in the order sent
    return taken(rows, np.argsort(rows["at_ns"], kind="stable"))


def row_of(t: Turn) -> npt.NDArray[Any]:
    row = np.zeros(1, dtype=TURN_ROW)
    for name in _COPIED:
        row[name] = getattr(t, name)
    row["key"] = turn_key(row["sock"], row["born_ns"], row["turn"])
    row["at_ns"] = _at(row)
    return row


def turn_of(row: tuple[Any, ...]) -> Turn:
    """A Turn from a TURN_ROW row's values (.tolist()); addresses are not held."""
    (first_read, _key, sock, born, first_in, last_read, first_write, last_write, acked, cgroup, turn,
     bytes_in, bytes_out, reader, lport, _state, _at_ns) = row
    return Turn(sock, born, first_in, first_read, last_read, first_write, last_write, acked, cgroup, turn,
                bytes_in, bytes_out, 0, lport, 0, 0, "", "", reader)


class HeldTurns:
    """The rows; not thread-safe (TurnWindow locks). Each block goes with a contiguous copy of its
    first reads, which searchsorted needs (on a strided field it would copy the column per call)."""

    def __init__(self) -> None:
        self.blocks: list[npt.NDArray[Any]] = []
        self.reads: list[npt.NDArray[np.uint64]] = []
        self.waiting = 0  # rows WAITING
        self.rows = 0  # every row, whatever its state: the memory held

    def _put(self, blocks: list[npt.NDArray[Any]]) -> None:
        self.blocks = blocks
        self.reads = [np.ascontiguousarray(b["at_ns"]) for b in blocks]

    def add(self, rows: npt.NDArray[Any]) -> None:
        """Sorted rows (held_rows()); a row of a turn held already replaces it, or is ignored
        when that turn was joined."""
        if not len(rows):
            return
        since = rows["at_ns"][0]
        keep = np.ones(len(rows), dtype=bool)
        for block, reads in zip(self.blocks, self.reads, strict=True):
            if reads[-1] < since:
                continue  # the usual case: a block of turns read before these
            lo = int(np.searchsorted(reads, since))
            if lo == len(block):
                continue
            recent = block[lo:]
            old = np.flatnonzero((recent["state"] != REPLACED) & np.isin(recent["key"], rows["key"]))
            if not len(old):
                continue
            states = recent["state"][old]
            keep &= ~np.isin(rows["key"], recent["key"][old[states == JOINED]])
            waiting = old[states == WAITING]
            block["state"][lo + waiting] = REPLACED
            self.waiting -= len(waiting)
        rows = taken(rows, keep)
        if len(rows):
            self.blocks.append(rows)
            self.reads.append(np.ascontiguousarray(rows["at_ns"]))
            self.waiting += len(rows)
            self.rows += len(rows)
        if len(self.blocks) > COMPACT_AT:
            self.merge(self._newest_to_merge())
        if len(self.blocks) > MAX_BLOCKS:
            self.merge()

    def _newest_to_merge(self) -> int:
        """How many of the newest blocks to merge: those up to a block more than twice their rows
        (at least 2). Blocks then grow geometrically from the newest back: a join or an add looks
        at a few blocks, a row is copied about log(rows) times in all, and a small read does not
        cost a merge of its own."""
        k, rows = 1, len(self.blocks[-1])
        while k < len(self.blocks) and len(self.blocks[-k - 1]) <= 2 * rows:
            rows += len(self.blocks[-k - 1])
            k += 1
        return max(k, 2)

    def merge(self, newest: int = 0) -> None:
        """The `newest` blocks (0: all) as one, of their rows still useful, sorted by first read."""
        newest = len(self.blocks) if newest <= 0 else min(newest, len(self.blocks))
        if newest < 2:
            return
        first = len(self.blocks) - newest
        by_start = sorted(range(first, len(self.blocks)), key=lambda i: int(self.reads[i][0]))
        every = joined_blocks([self.blocks[i] for i in by_start])
        reads = np.concatenate([self.reads[i] for i in by_start])
        if np.any(reads[1:] < reads[:-1]):  # blocks overlapping in time: sort (nearly sorted: cheap)
            order = np.argsort(reads, kind="stable")
            every, reads = taken(every, order), reads[order]
        live = every["state"] != REPLACED
        if not live.all():
            every, reads = taken(every, live), reads[live]
        self.rows -= sum(len(b) for b in self.blocks[first:]) - len(every)
        self.blocks[first:], self.reads[first:] = [every], [reads]

    def drop_before(self, cut: int) -> int:
        """Drop the rows read before `cut`; how many of them were waiting."""
        if cut <= 0 or not self.blocks or min(int(r[0]) for r in self.reads) >= cut:
            return 0
        at = np.uint64(cut)  # a Python int would have numpy convert every block to compare
        lost = 0
        blocks, reads = [], []
        for block, r in zip(self.blocks, self.reads, strict=True):
            n = int(np.searchsorted(r, at))
            if n:
                lost += int(np.count_nonzero(block["state"][:n] == WAITING))
                self.rows -= n
            if n < len(block):
                blocks.append(block[n:] if n else block)
                reads.append(r[n:] if n else r)
        self.blocks, self.reads = blocks, reads
        self.waiting -= lost
        return lost

    def drop_oldest(self, n: int) -> int:
        """Drop the n rows read first; how many of them were waiting."""
        if n <= 0 or not self.blocks:
            return 0
        self.merge()
        block = self.blocks[0]
        lost = int(np.count_nonzero(block["state"][:n] == WAITING))
        self._put([block[n:]] if n < len(block) else [])
        self.rows = len(block) - min(n, len(block))
        self.waiting -= lost
        return lost

    def between(self, lo: int, hi: int) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[np.intp]]]:
        """Per block, the indices of its waiting rows read in [lo, hi]."""
        first, last = np.uint64(max(lo, 0)), np.uint64(max(hi, 0))
        for block, reads in zip(self.blocks, self.reads, strict=True):
            if reads[-1] < first or reads[0] > last:
                continue
            a = 0 if reads[0] >= first else int(np.searchsorted(reads, first))
            b = len(reads) if reads[-1] <= last else int(np.searchsorted(reads, last, side="right"))
            if a < b:
                yield block, a + np.flatnonzero(block["state"][a:b] == WAITING)


def on_ports(lport: npt.NDArray[np.int64], ports: frozenset[int]) -> npt.NDArray[np.bool_]:
    """Which rows are of one of `ports` (a few): a comparison each, cheaper than np.isin's sort."""
    mine = np.zeros(len(lport), dtype=bool)
    for port in ports:
        mine |= lport == port
    return mine


def joinable(rows: npt.NDArray[Any], requests: Sequence[Request], ports: Mapping[str, frozenset[int]],
             lookback_ns: int) -> npt.NDArray[np.bool_]:
    """Which of `rows` the join of `requests` can need; joining only those gives the same results
    as joining them all (join.py's rules):

    - HTTP: the acknowledged turns read in the look-back of some arrival that wrote after the
      first arrival (any candidate is one), and per request the last turn read before it (so a
      read in its look-back is seen as before);
    - gRPC: per connection, the turn of highest number read before the first arrival (n0) and
      every later-numbered one (a request's bytes are in the last turn read before it, its
      response in a later one), and any earlier-numbered one read after n0 (turn numbers follow
      time, so rarely any); an earlier one read before n0 has n0 read in every look-back it is in.
    """
    keep = np.zeros(len(rows), dtype=bool)
    lport, read = rows["lport"].astype(np.int64), rows["first_read_ns"].astype(np.int64)
    for protocol, wanted in ports.items():
        arrivals = np.asarray([r.arrival_ns for r in requests
                               if r.protocol == protocol and r.arrival_ns >= 0 and r.end_ns >= 0], dtype=np.int64)
        mine = on_ports(lport, wanted)
        if not len(arrivals) or not mine.any():
            continue
        first = int(arrivals.min())
        if protocol == "grpc":
            keep |= mine & _grpc_needed(rows, read, mine, first)
            continue
        keep |= (mine & (rows["acked_ns"] != 0) & (read != 0) & (read >= first - lookback_ns)
                 & (read <= int(arrivals.max())) & (rows["first_write_ns"].astype(np.int64) >= first))
        reading = np.flatnonzero(mine & (read != 0))
        by_read = reading[np.argsort(read[reading], kind="stable")]
        last = np.searchsorted(read[by_read], arrivals, side="right") - 1
        keep[by_read[last[last >= 0]]] = True
    return keep


def _grpc_needed(rows: npt.NDArray[Any], read: npt.NDArray[np.int64], mine: npt.NDArray[np.bool_],
                 first: int) -> npt.NDArray[np.bool_]:
    order = np.lexsort((rows["born_ns"], rows["sock"]))  # a connection: (sock, born_ns), numbered in order
    sock, born = rows["sock"][order], rows["born_ns"][order]
    conn = np.empty(len(rows), dtype=np.int64)
    conn[order] = np.cumsum(np.concatenate(([0], (sock[1:] != sock[:-1]) | (born[1:] != born[:-1]))))
    number = rows["turn"].astype(np.int64)
    before = mine & (read > 0) & (read <= first)
    n0 = np.full(int(conn.max()) + 1, -1, dtype=np.int64)
    np.maximum.at(n0, conn[before], number[before])
    r0 = np.zeros(len(n0), dtype=np.int64)
    at_n0 = before & (number == n0[conn])
    np.maximum.at(r0, conn[at_n0], read[at_n0])
    needed: npt.NDArray[np.bool_] = (n0[conn] < 0) | (number >= n0[conn]) | (read > r0[conn])
    return needed
