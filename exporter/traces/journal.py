"""The state journal: what each commit changed, appended beside the state file.

Rewriting the whole state (every file's checkpoint, every stream, the whole aggregate)
for each ingested file costs O(state) per file. Instead a commit appends one line to
the journal, `{"c":"<checksum>","r":<record>}`, with one write() and an fdatasync: what
that commit changed. The first line names the snapshot the records apply to by its
checksum, so after a compaction (a new snapshot) the old journal's records are never
applied twice: the journal is ignored unless its base is the snapshot beside it.

A last line that is incomplete or fails its checksum is a commit cut by a crash: that
commit never happened. Any other line that does is damage: the records before it are
good, it and the rest are set aside. Lines are read one at a time, so a journal of
garbage costs one line's memory before it is judged.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, BinaryIO, TypeVar

import msgspec

from .checkpoint import StateWriteError, write_durably

# 3: small batches' observations as values ("v", "rv": an earlier version would drop them, so it
# refuses the journal); 2: named fields; 1: one-letter keys. 1 and 2 are still read.
JOURNAL_VERSION = 3
JOURNAL_VERSIONS = (1, 2, 3)
_HEAD = b'{"c":"'
_MID = b'","r":'
_BODY = len(_HEAD) + 32 + len(_MID)  # where a record's JSON starts in its line

K = TypeVar("K")
V = TypeVar("V")


_ENCODER = msgspec.json.Encoder()


def encode(record: Mapping[str, Any]) -> bytes:
    """One line: the record's compact JSON and a checksum of exactly those bytes."""
    try:  # the checksum covers these bytes, whichever encoder made them: msgspec's is ~5x faster
        body = _ENCODER.encode(record)
    except (TypeError, msgspec.EncodeError):
        body = json.dumps(record, separators=(",", ":")).encode()
    return _HEAD + hashlib.blake2b(body, digest_size=16).hexdigest().encode() + _MID + body + b"}\n"


def decode(line: bytes) -> dict[str, Any] | None:
    """The record of one whole line (with its newline), None when it is cut or damaged."""
    if not (line.startswith(_HEAD) and line[_BODY - len(_MID):_BODY] == _MID and line.endswith(b"}\n")):
        return None
    body = line[_BODY:-2]
    if hashlib.blake2b(body, digest_size=16).hexdigest().encode() != line[len(_HEAD):_BODY - len(_MID)]:
        return None
    try:
        v = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return v if isinstance(v, dict) else None


@dataclass
class JournalRead:
    records: list[dict[str, Any]] = field(default_factory=list)
    stale: bool = False  # written on top of another snapshot (or none is left): ignored
    torn: bool = False  # the last line was cut by a crash: that commit never happened
    damaged: str = ""  # why the records after `records` cannot be trusted
    upgraded: bool = False  # written by an earlier version (records in its form)


def read_journal(path: str, base: str) -> JournalRead:
    """The records in path that apply on top of the snapshot whose checksum is base, judged line by
    line: a damaged line ends the good records before it. Reads only, one line at a time."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, after the loop)
    except FileNotFoundError:
        return JournalRead()
    except OSError as e:
        return JournalRead(damaged=f"journal {path}: {e.strerror or e}")
    with f:
        first = f.readline()
        if not first.endswith(b"\n"):  # created whole by a rename: a header cut short is damage
            return JournalRead(damaged=f"journal {path} has no valid header") if first else JournalRead()
        head = decode(first)
        if head is None or head.get("journal") not in JOURNAL_VERSIONS or not isinstance(head.get("base"), str):
            return JournalRead(damaged=f"journal {path} has no valid header")
        if head["base"] != base or not base:
            return JournalRead(stale=True)
        out = JournalRead(upgraded=head["journal"] != JOURNAL_VERSION)
        number = "n" if head["journal"] == 1 else "number"
        line = f.readline()
        i = 1
        while line:
            nxt = f.readline()
            if not line.endswith(b"\n"):
                out.torn = True  # bytes after the last newline: a record cut by a crash
                break
            rec = decode(line)
            if rec is None and not nxt:
                out.torn = True  # the last line whole but wrong: its write was cut too
                break
            if rec is None or rec.get(number) != i:
                lines = i + 1 + (nxt.count(b"\n") if nxt else 0) + _count_lines(f)
                out.damaged = f"journal {path} line {i + 1} of {lines} is damaged"
                break
            out.records.append(rec)
            line = nxt
            i += 1
        return out


def _count_lines(f: BinaryIO) -> int:
    """Newlines in the rest of f, a chunk at a time."""
    n = 0
    while chunk := f.read(1 << 20):
        n += chunk.count(b"\n")
    return n


class Journal:
    """The journal file being appended to; created (by a rename) with its first record."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.base = ""
        self.size = 0  # bytes in the journal, 0: none written on top of the current snapshot
        self.records = 0

    def adopt(self, base: str, records: int) -> None:
        """Go on appending to the journal that was read whole at start-up."""
        self.base, self.records = base, records
        self.size = os.path.getsize(self.path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def number(self, base: str) -> int:
        """The "n" of the next record appended on top of base."""
        return 1 if self.fd is None or base != self.base else self.records + 1

    def append(self, line: bytes, base: str) -> int:
        """Append one encoded record durably (a new journal on top of base when there is none);
        returns the bytes written. Raises StateWriteError with nothing appended."""
        if self.fd is None or base != self.base:
            self.close()
            text = encode({"journal": JOURNAL_VERSION, "base": base}) + line
            write_durably(self.path, text)
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            except OSError as e:
                raise StateWriteError(f"cannot write state file {self.path}: {e.strerror or e}") from None
            self.base, self.size, self.records = base, len(text), 1
            return len(text)
        try:
            n = os.write(self.fd, line)
            if n != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a short write to a file: disk full
            os.fdatasync(self.fd)
        except OSError as e:
            # cut off what was written of it; the caller writes a whole state file next, which replaces
            # this journal anyway
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise StateWriteError(f"cannot write state file {self.path}: {e.strerror or e}") from None
        self.size += len(line)
        self.records += 1
        return len(line)

    def reset(self) -> None:
        """The snapshot now holds every record: the journal goes (a crash before this leaves a
        journal whose base is the old snapshot, which start-up ignores)."""
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.base, self.size, self.records = "", 0, 0

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


# --- what changed in an insertion-ordered mapping ------------------------------
# The state's mappings are written in insertion order (new keys last, a protocol table trimmed
# from its oldest), so their change is written as: delete these keys (or the first n), then
# add these (key, value) pairs at the end. Replaying it gives the same mapping in the same order.

def ordered_delta(old: Mapping[K, V], new: Mapping[K, V]) -> tuple[int | list[K], list[tuple[K, V]]]:
    """(drop, add): deleting drop (a count: old's first keys) from old, then appending add,
    gives new, order included."""
    ok, nk = list(old), list(new)
    # the usual change: old's oldest keys dropped, old's rest kept unchanged, new keys appended
    d = ok.index(nk[0]) if nk and nk[0] in old else len(ok)
    n = len(ok) - d
    if ok[d:] == nk[:n] and list(old.values())[d:] == list(new.values())[:n]:
        return d, list(new.items())[n:]
    # anything else: old's keys kept in order as long as new begins with them, the rest re-added
    m = 0
    dropped: list[K] = []
    for k, v in old.items():
        if m < len(nk) and nk[m] == k and new[k] == v:
            m += 1
        else:
            dropped.append(k)
    prefix = len(dropped) <= len(ok) and ok[:len(dropped)] == dropped
    return (len(dropped) if prefix else dropped), list(new.items())[m:]


def apply_ordered(target: dict[K, V], drop: object, add: Iterable[tuple[K, V]]) -> None:
    """Replay an ordered_delta on target in place; TypeError/KeyError/ValueError if it does not fit."""
    if isinstance(drop, bool) or not isinstance(drop, (int, list)):
        raise TypeError(f"drop {drop!r}")
    if isinstance(drop, int):
        if not 0 <= drop <= len(target):
            raise ValueError(f"drop {drop} of {len(target)}")
        gone: Iterator[K] | list[K] = list(islice(target, drop))
    else:
        gone = drop
    for k in gone:
        del target[k]
    for k, v in add:
        target.pop(k, None)
        target[k] = v
