"""The receiver's fast path (exporter/otlp/_tree.c, where it is built and fresh): a request's span
records -> the span checks of spans.py, the duplicate test, and the rows of every OTel trace the
request brings whole (root included, none of it held: Triton exports a request's root last, bulk
senders post whole requests). Every other span takes the Python path (held.py, spans.tree_traces),
which is the reference: both count the same (tests/test_otlp_tree.py)."""

from __future__ import annotations

import os
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..stages import COLUMN, COLUMNS, COUNT_COL, FIRST_COL, NAMES, NCOLS
from ..traces import compiled
from ..traces.assembly import TraceBatch
from .cdecode import ENV
from .decode import Decoded
from .spans import (
    HTTP_SENDS,
    MAX_AHEAD_NS,
    MIN_WALL_NS,
    MODEL_NAME,
    MODEL_VERSION,
    RECEIVED,
    REQUEST_ID,
    Span,
    checked_span,
)

# the reasons _tree.build counts, in its order
REASONS = ("bad_span_id", "missing_attribute", "bad_label", "implausible_time", "unknown_timestamp", "orphan_span")

BUILT: Any  # the compiled module where it is built and fresh, else None (STALE says why)
BUILT, STALE = compiled.load(__package__ + "._tree")
if BUILT is not None:
    BUILT.configure({n: COLUMN[n] for n in NAMES}, NCOLS, FIRST_COL, COUNT_COL,
                    [COLUMN[n] for n in COLUMNS if n.startswith("HTTP_")],
                    [COLUMN[n] for n in COLUMNS if n.startswith("GRPC_")],
                    sorted(COLUMN[n] for n in RECEIVED), sorted(COLUMN[n] for n in HTTP_SENDS),
                    MIN_WALL_NS, MAX_AHEAD_NS, MODEL_NAME, MODEL_VERSION, REQUEST_ID)
# the path in use; ENV (INFPROF_PURE_PYTHON_OTLP): the Python path alone, as for the decoders
TREE: Any = None if os.environ.get(ENV) else BUILT



def path_name() -> str:
    """Which path counts OTLP spans here, for `check`."""
    if TREE is not None:
        return "C (compiled _tree module) for whole trees, Python for the rest"
    why = f"{ENV} is set" if BUILT is not None else STALE or "no compiled _tree module"
    return f"pure Python ({why}; several times slower per span)"


Rows = tuple[TraceBatch, npt.NDArray[np.int8]]  # a batch and each row's protocol code


@dataclass
class Split:
    """One request, checked: what the Python path still has to place."""

    rejects: dict[str, int]  # by reason, the spans (or events: unknown_timestamp) not counted
    keys: list[bytes]  # of the new spans, in the request's order
    duplicates: int
    slow: list[Span]  # the new spans not in `rows`, in the request's order
    rows: Rows | None  # the traces of the whole trees, ids from 1


def split(records: Decoded, now_ns: int, held: Container[bytes], seen: Container[bytes],
          legacy: set[bytes]) -> Split | None:
    """The request split by the compiled path; None where it is not built (Python serves all)."""
    if TREE is None:
        return None
    try:
        counts, keys, duplicates, slow, rows = TREE.build(records, now_ns, held, seen, legacy)
    except TypeError:  # records of another shape than SpanRecord's: the Python path checks them
        return None
    return Split(dict(zip(REASONS, counts, strict=True)), keys, duplicates,
                 [checked_span(records[i]) for i in slow], _batch(rows))


def _batch(rows: tuple[Any, ...]) -> Rows | None:
    n, ids, parents, stamps, hdr, headers, request_ids, extra, customs, trace_ids, failed, codes = rows
    if not n:
        return None

    def col(b: bytes, dtype: type) -> npt.NDArray[Any]:
        return np.frombuffer(b or b"", dtype=dtype).copy()

    fail = col(failed, np.bool_)
    batch = TraceBatch(col(ids, np.int64), col(parents, np.int64), col(stamps, np.int64).reshape(n, NCOLS),
                       col(hdr, np.int32), headers, request_ids, col(extra, np.int64).reshape(-1, 3), customs,
                       trace_ids, fail if fail.any() else None)
    return batch, col(codes, np.int8)
