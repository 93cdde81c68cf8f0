"""One trace file -> batches of finished traces (columns), with bounded memory.

The pure-Python path (records.read_records + MergeWindow) is the reference; the C
scanner (`_scan`, built by pip where a compiler exists) does the same work ~20x
faster and hands every object it does not handle quickly back to Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from .assembly import MergeWindow, Trace, TraceBatch
from .records import ReadResult, RejectFn, read_records

BATCH = 8192


class PyFileScan:
    """Reads one file from `start` and yields batches of finished traces."""

    def __init__(self, window: int, reject: RejectFn, batch: int = BATCH) -> None:
        self.reject = reject
        self.batch = batch
        self._done: list[Trace] = []
        self.merge = MergeWindow(window, self._done.append)

    def lookup(self, tid: int) -> Trace | None:
        return self.merge.open_trace(tid)

    def batches(self, fp: BinaryIO, result: ReadResult, start: int = 0,
                salvage_tail: bool = False) -> Iterator[TraceBatch]:
        for rec in read_records(fp, self.reject, result, start, salvage_tail=salvage_tail):
            self.merge.feed(rec)
            if len(self._done) >= self.batch:
                yield TraceBatch.from_traces(self._done)
                self._done.clear()
        self.merge.finish_all()
        if self._done:
            yield TraceBatch.from_traces(self._done)
            self._done.clear()


FileScan = PyFileScan
