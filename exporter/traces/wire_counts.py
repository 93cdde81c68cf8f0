"""What the socket join adds to a trace aggregate: join results, the two timeline segments
outside end_to_end, and the wire stages of requests held from earlier batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from ..stages import Anatomy
from ..wire.names import JOIN_RESULTS, WIRE_SEGMENTS, WIRE_STAGES

if TYPE_CHECKING:
    from ..wire.held import Settled
    from .aggregate import TraceAggregate

SeriesKey = tuple[str, ...]


class WireResult(Protocol):
    """A batch's socket join (exporter/wire/live.py's WireObservations)."""

    rows: npt.NDArray[np.intp]  # index into the batch's observed rows, one per observation
    stages: npt.NDArray[np.intp]  # index into WIRE_STAGES
    ns: npt.NDArray[np.int64]
    socket_wait: npt.NDArray[np.int64]  # per observed row, -1 where not joined
    ack_wait: npt.NDArray[np.int64]
    result_of: npt.NDArray[np.intp]  # per observed row, index into JOIN_RESULTS; -1: held, counted later


# joins the observed rows of a batch (stamps, protocol codes, anatomy, each row's series, its exemplar
# ids by row) to socket turns
WireJoin = Callable[[npt.NDArray[np.int64], npt.NDArray[np.int8], Anatomy, list[SeriesKey],
                     Callable[[int], tuple[str, str | None]]], WireResult]


def wire_counts(agg: TraceAggregate, obs: WireResult, gidx: npt.NDArray[np.intp], bases: list[SeriesKey]) -> None:
    """Per group: the join results of its rows and, for joined rows, the two wire segments."""
    n_groups = len(bases)
    for seg, per_row in zip(WIRE_SEGMENTS, (obs.socket_wait, obs.ack_wait), strict=True):
        joined = per_row >= 0
        sums = np.zeros(n_groups, dtype=np.int64)
        np.add.at(sums, gidx[joined], per_row[joined])  # exact: the segments add up to wire
        for g in np.unique(gidx[joined]).tolist():
            agg.timeline[(*bases[g], seg)] += int(sums[g])
    n_res = len(JOIN_RESULTS)
    counted = obs.result_of >= 0  # the rest are held for a later batch (exporter/wire/held.py)
    for f, n in enumerate(np.bincount(gidx[counted] * n_res + obs.result_of[counted],
                                      minlength=n_groups * n_res).tolist()):
        if n:
            agg.joins[(*bases[f // n_res], JOIN_RESULTS[f % n_res])] += n


def count_settled(agg: TraceAggregate, settled: Sequence[Settled]) -> None:
    """Requests held from earlier batches, settled now: their join result, and where joined their
    wire stages (with exemplars) and segments (their Triton segments came with their batch)."""
    keys: list[SeriesKey] = []
    index: dict[SeriesKey, int] = {}
    series: list[int] = []
    values: list[int] = []
    rows: list[int] = []
    for r, s in enumerate(settled):
        agg.joins[(*s.base, s.result)] += 1
        if s.wire is None:
            continue
        agg.timeline[(*s.base, "socket_wait")] += s.wire.socket_wait_ns
        agg.timeline[(*s.base, "ack_wait")] += s.wire.ack_wait_ns
        for stage, ns in zip(WIRE_STAGES, (s.wire.socket_wait_ns, s.wire.ack_wait_ns, s.wire.wire_ns), strict=True):
            key = (*s.base, stage)
            if key not in index:
                index[key] = len(keys)
                keys.append(key)
            series.append(index[key])
            values.append(ns)
            rows.append(r)
    if values:
        agg.observe_values(np.asarray(series, dtype=np.int64), np.asarray(values, dtype=np.int64),
                           np.asarray(rows, dtype=np.intp), keys,
                           lambda r: (settled[r].trace_id, settled[r].request_id))
