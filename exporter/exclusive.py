"""The exclusive timeline's sweep: per row, which of K prioritised intervals owns each instant
of [lo, hi]. Knows no timestamp names (exporter/stages.py gives the intervals); the C scanner's
sweep follows exclusive_reference's rule too."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .traces import compiled

__all__ = ["_exclusive_c", "_exclusive_numpy", "exclusive", "exclusive_reference"]


def exclusive_reference(intervals: list[tuple[int, int, int]], lo: int, hi: int, n_segments: int) -> list[int]:
    """Per segment, the time of [lo, hi] it owns: of (segment, start, end) intervals, the lowest
    segment index wins where they overlap; the last segment owns what none covers."""
    events: list[tuple[int, int, int]] = []  # (time, +1 open / -1 close, segment)
    for seg, a, b in intervals:
        if b > a and a < hi and b > lo:
            events.extend(((max(a, lo), 1, seg), (min(b, hi), -1, seg)))
    events.sort()
    active = [0] * n_segments
    out = [0] * n_segments
    at = lo
    for t, delta, seg in events:
        if t > at:
            owner = next((s for s in range(n_segments - 1) if active[s]), n_segments - 1)
            out[owner] += t - at
            at = t
        active[seg] += delta
    out[n_segments - 1] += hi - at
    return out


def _exclusive_numpy(starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64],
                     lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """exclusive_reference() over rows of K intervals each (interval k is segment k), vectorised;
    starts and ends are [K, rows]."""
    starts, ends = starts.T, ends.T
    n, k = starts.shape
    valid = (starts >= 0) & (ends > starts)
    pts = np.concatenate([np.clip(starts, lo[:, None], hi[:, None]), np.clip(ends, lo[:, None], hi[:, None]),
                          lo[:, None], hi[:, None]], axis=1)
    pts = np.sort(pts, axis=1)
    a, b = pts[:, :-1], pts[:, 1:]
    cover = (valid[:, None, :] & (starts[:, None, :] <= a[:, :, None]) & (b[:, :, None] <= ends[:, None, :]))
    owner = np.where(cover.any(axis=2), cover.argmax(axis=2), k)
    out = np.zeros((n, k + 1), dtype=np.int64)
    np.add.at(out, (np.repeat(np.arange(n), a.shape[1]), owner.ravel()), (b - a).ravel())
    out[hi <= lo] = 0
    return out


_exclusive_c = getattr(compiled.SCAN, "exclusive", None)  # None: no compiler where it was installed


def exclusive(starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64],
              lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """[rows, K+1] exclusive times of K prioritised intervals per row within [lo, hi]; starts and
    ends are [K, rows] (one interval's column of every row contiguous); rows with hi <= lo get 0."""
    if _exclusive_c is None or not starts.shape[1]:
        return _exclusive_numpy(starts, ends, lo, hi)
    k, n = starts.shape
    raw = _exclusive_c(np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(ends, dtype=np.int64),
                       np.ascontiguousarray(lo, dtype=np.int64), np.ascontiguousarray(hi, dtype=np.int64), k)
    return np.frombuffer(raw, dtype=np.int64).reshape(n, k + 1).copy()  # writable: streaming rows are redone
