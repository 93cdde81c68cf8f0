"""The request model over any timestamp order: segments never negative, always adding up."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import stages
from exporter.stages import (
    COLUMN,
    SEGMENTS,
    STAGES,
    _exclusive_numpy,
    exclusive,
    exclusive_reference,
)
from exporter.traces.assembly import Trace, TraceBatch

NAMES = sorted(stages.KNOWN_TIMESTAMPS - {"CUSTOM_ACTIVITY"})
times = st.integers(0, 2_000)  # small: many ties and overlaps

one_trace = st.lists(st.tuples(st.sampled_from(NAMES), times), max_size=40).map(
    lambda stamps: [("REQUEST_START", 1), ("REQUEST_END", 2), *stamps])


def batch_of(traces: list[list[tuple[str, int]]]) -> TraceBatch:
    out = []
    for i, stamps in enumerate(traces):
        t = Trace(i + 1, "m", "1")
        for name, ns in stamps:
            if ns:
                t.add(name, ns)
        out.append(t)
    return TraceBatch.from_traces(out)


@settings(max_examples=400, deadline=None)
@given(traces=st.lists(one_trace, min_size=1, max_size=6))
def test_segments_are_never_negative_and_add_up_to_end_to_end(traces: list[list[tuple[str, int]]]) -> None:
    batch = batch_of(traces)
    an = batch.anatomy(np.arange(len(batch)))
    e2e = an.durations[:, STAGES.index("end_to_end")]
    assert (an.segments >= 0).all()
    assert (an.segments.sum(axis=1)[an.timed] == e2e[an.timed]).all()
    assert (an.segments[~an.timed] == 0).all()
    # each row against the one-trace rule (every response's send an interval of its own)
    for i in np.flatnonzero(an.timed).tolist():
        row = batch.stamps[i]
        arrival = int(e2e[i])  # the window's length; its start:
        lo = next(int(row[COLUMN[n]]) for n in ("HTTP_RECV_START", "GRPC_WAITREAD_END", "REQUEST_START")
                  if row[COLUMN[n]] >= 0)
        want = stages.trace_segments(row, batch.repeats(i), lo, lo + arrival)
        assert an.segments[i].tolist() == want
        times_out = stages.response_times(row, batch.repeats(i))
        assert an.responses[i] == len(times_out)
        assert sorted(an.gaps[an.gap_rows == i].tolist()) == sorted(b - a for a, b in itertools.pairwise(times_out))
    # the handler's and the frontend's segments are their stages, never negative
    for stage in ("handler_overhead", "frontend_overhead"):
        col = an.durations[:, STAGES.index(stage)]
        assert (col[col != -1] >= 0).all()


intervals = st.lists(st.tuples(st.integers(-1, 50), st.integers(-1, 50)), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(rows=st.lists(st.tuples(intervals, st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=5),
       k=st.integers(1, 8))
def test_c_numpy_and_reference_sweeps_agree(rows: list[tuple[list[tuple[int, int]], int, int]], k: int) -> None:
    starts = np.full((len(rows), k), -1, dtype=np.int64)
    ends = np.full((len(rows), k), -1, dtype=np.int64)
    lo = np.array([min(a, b) for _, a, b in rows], dtype=np.int64)
    hi = np.array([max(a, b) for _, a, b in rows], dtype=np.int64)
    for r, (iv, _, _) in enumerate(rows):
        for j, (a, b) in enumerate(iv[:k]):
            starts[r, j], ends[r, j] = a, b
    want = [exclusive_reference([(j, int(starts[r, j]), int(ends[r, j])) for j in range(k) if starts[r, j] >= 0],
                                int(lo[r]), int(hi[r]), k + 1) for r in range(len(rows))]
    assert exclusive(starts.T.copy(), ends.T.copy(), lo, hi).tolist() == want
    assert _exclusive_numpy(starts.T.copy(), ends.T.copy(), lo, hi).tolist() == want


def test_the_c_sweep_is_built() -> None:
    assert stages._exclusive_c is not None, "exporter.traces._scan did not build (gcc and Python headers)"


def test_unary_http_trace_where_the_handler_outlives_the_send() -> None:
    """Triton releases the request after sending its reply (43% of the samples): no negative
    overhead, and the frontend gets what no other segment holds."""
    ts = dict(HTTP_RECV_START=0, HTTP_RECV_END=10, REQUEST_START=100, QUEUE_START=110, COMPUTE_START=200,
              COMPUTE_INPUT_END=210, COMPUTE_OUTPUT_START=900, INFER_RESPONSE_COMPLETE=950, COMPUTE_END=960,
              HTTP_SEND_START=980, HTTP_SEND_END=995, REQUEST_END=1000)
    batch = batch_of([[(n, 10**9 + ns) for n, ns in ts.items()]])  # 0 ns would mean "not captured"
    an = batch.anatomy(np.arange(1))
    seg = dict(zip(SEGMENTS, an.segments[0].tolist(), strict=True))
    assert seg == {"compute_input": 10, "compute_infer": 690, "compute_output": 60, "queue": 90, "send": 15,
                   "cache_hit": 0, "between_responses": 0, "model_after_release": 0, "handler_overhead": 30, "recv": 10,
                   "frontend_overhead": 90}
    assert an.durations[0, STAGES.index("end_to_end")] == 995
    assert an.durations[0, STAGES.index("first_response")] == 995
    assert an.negative.sum() == 0


def test_streaming_from_a_thread() -> None:
    """execute() returned at once: the responses come after the release, each send its own. As
    Triton writes it over gRPC: one INFER_RESPONSE_COMPLETE, when the thread completes its first
    response. Release -> that completion is the model's (its thread); the first response out ->
    the last is between_responses, sends apart; the frontend keeps only its own gaps."""
    stamps = [("GRPC_WAITREAD_END", 0), ("REQUEST_START", 10), ("QUEUE_START", 20), ("COMPUTE_START", 30),
              ("COMPUTE_INPUT_END", 40), ("COMPUTE_OUTPUT_START", 50), ("COMPUTE_END", 60), ("REQUEST_END", 70)]
    for i in range(3):
        stamps += [("GRPC_SEND_START", 1000 * (i + 1)), ("GRPC_SEND_END", 1000 * (i + 1) + 100)]
    stamps.append(("INFER_RESPONSE_COMPLETE", 990))
    batch = batch_of([[(n, 10**9 + ns) for n, ns in stamps]])  # 0 ns would mean "not captured"
    an = batch.anatomy(np.arange(1))
    seg = dict(zip(SEGMENTS, an.segments[0].tolist(), strict=True))
    assert an.durations[0, STAGES.index("end_to_end")] == 3100
    assert an.durations[0, STAGES.index("first_response")] == 1100
    assert an.responses[0] == 3 and sorted(an.gaps.tolist()) == [1000, 1000]
    assert seg["send"] == 300 and seg["between_responses"] == 3100 - 1100 - 200
    assert seg["model_after_release"] == 990 - 70
    assert seg["frontend_overhead"] == 10 + 10  # arrival -> REQUEST_START, completion -> send
    assert seg["handler_overhead"] == 10 + 10 and seg["compute_infer"] == 10
    assert sum(seg.values()) == 3100
