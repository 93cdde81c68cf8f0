"""Socket turns: the records of bpf/socket_turns.c, as plain data and as JSON lines.

One record describes one request/response exchange on one server-side connection, all
stamps CLOCK_MONOTONIC ns (0: not seen). The kernel may send a turn twice (when its
response is acknowledged, and again if more was written before the next request);
`latest()` keeps the last record of each turn.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import IO, Any

import numpy as np
import numpy.typing as npt

# struct socket_turn, little-endian, in field order (bpf/socket_turns.c)
_LAYOUT = struct.Struct("<9Q3I3HB3x16s16s2xI4x")
RECORD_SIZE = _LAYOUT.size
DROP_REASONS = ("ring_full", "rate", "sockets_full")  # slots of the program's `dropped` array


class TurnFileError(Exception):
    """A --socket-turns file that cannot be read; one line."""


@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen __init__ costs ~4 us, this ~0.4 (a join
class Turn:                                 # makes one per row it reads); never assigned to: dataclasses.replace
    sock: int
    born_ns: int
    first_in_ns: int
    first_read_ns: int
    last_read_ns: int
    first_write_ns: int
    last_write_ns: int
    acked_ns: int
    cgroup: int
    turn: int
    bytes_in: int
    bytes_out: int
    family: int
    lport: int
    rport: int
    final: int
    laddr: str
    raddr: str
    reader: int = 0  # thread id of the turn's first read; 0: not known (a record of an older version)

    @property
    def key(self) -> tuple[int, int, int]:
        """The turn's identity: its socket (address and birth) and its number on it."""
        return (self.sock, self.born_ns, self.turn)

    @property
    def connection(self) -> tuple[int, int]:
        return (self.sock, self.born_ns)

    @property
    def start_ns(self) -> int:
        """The request's first byte in, else (arrival not seen) its first read."""
        return self.first_in_ns or self.first_read_ns

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


_FIELDS = [f.name for f in fields(Turn)]


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return socket.inet_ntop(socket.AF_INET, raw[:4])


# the same record as a numpy dtype, to decode a batch of records at once
_INTS = [("sock", "<u8", 0), ("born_ns", "<u8", 8), ("first_in_ns", "<u8", 16), ("first_read_ns", "<u8", 24),
         ("last_read_ns", "<u8", 32), ("first_write_ns", "<u8", 40), ("last_write_ns", "<u8", 48),
         ("acked_ns", "<u8", 56), ("cgroup", "<u8", 64), ("turn", "<u4", 72), ("bytes_in", "<u4", 76),
         ("bytes_out", "<u4", 80), ("family", "<u2", 84), ("lport", "<u2", 86), ("rport", "<u2", 88),
         ("final", "u1", 90)]
RECORD_DTYPE = np.dtype({"names": [n for n, _, _ in _INTS] + ["laddr", "raddr", "reader"],
                         "formats": [f for _, f, _ in _INTS] + ["V16", "V16", "<u4"],
                         "offsets": [o for _, _, o in _INTS] + [94, 110, 128], "itemsize": 136})


def decode(raw: bytes) -> Turn:
    """One ring buffer record."""
    v = _LAYOUT.unpack_from(raw)
    family = v[12]
    names = _FIELDS[:16]
    return Turn(**dict(zip(names, v[:16], strict=True)), laddr=_address(family, v[16]),
                raddr=_address(family, v[17]), reader=v[18])


def decode_many(records: npt.NDArray[Any], read_only: bool = False) -> list[Turn]:
    """Turns of a batch of records (RECORD_DTYPE); with read_only, only those whose request was
    read (first_read_ns set: the others can join nothing)."""
    if read_only:
        records = records[records["first_read_ns"] != 0]
    if not len(records):
        return []
    columns = [records[n].tolist() for n, _, _ in _INTS]
    names: dict[tuple[int, bytes], str] = {}  # an address's text made once a batch and shared

    def text(family: int, raw: bytes) -> str:
        key = (family, raw)
        if key not in names:
            names[key] = _address(family, raw)
        return names[key]

    families = columns[12]
    laddrs = [text(f, bytes(a)) for f, a in zip(families, records["laddr"].tolist(), strict=True)]
    raddrs = [text(f, bytes(a)) for f, a in zip(families, records["raddr"].tolist(), strict=True)]
    return [Turn(*v) for v in zip(*columns, laddrs, raddrs, records["reader"].tolist(), strict=True)]


def records_of(turns: Sequence[Turn]) -> npt.NDArray[Any]:
    """Turns as the kernel's records (RECORD_DTYPE), as a ring buffer read returns them."""
    out = np.zeros(len(turns), dtype=RECORD_DTYPE)
    for name in [n for n, _, _ in _INTS] + ["reader"]:
        out[name] = [getattr(t, name) for t in turns]
    for name in ("laddr", "raddr"):
        out[name] = [_packed(t.family, getattr(t, name)) for t in turns]
    return out


def _packed(family: int, text: str) -> bytes:
    if not text:
        return bytes(16)
    raw = socket.inet_pton(socket.AF_INET6 if family == socket.AF_INET6 else socket.AF_INET, text)
    return raw.ljust(16, b"\0")


_OPTIONAL = frozenset({"reader"})  # absent from the files of older versions
_REQUIRED = frozenset(_FIELDS) - _OPTIONAL
_INT_FIELDS = frozenset(n for n in _FIELDS if n not in ("laddr", "raddr"))


def from_json(obj: Any) -> Turn | None:
    """A Turn from one decoded JSON line; None when it is not one."""
    if not isinstance(obj, dict) or not obj.keys() >= _REQUIRED:
        return None
    if not all(isinstance(obj[n], int) and obj[n] >= 0 for n in _INT_FIELDS if n in obj):
        return None
    return Turn(**{n: obj[n] for n in _FIELDS if n in obj})


def read_turns(fp: IO[str], rejected: dict[str, int] | None = None) -> Iterator[Turn]:
    """Turns of a JSON-lines file as `tcp-events --record` writes it; a line that is not one
    is counted under rejected["bad_turn_line"] and skipped."""
    for line in fp:
        line = line.strip()
        if not line:
            continue
        try:
            t = from_json(json.loads(line))
        except ValueError:
            t = None
        if t is None:
            if rejected is not None:
                rejected["bad_turn_line"] = rejected.get("bad_turn_line", 0) + 1
            continue
        yield t


def latest(turns: Iterable[Turn]) -> list[Turn]:
    """The last record of each turn, in order of the turns' start."""
    last: dict[tuple[int, int, int], Turn] = {}
    for t in turns:
        last[t.key] = t
    return sorted(last.values(), key=lambda t: (t.start_ns, t.key))
