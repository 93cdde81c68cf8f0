"""The one trace pipeline: a file of a stream -> batches of finished traces with their
protocols. `serve` (the tailer, which adds checkpointing) and `summary` (which adds
quantile sketches) both read through it, so they count the same traces the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from ..config import OPEN_TRACES
from ..stages import Protocol
from .assembly import StreamState, Trace, TraceBatch, release_pending, resolve
from .records import ReadResult, RejectFn
from .scanner import FileScan

WINDOW = OPEN_TRACES  # traces held open while a file streams: bounds memory on huge files
CHILD_HOLD_SECONDS = 30.0  # how long an ensemble child waits for its parent's protocol

Batch = tuple[TraceBatch, npt.NDArray[np.int8]]


def released(stream: StreamState, now: float, hold_seconds: float, force: bool = False) -> Iterator[Batch]:
    """Waiting children whose parent is now known, or that waited hold_seconds (as 'none')."""
    traces, codes = release_pending(stream, hold_seconds, now, force)
    if traces:
        yield TraceBatch.from_traces(traces), np.array(codes, dtype=np.int8)


def file_batches(fp: BinaryIO, result: ReadResult, stream: StreamState, reject: RejectFn, now: float, *,
                 start: int = 0, salvage_tail: bool = False, restart: bool = False, window: int = WINDOW,
                 hold_seconds: float = CHILD_HOLD_SECONDS) -> Iterator[Batch]:
    """Every batch one file of a stream gives, from byte `start`; `stream` is updated in place.

    restart: the file begins a new Triton run (trace ids start again), so children still
    waiting from the old run are counted first, with protocol 'none'.
    """
    if restart:
        yield from released(stream, now, 0, force=True)
        stream.protocols.clear()
    pushed_out: list[Trace] = []
    scan = FileScan(window, reject)
    for batch in scan.batches(fp, result, start, salvage_tail):
        yield resolve(batch, stream, scan.lookup, now, pushed_out.append)
        if stream.pending:  # children whose parent this batch finished: before its protocol ages out
            yield from released(stream, now, hold_seconds)
    if pushed_out:  # children pushed out of a full wait list
        yield TraceBatch.from_traces(pushed_out), np.full(len(pushed_out), Protocol.NONE, dtype=np.int8)
    yield from released(stream, now, hold_seconds)
