"""A BPF ring buffer read by mmap of its map fd: no BCC in the reading process.

The kernel lays a ring buffer map out in pages (kernel/bpf/ringbuf.c): the consumer
position (the one page user space may write), the producer position, then the data,
mapped twice in a row so that a record that wraps round the end reads as one piece.
Each record is an 8-byte header (length, with a busy bit while the program is still
writing it and a discard bit for one it gave up) and its bytes, padded to 8.

Here every record has one size (socket_turns.c's struct), so a batch of committed
records is one strided block, taken with a numpy dtype in one copy; a record of
another size or a discarded one is stepped over (and counted), a busy one ends the read.
Positions are read and written as whole aligned 8-byte words. The kernel publishes a
record by clearing its busy bit after writing it (a release store); reading the header
and then the record in that order is exact on x86, which does not reorder loads. On
arm64 no explicit acquire separates the two loads here (the interpreter's own work
does in practice).
"""

from __future__ import annotations

import mmap
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from ..ebpf.bpfsys import map_info

BPF_MAP_TYPE_RINGBUF = 27
_BUSY, _DISCARD = 1 << 31, 1 << 30
_HEADER = 8
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class RingError(Exception):
    """The map cannot be read as a ring buffer; one line."""


class RingReader:
    """Records of one fixed size (`dtype`) from a ring buffer map's fd (not owned: not closed here)."""

    def __init__(self, fd: int, dtype: np.dtype[Any]) -> None:
        info = map_info(fd)
        if info.type != BPF_MAP_TYPE_RINGBUF:
            raise RingError(f"map {info.name} is of type {info.type}, not a ring buffer")
        self.size = info.max_entries  # bytes of data, a power of 2 pages
        self.dtype = dtype
        self._raw = np.dtype((np.void, dtype.itemsize))
        self.slot = (dtype.itemsize + _HEADER + 7) // 8 * 8
        self._slot_dtype = np.dtype({"names": ["len", "rec"], "formats": ["<u4", dtype],
                                     "offsets": [0, _HEADER], "itemsize": self.slot})
        page = mmap.PAGESIZE
        self._data = page  # where the data begins in the producer mapping
        try:
            self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._producer = mmap.mmap(fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except OSError as e:
            raise RingError(f"cannot map the ring buffer {info.name}: {e.strerror or e}") from None
        self.skipped = 0  # records of another size, and discarded ones

    def pending(self) -> int:
        """Bytes the kernel has committed or reserved that were not read yet."""
        return int(_U64.unpack_from(self._producer, 0)[0] - _U64.unpack_from(self._consumer, 0)[0])

    def read(self) -> npt.NDArray[Any]:
        """Every record committed so far, in order, as one array of `dtype` (a copy); their
        space goes back to the kernel."""
        cons = _U64.unpack_from(self._consumer, 0)[0]
        prod = _U64.unpack_from(self._producer, 0)[0]
        mask = self.size - 1
        parts: list[npt.NDArray[Any]] = []
        while cons < prod:
            at = self._data + (cons & mask)
            n = (prod - cons) // self.slot
            if n:
                slots = np.frombuffer(self._producer, self._slot_dtype, count=n, offset=at)
                odd = np.flatnonzero(slots["len"] != self.dtype.itemsize)
                k = int(odd[0]) if len(odd) else n
                if k:
                    records = slots["rec"][:k]  # copied as bytes: numpy copies a structured array field by field
                    parts.append(records.view(self._raw).copy().view(self.dtype))
                    del records
                    cons += k * self.slot
                del slots  # no view may outlive the read: the mapping closes later
                if k == n:
                    continue
            (length,) = _U32.unpack_from(self._producer, self._data + (cons & mask))
            if length & _BUSY:
                break  # still being written: the records after it wait for the next read
            cons += ((length & ~(_BUSY | _DISCARD)) + _HEADER + 7) // 8 * 8
            self.skipped += 1
        _U64.pack_into(self._consumer, 0, cons)
        if not parts:
            return np.zeros(0, dtype=self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()
