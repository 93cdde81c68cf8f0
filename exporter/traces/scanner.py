"""One trace file -> batches of finished traces (columns), with bounded memory.

The pure-Python path (records.read_records + MergeWindow) is the reference; the C
scanner (`_scan`, built by pip where a compiler exists) does the same work ~20x
faster and hands every object it does not handle quickly back to Python.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from ..stages import (
    COLUMN,
    COLUMNS,
    COUNT_COL,
    FIRST_COL,
    MAX_CUSTOM_NAMES,
    NAMES,
    NCOLS,
    scan_model,
)
from . import compiled
from .assembly import MergeWindow, Trace, TraceBatch
from .records import ChunkEnd, ReadResult, RejectFn, Stamps, TensorFn, read_records

BATCH = 8192  # Trace objects held by the Python path before a batch is formed
C_BATCH = 16384  # rows of the C path: the scanner computes each row's request model, so a batch only bins


class _CustomNames:
    """The custom activity names of one scan, bounded: a name past the cap is rejected."""

    def __init__(self, reject: RejectFn) -> None:
        self.reject = reject
        self.customs: list[str] = []
        self._code: dict[str, int] = {}

    def custom_code(self, name: str) -> int | None:
        code = self._code.get(name)
        if code is None:
            if len(self.customs) >= MAX_CUSTOM_NAMES:
                self.reject("custom_activity_cap")
                return None
            code = self._code[name] = NCOLS + len(self.customs)
            self.customs.append(name)
        return code


class PyFileScan(_CustomNames):
    """Reads one file from `start` and yields batches of finished traces."""

    def __init__(self, window: int, reject: RejectFn, batch: int = BATCH) -> None:
        super().__init__(reject)
        self.batch = batch
        self._done: list[Trace] = []
        self.headers: list[tuple[str, str]] = []
        self.merge = MergeWindow(window, self._done.append)

    def lookup(self, tid: int) -> Trace | None:
        return self.merge.open_trace(tid)

    def batches(self, fp: BinaryIO, result: ReadResult, start: int = 0, salvage_tail: bool = False,
                on_tensor: TensorFn | None = None) -> Iterator[TraceBatch]:
        for rec in read_records(fp, self.reject, result, start, salvage_tail=salvage_tail, on_tensor=on_tensor):
            if isinstance(rec, ChunkEnd):
                continue
            if isinstance(rec, Stamps) and any(n not in COLUMN for n, _ in rec.stamps):
                rec.stamps = [(n, ns) for n, ns in rec.stamps if n in COLUMN or self.custom_code(n) is not None]
            self.merge.feed(rec)
            if len(self._done) >= self.batch:
                yield TraceBatch.from_traces(self._done, self.headers, self.customs)
                self._done.clear()
        self.merge.finish_all()
        if self._done:
            yield TraceBatch.from_traces(self._done, self.headers, self.customs)
            self._done.clear()


_scan: Any = compiled.SCAN  # None: no compiler where it was installed, or a stale build; Python serves
if os.environ.get("INFPROF_PURE_PYTHON_SCANNER"):  # for benchmarks and debugging
    _scan = None


class CFileScan(_CustomNames):
    """The same as PyFileScan, with objects decoded and merged by the C scanner."""

    def __init__(self, window: int, reject: RejectFn, batch: int = C_BATCH) -> None:
        super().__init__(reject)
        self.batch = batch
        self.sc = _scan.Scanner(NAMES, NCOLS, FIRST_COL, COUNT_COL, window)
        self.width = self.sc.set_model(scan_model())  # each trace's request model, computed as it finishes

    def lookup(self, tid: int) -> Trace | None:
        found = self.sc.lookup(tid)
        if found is None:
            return None
        parent, stamps = found
        return Trace(tid, parent_id=parent, stamps=stamps)

    def _take(self) -> TraceBatch:
        ids, parents, stamps, hdr, rids, extra, model = self.sc.take()
        return TraceBatch(
            np.frombuffer(ids, dtype=np.int64),
            np.frombuffer(parents, dtype=np.int64),
            np.frombuffer(stamps, dtype=np.int64).reshape(-1, len(COLUMNS)),
            np.frombuffer(hdr, dtype=np.int32),
            self.sc.headers,
            rids,
            np.frombuffer(extra, dtype=np.int64).reshape(-1, 3),
            self.customs,
            model=np.frombuffer(model, dtype=np.int64).reshape(-1, self.width),
        )

    def batches(self, fp: BinaryIO, result: ReadResult, start: int = 0, salvage_tail: bool = False,
                on_tensor: TensorFn | None = None) -> Iterator[TraceBatch]:
        sc = self.sc
        before = sc.objects

        def fast(buf: bytes, pos: int) -> tuple[int, int, int]:
            out: tuple[int, int, int] = sc.feed(buf, pos, False)
            return out

        for rec in read_records(fp, self.reject, result, start, C_CHUNK, salvage_tail, fast, on_tensor):
            if isinstance(rec, ChunkEnd):
                if sc.finished >= self.batch:
                    yield self._take()
                continue
            if isinstance(rec, Stamps):
                for name, ns in rec.stamps:
                    col = COLUMN.get(name)
                    if col is not None:
                        sc.inject_stamp(rec.id, col, ns)
                    elif (code := self.custom_code(name)) is not None:
                        sc.inject_extra(rec.id, code, ns)
            else:
                sc.inject_header(rec.id, rec.model, rec.version, rec.request_id,
                                 -1 if rec.parent_id is None else rec.parent_id)
        sc.finish_all()
        result.objects += sc.objects - before
        while sc.finished:
            yield self._take()


C_CHUNK = 4 << 20
FileScan: type[PyFileScan] | type[CFileScan] = CFileScan if _scan is not None else PyFileScan


def scanner_name() -> str:
    """Which scanner reads trace files here, for the log and `check`."""
    if FileScan is CFileScan:
        return "C (compiled _scan module)"
    why = "INFPROF_PURE_PYTHON_SCANNER is set" if os.environ.get("INFPROF_PURE_PYTHON_SCANNER") else \
        compiled.STALE or "no compiled _scan module"
    return f"pure Python ({why}; about 20x slower)"


_MODEL: tuple[Any, int] | None = None  # a scanner used only for its request model (model_rows), and its row width


def with_model(batch: TraceBatch) -> TraceBatch:
    """The batch with each row's request model computed in C where the C scanner is built (rows
    assembled in Python, as OTLP's are), so its anatomy only bins, as a scanned file's does."""
    global _MODEL
    if _scan is None or not len(batch):
        return batch
    if _MODEL is None:
        sc = _scan.Scanner(NAMES, NCOLS, FIRST_COL, COUNT_COL, 1)
        _MODEL = (sc, sc.set_model(scan_model()))
    sc, width = _MODEL
    # with the rows' every occurrence: streaming rows (Triton's streams) are finished in C too
    model, gaps = sc.model_rows(np.ascontiguousarray(batch.stamps), np.ascontiguousarray(batch.extra))
    batch.model = np.frombuffer(model, dtype=np.int64).reshape(-1, width)
    batch.model_gaps = np.frombuffer(gaps, dtype=np.int64).reshape(-1, 2)
    return batch
