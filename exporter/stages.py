"""The stage table of SPEC.md: the one place that knows Triton's timestamp names.

A trace's timestamps (name -> ns) become stage spans; pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# (stage, start timestamp, end timestamp), in request order where it matters.
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

DERIVED: tuple[str, ...] = ("handler_overhead", "frontend_overhead")

STAGES: tuple[str, ...] = tuple(s for s, _, _ in SPANS) + DERIVED

# Every timestamp name Triton 2.x writes at level TIMESTAMPS; others are counted as unknown.
KNOWN_TIMESTAMPS: frozenset[str] = frozenset(
    {n for _, a, b in SPANS for n in (a, b)} | {"INFER_RESPONSE_COMPLETE", "CUSTOM_ACTIVITY"}
)

# The timestamp that marks a top-level trace's frontend.
HTTP_MARK = "HTTP_RECV_START"
GRPC_MARKS = ("GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "GRPC_SEND_START")

# Stages a request passes through, in order, for the timeline view (network first).
TIMELINE_ORDER: tuple[str, ...] = (
    "http_recv",
    "grpc_waitread",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "http_send",
    "grpc_send",
)


def frontend_protocol(timestamps: Mapping[str, int]) -> str:
    """'http', 'grpc' or 'none' (in-process C API) from a top-level trace's timestamps."""
    if HTTP_MARK in timestamps or "HTTP_SEND_END" in timestamps:
        return "http"
    if any(m in timestamps for m in GRPC_MARKS) or "GRPC_SEND_END" in timestamps:
        return "grpc"
    return "none"


def is_countable(timestamps: Mapping[str, int]) -> bool:
    """Only traces that went through the request handler count (SPEC)."""
    return "REQUEST_START" in timestamps and "REQUEST_END" in timestamps


@dataclass(frozen=True, slots=True)
class StageResult:
    spans: list[tuple[str, int]]  # (stage, duration ns), only non-negative spans
    negative: int  # spans whose end was before their start


def stage_spans(timestamps: Mapping[str, int]) -> StageResult:
    """One observation per stage present; derived overheads where all parts are present."""
    out: list[tuple[str, int]] = []
    got: dict[str, int] = {}
    negative = 0
    for stage, start, end in SPANS:
        a = timestamps.get(start)
        if a is None:
            continue
        b = timestamps.get(end)
        if b is None:
            continue
        d = b - a
        if d < 0:
            negative += 1
            continue
        got[stage] = d
        out.append((stage, d))
    req = got.get("request")
    if req is not None:
        q = got.get("queue")
        c = got.get("compute")
        if q is not None and c is not None:
            d = req - q - c
            if d < 0:
                negative += 1
            else:
                out.append(("handler_overhead", d))
        hi = got.get("http_infer")
        hr = got.get("http_recv")
        hs = got.get("http_send")
        if hi is not None and hr is not None and hs is not None:
            d = hi - req - hr - hs
            if d < 0:
                negative += 1
            else:
                out.append(("frontend_overhead", d))
    return StageResult(out, negative)
