"""The stage table of SPEC.md: the one place that knows Triton's timestamp names.

Traces' timestamps (a matrix, one column per name) become stage spans; pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

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

def frontend_protocol(timestamps: Mapping[str, int]) -> str:
    """'http', 'grpc' or 'none' (in-process C API) from a top-level trace's timestamps."""
    if any(n.startswith("HTTP_") for n in timestamps):
        return "http"
    if any(n.startswith("GRPC_") for n in timestamps):
        return "grpc"
    return "none"


# --- the same table over many traces at once (columns of a stamps matrix) ---------------

# Column order of a stamps matrix: one column per known timestamp name, -1 where absent.
COLUMNS: tuple[str, ...] = tuple(sorted(KNOWN_TIMESTAMPS))
COLUMN: dict[str, int] = {n: i for i, n in enumerate(COLUMNS)}

PROTOCOLS: tuple[str, ...] = ("none", "http", "grpc")  # codes 0, 1, 2

_HTTP_COLS = [COLUMN[n] for n in COLUMNS if n.startswith("HTTP_")]
_GRPC_COLS = [COLUMN[n] for n in COLUMNS if n.startswith("GRPC_")]


def protocol_codes(stamps: npt.NDArray[np.int64]) -> npt.NDArray[np.int8]:
    """frontend_protocol() of each row of a stamps matrix, as codes into PROTOCOLS."""
    http = (stamps[:, _HTTP_COLS] >= 0).any(axis=1)
    grpc = (stamps[:, _GRPC_COLS] >= 0).any(axis=1)
    return np.where(http, 1, np.where(grpc, 2, 0)).astype(np.int8)


def countable_rows(stamps: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    return (stamps[:, COLUMN["REQUEST_START"]] >= 0) & (stamps[:, COLUMN["REQUEST_END"]] >= 0)


def stage_matrix(stamps: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The stage table over every row: (durations [rows, STAGES], negatives per row).

    One observation per stage present; derived overheads where all their parts are. A
    duration is -1 where the stage is absent or its span negative (not observed).
    """
    n = stamps.shape[0]
    out = np.full((n, len(STAGES)), -1, dtype=np.int64)
    negative = np.zeros(n, dtype=np.int64)
    for j, (_, a, b) in enumerate(SPANS):
        sa, sb = stamps[:, COLUMN[a]], stamps[:, COLUMN[b]]
        present = (sa >= 0) & (sb >= 0)
        d = sb - sa
        neg = present & (d < 0)
        negative += neg
        out[:, j] = np.where(present & ~neg, d, -1)
    col = {s: i for i, s in enumerate(STAGES)}

    def derived(name: str, total: str, parts: tuple[str, ...]) -> None:
        cols = [out[:, col[total]]] + [out[:, col[p]] for p in parts]
        present = np.logical_and.reduce([c >= 0 for c in cols])
        d = cols[0] - sum(cols[1:])
        neg = present & (d < 0)
        negative[:] += neg
        out[:, col[name]] = np.where(present & ~neg, d, -1)

    derived("handler_overhead", "request", ("queue", "compute"))
    derived("frontend_overhead", "http_infer", ("request", "http_recv", "http_send"))
    return out, negative
