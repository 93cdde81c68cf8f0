"""Traced requests as the join sees them, from a batch of finished traces and its anatomy."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..stages import COLUMN, FIRST_SUFFIX, PROTOCOLS, STAGES, Anatomy
from .join import Request

_E2E = STAGES.index("end_to_end")


def _first(stamps: npt.NDArray[np.int64], name: str) -> npt.NDArray[np.int64]:
    """The first occurrence of a repeated name (its only one where it occurs once)."""
    first = stamps[:, COLUMN[name + FIRST_SUFFIX]]
    return np.where(first >= 0, first, stamps[:, COLUMN[name]])


def requests_of(stamps: npt.NDArray[np.int64], codes: npt.NDArray[np.int8], an: Anatomy) -> list[Request]:
    """One Request per row of `stamps` (the rows `an` was computed over), `codes` their protocols."""
    col = {n: stamps[:, COLUMN[n]] for n in ("HTTP_RECV_START", "GRPC_WAITREAD_END", "REQUEST_START",
                                             "HTTP_RECV_END")}
    arrival = np.where(col["HTTP_RECV_START"] >= 0, col["HTTP_RECV_START"],
                       np.where(col["GRPC_WAITREAD_END"] >= 0, col["GRPC_WAITREAD_END"], col["REQUEST_START"]))
    e2e = an.durations[:, _E2E]
    end = np.where(e2e >= 0, arrival + e2e, -1)
    http_send, grpc_send = _first(stamps, "HTTP_SEND_START"), _first(stamps, "GRPC_SEND_START")
    send_start = np.where(http_send >= 0, http_send, grpc_send)
    return [Request(PROTOCOLS[c], a, e, r, s) for c, a, e, r, s in zip(
        codes.tolist(), arrival.tolist(), end.tolist(), col["HTTP_RECV_END"].tolist(), send_start.tolist(),
        strict=True)]
