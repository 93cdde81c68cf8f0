"""The stage table: the one place that knows Triton's timestamp names (docs/metrics.md, "Stages").

A batch of finished traces is a matrix of timestamps (one column per name, -1 where
absent) plus, for the names Triton repeats once per response, their first occurrence,
their count and (where there are more than two) every occurrence. From these come the
spans, the response stages and the exclusive timeline; pure functions, no I/O.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .exclusive import _exclusive_c, _exclusive_numpy, exclusive, exclusive_reference  # noqa: F401 (re-exported)

# (stage, start timestamp, end timestamp), in request order. Repeated names: the last occurrence.
SPANS: tuple[tuple[str, str, str], ...] = (
    ("http_infer", "HTTP_RECV_START", "HTTP_SEND_END"),
    ("http_recv", "HTTP_RECV_START", "HTTP_RECV_END"),
    ("http_send", "HTTP_SEND_START", "HTTP_SEND_END"),
    ("grpc_infer", "GRPC_WAITREAD_END", "GRPC_SEND_END"),
    ("grpc_waitread", "GRPC_WAITREAD_START", "GRPC_WAITREAD_END"),
    ("grpc_send", "GRPC_SEND_START", "GRPC_SEND_END"),
    ("request", "REQUEST_START", "REQUEST_END"),
    ("queue", "QUEUE_START", "COMPUTE_START"),
    ("compute", "COMPUTE_START", "COMPUTE_END"),
    ("compute_input", "COMPUTE_START", "COMPUTE_INPUT_END"),
    ("compute_infer", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
    ("compute_output", "COMPUTE_OUTPUT_START", "COMPUTE_END"),
)

# The handler's and the frontend's own segments of the timeline, observed as stages too.
DERIVED: tuple[str, ...] = ("handler_overhead", "frontend_overhead")
# Whole-request stages, one observation per trace (inter_response: one per gap, apart).
RESPONSE_STAGES: tuple[str, ...] = ("end_to_end", "first_response")
INTER_RESPONSE = "inter_response"

# One column of the duration matrix per stage, in this order.
STAGES: tuple[str, ...] = tuple(s for s, _, _ in SPANS) + DERIVED + RESPONSE_STAGES
# Every stage a histogram series can carry (custom activities add "custom_<name>").
ALL_STAGES: tuple[str, ...] = (*STAGES, INTER_RESPONSE)

# Names Triton writes once per response of a decoupled (streaming) request.
REPEATED: tuple[str, ...] = (
    "GRPC_SEND_START", "GRPC_SEND_END", "HTTP_SEND_START", "HTTP_SEND_END", "INFER_RESPONSE_COMPLETE",
)
SEND_PAIRS: tuple[tuple[str, str], ...] = (("HTTP_SEND_START", "HTTP_SEND_END"), ("GRPC_SEND_START", "GRPC_SEND_END"))

# Every timestamp name Triton 2.x writes at level TIMESTAMPS.
KNOWN_TIMESTAMPS: frozenset[str] = frozenset(
    {n for _, a, b in SPANS for n in (a, b)} | {"INFER_RESPONSE_COMPLETE", "CUSTOM_ACTIVITY"}
)
# A backend's own activity (TRITONSERVER_InferenceTraceReportActivity): X_START/X_END pairs.
CUSTOM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}_(START|END)")
MAX_CUSTOM_NAMES = 32  # distinct custom activity names per scan; more are rejected
CUSTOM_PREFIX = "custom_"


def custom_stage(name: str) -> tuple[str, bool]:
    """('custom_<x>', is_start) of a custom activity timestamp name X_START / X_END."""
    base, _, edge = name.rpartition("_")
    return CUSTOM_PREFIX + base.lower(), edge == "START"


class Protocol(enum.IntEnum):
    """The frontend a top-level trace came through; children take their parent's."""

    NONE = 0
    HTTP = 1
    GRPC = 2

    @property
    def label(self) -> str:
        return self.name.lower()


PROTOCOLS: tuple[str, ...] = tuple(p.label for p in Protocol)  # label text by code


class Outcome(enum.IntEnum):
    """What became of a traced request (docs/traces.md, "Outcomes"); the first rule that holds."""

    ANSWERED = 0
    CANCELLED = 1  # a top-level request that sent nothing (HTTP: nor completed a response)
    CACHE_HIT = 2  # QUEUE_START and no COMPUTE_*: answered from the response cache
    FAILED = 3  # where the source says so (OTLP: the span status)

    @property
    def label(self) -> str:
        return self.name.lower()


OUTCOMES: tuple[str, ...] = tuple(o.label for o in Outcome)  # label text by code


def frontend_protocol(timestamps: Mapping[str, int]) -> Protocol:
    """The frontend of a top-level trace, from its timestamp names."""
    if any(n.startswith("HTTP_") for n in timestamps):
        return Protocol.HTTP
    if any(n.startswith("GRPC_") for n in timestamps):
        return Protocol.GRPC
    return Protocol.NONE


# --- the columns of a stamps matrix -------------------------------------------------------

FIRST_SUFFIX, COUNT_SUFFIX = "#first", "#count"
NAMES: tuple[str, ...] = tuple(sorted(KNOWN_TIMESTAMPS))  # the columns a file's names map to
# Then, per repeated name, its first occurrence and its count ('#' never occurs in a name read
# from a file: only NAMES are matched against files).
COLUMNS: tuple[str, ...] = (
    *NAMES, *(n + FIRST_SUFFIX for n in REPEATED), *(n + COUNT_SUFFIX for n in REPEATED),
)
COLUMN: dict[str, int] = {n: i for i, n in enumerate(COLUMNS)}
NCOLS = len(COLUMNS)  # extra codes >= NCOLS name custom activities
FIRST_COL: tuple[int, ...] = tuple(COLUMN.get(n + FIRST_SUFFIX, -1) for n in NAMES)
COUNT_COL: tuple[int, ...] = tuple(COLUMN.get(n + COUNT_SUFFIX, -1) for n in NAMES)


def merge_stamp(stamps: dict[str, int], extra: list[tuple[str, int]], name: str, ns: int) -> None:
    """One timestamp into a trace's dict of columns (the rule the C scanner follows too).

    Names that repeat keep the first (earliest), the last (latest) and the count; once a
    third occurs, every occurrence is also listed in `extra`.
    """
    if name not in REPEATED:
        stamps[name] = ns  # the last in file order wins
        return
    count = stamps.get(name + COUNT_SUFFIX, 0)
    if count == 0:
        stamps[name] = stamps[name + FIRST_SUFFIX] = ns
    else:
        first, last = stamps[name + FIRST_SUFFIX], stamps[name]
        if count == 2:
            extra.extend(((name, first), (name, last)))
        if count >= 2:
            extra.append((name, ns))
        stamps[name + FIRST_SUFFIX], stamps[name] = min(first, ns), max(last, ns)
    stamps[name + COUNT_SUFFIX] = count + 1


_HTTP_COLS = [COLUMN[n] for n in NAMES if n.startswith("HTTP_")]
_GRPC_COLS = [COLUMN[n] for n in NAMES if n.startswith("GRPC_")]


def protocol_codes(stamps: npt.NDArray[np.int64]) -> npt.NDArray[np.int8]:
    """frontend_protocol() of each row of a stamps matrix, as Protocol codes."""
    http = (stamps[:, _HTTP_COLS] >= 0).any(axis=1)
    grpc = (stamps[:, _GRPC_COLS] >= 0).any(axis=1)
    return np.where(http, Protocol.HTTP, np.where(grpc, Protocol.GRPC, Protocol.NONE)).astype(np.int8)


def countable_rows(stamps: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    return (stamps[:, COLUMN["REQUEST_START"]] >= 0) & (stamps[:, COLUMN["REQUEST_END"]] >= 0)


# --- the exclusive timeline ----------------------------------------------------------------

# Segments by priority: an instant of [arrival, end] belongs to the first whose interval holds it.
# (segment, start name, end name); the intervals named "" are built per trace: "send" is every
# response's send, "between_responses" the first response out to the last (after the release),
# "frontend_overhead" the rest. "cache_hit" exists only for a cache hit (no COMPUTE_* stamps).
SEGMENT_SPANS: tuple[tuple[str, str, str], ...] = (
    ("compute_input", "COMPUTE_START", "COMPUTE_INPUT_END"),
    ("compute_infer", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
    ("compute_output", "COMPUTE_OUTPUT_START", "COMPUTE_END"),
    ("queue", "QUEUE_START", "COMPUTE_START"),
    ("send", "", ""),
    ("cache_hit", "QUEUE_START", "REQUEST_END"),
    ("between_responses", "", ""),
    ("model_after_release", "REQUEST_END", "INFER_RESPONSE_COMPLETE" + FIRST_SUFFIX),
    ("handler_overhead", "REQUEST_START", "REQUEST_END"),
    ("recv", "HTTP_RECV_START", "HTTP_RECV_END"),
)
SEGMENTS: tuple[str, ...] = (*(s for s, _, _ in SEGMENT_SPANS), "frontend_overhead")
SEGMENT: dict[str, int] = {s: i for i, s in enumerate(SEGMENTS)}
# The order a request passes through them, for display.
SEGMENT_ORDER: tuple[str, ...] = (
    "recv", "queue", "cache_hit", "compute_input", "compute_infer", "compute_output", "handler_overhead",
    "model_after_release", "between_responses", "send", "frontend_overhead",
)
# --- the request model over a batch --------------------------------------------------------

MAX_SPAN_NS = 7 * 24 * 3600 * 10**9  # longer spans are not plausible: counted, not observed


@dataclass
class Anatomy:
    """The stage table over a batch's rows."""

    durations: npt.NDArray[np.int64]  # [rows, STAGES], -1 where absent or not observed
    negative: npt.NDArray[np.int64]  # per row: spans whose end is before their start
    implausible: npt.NDArray[np.int64]  # per row: spans longer than MAX_SPAN_NS
    segments: npt.NDArray[np.int64]  # [rows, SEGMENTS], >= 0, a row sums to its end_to_end
    timed: npt.NDArray[np.bool_]  # rows with an end_to_end (and so a timeline)
    responses: npt.NDArray[np.int64]  # responses out per row
    gap_rows: npt.NDArray[np.intp]  # inter_response: the row of each gap
    gaps: npt.NDArray[np.int64]  # and its length
    outcome: npt.NDArray[np.int8]  # Outcome per row; cancelled rows have no response stages


def _col(by_column: npt.NDArray[np.int64], name: str) -> npt.NDArray[np.int64]:
    column: npt.NDArray[np.int64] = by_column[COLUMN[name]]
    return column


def _first_present(*cols: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    out = cols[-1]
    for c in reversed(cols[:-1]):
        out = np.where(c >= 0, c, out)
    return out


Extra = Mapping[str, list[int]]  # one trace's every occurrence of its repeated names


def occurrences(row: npt.NDArray[np.int64], extra: Extra, name: str) -> list[int]:
    """Every time of a repeated name in one trace, in time order."""
    count = int(row[COLUMN[name + COUNT_SUFFIX]])
    if count >= 3:
        return sorted(extra.get(name, ()))
    if count == 2:
        return [int(row[COLUMN[name + FIRST_SUFFIX]]), int(row[COLUMN[name]])]
    return [int(row[COLUMN[name]])] if count == 1 else []


def response_times(row: npt.NDArray[np.int64], extra: Extra) -> list[int]:
    """When responses went out: the sends' ends, else the responses' completions, else the
    request's release."""
    sends = sorted(occurrences(row, extra, "HTTP_SEND_END") + occurrences(row, extra, "GRPC_SEND_END"))
    return sends or occurrences(row, extra, "INFER_RESPONSE_COMPLETE") or [int(row[COLUMN["REQUEST_END"]])]


def trace_segments(row: npt.NDArray[np.int64], extra: Extra, lo: int, hi: int) -> list[int]:
    """The timeline of one trace, every response's send an interval of its own."""
    intervals: list[tuple[int, int, int]] = []
    released = int(row[COLUMN["REQUEST_END"]])
    for j, (seg, a, b) in enumerate(SEGMENT_SPANS):
        if seg == "send":
            for start, end in SEND_PAIRS:
                pairs = zip(occurrences(row, extra, start), occurrences(row, extra, end), strict=False)
                intervals.extend((j, x, y) for x, y in pairs)
        elif seg == "between_responses":
            intervals.append((j, max(released, response_times(row, extra)[0]), hi))
        elif row[COLUMN[a]] >= 0 and row[COLUMN[b]] >= 0 and (seg != "cache_hit" or not _computed(row)):
            intervals.append((j, int(row[COLUMN[a]]), int(row[COLUMN[b]])))
    return exclusive_reference(intervals, lo, hi, len(SEGMENTS))


_COMPUTE_COLS = [COLUMN[n] for n in NAMES if n.startswith("COMPUTE_")]


def _computed(row: npt.NDArray[np.int64]) -> bool:
    return bool((row[_COMPUTE_COLS] >= 0).any())


def outcome_codes(by_column: npt.NDArray[np.int64], failed: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.int8]:
    """The Outcome of each trace; by_column is a stamps matrix transposed (one column a row)."""
    http = (by_column[_HTTP_COLS] >= 0).any(axis=0)
    frontend = http | (by_column[_GRPC_COLS] >= 0).any(axis=0)
    sent = (by_column[[COLUMN[n] for pair in SEND_PAIRS for n in pair]] >= 0).any(axis=0)
    # gRPC writes every response it delivers (an INFER_RESPONSE_COMPLETE alone: completed after the
    # client closed its stream); HTTP does not capture the sends of generate, so a completion counts
    answered = sent | (http & (by_column[COLUMN["INFER_RESPONSE_COMPLETE"]] >= 0))
    computed = (by_column[_COMPUTE_COLS] >= 0).any(axis=0)
    hit = (by_column[COLUMN["QUEUE_START"]] >= 0) & ~computed
    out = np.where(frontend & ~answered, Outcome.CANCELLED, np.where(hit, Outcome.CACHE_HIT, Outcome.ANSWERED))
    if failed is not None:
        out = np.where(failed, Outcome.FAILED, out)
    return out.astype(np.int8)


_COUNT_COLS = [COLUMN[n + COUNT_SUFFIX] for n in REPEATED]
_SPAN_STARTS = [COLUMN[a] for _, a, _ in SPANS]
_SPAN_ENDS = [COLUMN[b] for _, _, b in SPANS]
_SPAN_ROWS = [STAGES.index(stage) for stage, _, _ in SPANS]


def anatomy(stamps: npt.NDArray[np.int64], extra_of: Callable[[int], Extra],
            failed: npt.NDArray[np.bool_] | None = None, model: npt.NDArray[np.int64] | None = None,
            model_gaps: npt.NDArray[np.int64] | None = None) -> Anatomy:
    """The stage table over every row of a stamps matrix; extra_of(row) gives the every
    occurrence of the names a row repeats more than twice; `failed` the rows the source says
    failed; `model` the rows' request model where the C scanner computed it (scan_model()), so
    only streaming rows are redone here (none where it had every occurrence: `model_gaps` then
    holds their (row, gap) pairs). Cancelled requests have no response stages and no timeline."""
    if model is not None:
        return _scanned_anatomy(stamps, extra_of, failed, model, model_gaps)
    n = stamps.shape[0]
    by_column = np.ascontiguousarray(stamps.T)  # one column a contiguous row: the math below is per column
    out = np.full((len(STAGES), n), -1, dtype=np.int64)  # transposed back at the end
    negative = np.zeros(n, dtype=np.int64)
    implausible = np.zeros(n, dtype=np.int64)
    col = {s: i for i, s in enumerate(STAGES)}

    def observe(stage: str, start: npt.NDArray[np.int64], end: npt.NDArray[np.int64]) -> None:
        d = end - start
        present = (start >= 0) & (end >= 0)
        bad = present & ((d < 0) | (d > MAX_SPAN_NS))
        if bad.any():
            negative[:] += bad & (d < 0)
            implausible[:] += bad & (d >= 0)
            present &= ~bad
        out[col[stage]] = np.where(present, d, -1)

    stamps_in, stamps = stamps, by_column
    sa, sb = stamps[_SPAN_STARTS], stamps[_SPAN_ENDS]  # every span at once, a few array operations
    d = sb - sa
    present = (sa >= 0) & (sb >= 0)
    bad = present & ((d < 0) | (d > MAX_SPAN_NS))
    if bad.any():
        negative += (bad & (d < 0)).sum(axis=0)
        implausible += (bad & (d >= 0)).sum(axis=0)
        present &= ~bad
    out[_SPAN_ROWS] = np.where(present, d, -1)

    # arrival at the frontend, responses out, and the end of the request
    outcome = outcome_codes(stamps, failed)
    arrival = _first_present(_col(stamps, "HTTP_RECV_START"), _col(stamps, "GRPC_WAITREAD_END"),
                             _col(stamps, "REQUEST_START"))
    arrival = np.where(outcome == Outcome.CANCELLED, -1, arrival)
    send_end = np.maximum(_col(stamps, "HTTP_SEND_END"), _col(stamps, "GRPC_SEND_END"))
    done = _col(stamps, "INFER_RESPONSE_COMPLETE")
    released = _col(stamps, "REQUEST_END")
    end = np.maximum(send_end, done)
    end = np.where(end >= 0, end, released)
    first_send = _first_present(_col(stamps, "HTTP_SEND_END" + FIRST_SUFFIX), _col(stamps, "GRPC_SEND_END" + FIRST_SUFFIX))
    first = np.where(send_end >= 0, first_send,
                     np.where(done >= 0, _col(stamps, "INFER_RESPONSE_COMPLETE" + FIRST_SUFFIX), released))
    observe("end_to_end", arrival, end)
    observe("first_response", np.where(first >= 0, arrival, -1), first)
    timed = out[col["end_to_end"]] >= 0

    # the exclusive timeline: one pass over every row, then the streaming (or odd) rows one by one
    k = len(SEGMENT_SPANS)
    starts = np.full((k, n), -1, dtype=np.int64)
    ends = np.full((k, n), -1, dtype=np.int64)
    for j, (seg, a, b) in enumerate(SEGMENT_SPANS):
        if seg == "send":
            http = (_col(stamps, "HTTP_SEND_START") >= 0) & (_col(stamps, "HTTP_SEND_END") >= 0)
            sa = np.where(http, _col(stamps, "HTTP_SEND_START"), _col(stamps, "GRPC_SEND_START"))
            sb = np.where(http, _col(stamps, "HTTP_SEND_END"), _col(stamps, "GRPC_SEND_END"))
        elif seg == "between_responses":
            sa, sb = np.where(first >= 0, np.maximum(first, released), -1), end
        else:
            sa, sb = _col(stamps, a), _col(stamps, b)
        both = (sa >= 0) & (sb >= 0)
        if seg == "cache_hit":
            both &= (stamps[_COMPUTE_COLS] < 0).all(axis=0)
        starts[j] = np.where(both, sa, -1)
        ends[j] = np.where(both, sb, -1)
    segments = exclusive(starts, ends, np.where(timed, arrival, 0), np.where(timed, end, 0))

    sends = (np.maximum(_col(stamps, "HTTP_SEND_END" + COUNT_SUFFIX), 0)
             + np.maximum(_col(stamps, "GRPC_SEND_END" + COUNT_SUFFIX), 0))
    responses = np.where(sends > 0, sends, np.maximum(_col(stamps, "INFER_RESPONSE_COMPLETE" + COUNT_SUFFIX), 1))
    gap_rows: list[int] = []
    gaps: list[int] = []
    both_frontends = (_col(stamps, "HTTP_SEND_END") >= 0) & (_col(stamps, "GRPC_SEND_END") >= 0)
    streaming = timed & ((stamps[_COUNT_COLS] >= 2).any(axis=0) | both_frontends)
    for i in np.flatnonzero(streaming).tolist():
        row, ex = stamps_in[i], extra_of(i)
        segments[i] = trace_segments(row, ex, int(arrival[i]), int(end[i]))
        times = response_times(row, ex)
        gap_rows.extend([i] * (len(times) - 1))
        gaps.extend(b - a for a, b in itertools.pairwise(times))
    # the handler's and the frontend's own time are their segments (never negative)
    out[col["handler_overhead"]] = np.where(timed, segments[:, SEGMENT["handler_overhead"]], -1)
    own_frontend = (stamps[_HTTP_COLS + _GRPC_COLS] >= 0).any(axis=0)
    out[col["frontend_overhead"]] = np.where(timed & own_frontend, segments[:, SEGMENT["frontend_overhead"]], -1)
    return Anatomy(out.T, negative, implausible, segments, timed, responses,
                   np.asarray(gap_rows, dtype=np.intp), np.asarray(gaps, dtype=np.int64), outcome)


def custom_spans(stamps: Mapping[str, list[int]]) -> dict[str, int]:
    """Custom activity stages of one trace: X_START -> X_END, the last of each (as Triton's
    spans); pairs that run backwards are left out."""
    edges: dict[str, list[int]] = {}
    for name, times in stamps.items():
        stage, is_start = custom_stage(name)
        edges.setdefault(stage, [-1, -1])[0 if is_start else 1] = max(times)
    return {s: b - a for s, (a, b) in edges.items() if a >= 0 and b >= a}


# --- the request model computed by the C scanner ----------------------------------------------

_SEG_KIND = {"send": 1, "between_responses": 2, "cache_hit": 3}  # else a span between two columns
# a scanner model row: the SPANS' durations, then these, then the segments
M_E2E, M_FIRST, M_OUTCOME, M_NEGATIVE, M_IMPLAUSIBLE, M_FLAGS, M_ARRIVAL, M_END = range(len(SPANS), len(SPANS) + 8)
M_SEGMENTS = len(SPANS) + 8
F_TIMED, F_FRONTEND, F_STREAMING, F_EXACT = 1, 2, 4, 8  # F_EXACT: a streaming row model_rows finished


def scan_model() -> tuple[int, ...]:
    """The columns the C scanner's request model reads, in its set_model() layout; its derive()
    follows anatomy()'s rules, which stay the reference (tests hold the two equal)."""
    c = COLUMN
    out = [len(SPANS), *(c[n] for _, a, b in SPANS for n in (a, b))]
    out += [c[n] for n in ("HTTP_RECV_START", "GRPC_WAITREAD_END", "REQUEST_START", "HTTP_SEND_START",
                           "HTTP_SEND_END", "GRPC_SEND_START", "GRPC_SEND_END", "HTTP_SEND_END" + FIRST_SUFFIX,
                           "GRPC_SEND_END" + FIRST_SUFFIX, "INFER_RESPONSE_COMPLETE",
                           "INFER_RESPONSE_COMPLETE" + FIRST_SUFFIX, "REQUEST_END", "QUEUE_START")]
    for cols in (_COMPUTE_COLS, _HTTP_COLS, _GRPC_COLS, _COUNT_COLS):
        out += [len(cols), *cols]
    out.append(len(SEGMENT_SPANS))
    for seg, a, b in SEGMENT_SPANS:
        out += [_SEG_KIND.get(seg, 0), c[a] if a else 0, c[b] if b else 0]
    return (*out, MAX_SPAN_NS)


def _scanned_anatomy(stamps: npt.NDArray[np.int64], extra_of: Callable[[int], Extra],
                     failed: npt.NDArray[np.bool_] | None, model: npt.NDArray[np.int64],
                     model_gaps: npt.NDArray[np.int64] | None) -> Anatomy:
    n = stamps.shape[0]
    by_stage = np.empty((len(STAGES), n), dtype=np.int64)  # a stage's rows contiguous, as anatomy() gives
    by_stage[:len(SPANS)] = model[:, :len(SPANS)].T
    by_stage[STAGES.index("end_to_end")] = model[:, M_E2E]
    by_stage[STAGES.index("first_response")] = model[:, M_FIRST]
    durations = by_stage.T
    flags = model[:, M_FLAGS]
    timed = (flags & F_TIMED) != 0
    exact = F_EXACT if model_gaps is not None else 0  # model_rows finishes them all or none; no gaps: redone
    streaming = np.flatnonzero((flags & (F_STREAMING | exact)) == F_STREAMING)
    segments = model[:, M_SEGMENTS:]
    outcome = model[:, M_OUTCOME].astype(np.int8)
    if failed is not None:
        outcome[failed] = Outcome.FAILED
    sends = (np.maximum(stamps[:, COLUMN["HTTP_SEND_END" + COUNT_SUFFIX]], 0)
             + np.maximum(stamps[:, COLUMN["GRPC_SEND_END" + COUNT_SUFFIX]], 0))
    responses = np.where(sends > 0, sends, np.maximum(stamps[:, COLUMN["INFER_RESPONSE_COMPLETE" + COUNT_SUFFIX]], 1))
    gap_rows, gaps = ([], []) if model_gaps is None else (model_gaps[:, 0].tolist(), model_gaps[:, 1].tolist())
    if len(streaming):
        segments = segments.copy()  # the scanner's rows are read-only; streaming rows are redone
        for i in streaming.tolist():
            row, ex = stamps[i], extra_of(i)
            segments[i] = trace_segments(row, ex, int(model[i, M_ARRIVAL]), int(model[i, M_END]))
            times = response_times(row, ex)
            gap_rows.extend([i] * (len(times) - 1))
            gaps.extend(b - a for a, b in itertools.pairwise(times))
    durations[:, STAGES.index("handler_overhead")] = np.where(timed, segments[:, SEGMENT["handler_overhead"]], -1)
    durations[:, STAGES.index("frontend_overhead")] = np.where(
        timed & ((flags & F_FRONTEND) != 0), segments[:, SEGMENT["frontend_overhead"]], -1)
    return Anatomy(durations, model[:, M_NEGATIVE], model[:, M_IMPLAUSIBLE], segments, timed, responses,
                   np.asarray(gap_rows, dtype=np.intp), np.asarray(gaps, dtype=np.int64), outcome)
