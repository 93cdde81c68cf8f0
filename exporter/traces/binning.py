"""A batch's observations binned per series in one pass: what TraceAggregate.observe_batch adds
to each series' histogram (bucket counts, exact sum, count, zeros, native buckets) and where
each bucket's newest observation lies (its exemplar).

The compiled bin_values of exporter/traces/_scan.c does it in one C pass; `bin_reference` below
is the numpy reference it must equal exactly, and serves where the scanner is not built (or is
stale). tests/test_binning.py holds the two together on random and edge-case observations."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ..histogram import STORE_FRACTIONS, STORE_PER_EXP, STORE_SCHEMA, Histogram, native_index
from . import compiled

# (series, counts per bucket, exact sum, count, zeros, native bucket -> count), by ascending series
SeriesBins = tuple[int, list[int], int, int, int, dict[int, int]]
# (each series binned, the cells series * (len(bounds) + 1) + bucket observed (ascending), the
# position of each cell's last observation)
Binned = tuple[list[SeriesBins], list[int], list[int]]

_bin_c: Any = getattr(compiled.SCAN, "bin_values", None)  # None: no compiler, or a stale build


def bin_values(series: npt.ArrayLike, values: npt.ArrayLike, n_series: int, bounds: tuple[int, ...],
               unit: float) -> Binned:
    """Observation i (an integer, 1/unit of the exposed unit) is values[i] of series series[i]
    (0 <= series < n_series). Buckets are "le" over bounds; the native buckets those of
    value / unit at STORE_SCHEMA, values <= 0 counted as zeros (as Histogram.fill)."""
    s = np.ascontiguousarray(series, dtype=np.int64)
    v = np.ascontiguousarray(values, dtype=np.int64)
    if _bin_c is not None:
        per, cells, lasts = _bin_c(s, v, n_series, bounds, STORE_FRACTIONS, STORE_PER_EXP, unit)
        return per, cells, lasts
    return bin_reference(s, v, n_series, bounds, unit)


def bin_reference(series: npt.NDArray[np.int64], values: npt.NDArray[np.int64], n_series: int,
                  bounds: tuple[int, ...], unit: float) -> Binned:
    """bin_values in numpy: the reference of the compiled one."""
    if len(series) and (int(series.min()) < 0 or int(series.max()) >= n_series):
        raise ValueError("bin_values: series")
    b = np.asarray(bounds, dtype=np.int64)
    width = len(b) + 1
    flat = series * width + np.searchsorted(b, values, side="left")
    counts = np.bincount(flat, minlength=n_series * width).reshape(n_series, width)
    per_series = np.bincount(series, minlength=n_series)
    used = np.flatnonzero(per_series)
    sums = _exact_sums(series, values, n_series)
    natives = native_counts(series, values, unit)
    per: list[SeriesBins] = []
    for sid, row, n in zip(used.tolist(), counts[used].tolist(), per_series[used].tolist(), strict=True):
        zero, native = natives.get(sid, (0, {}))
        per.append((sid, row, sums[sid], n, zero, native))
    last_of = np.full(n_series * width, -1, dtype=np.int64)
    last_of[flat] = np.arange(len(flat))
    cells = np.flatnonzero(last_of >= 0)
    return per, cells.tolist(), last_of[cells].tolist()


def _exact_sums(series: npt.NDArray[np.int64], values: npt.NDArray[np.int64], n_series: int) -> list[int]:
    """Each series' exact integer sum: float64 sums are exact while every partial sum stays
    below 2**53, int64 ones below 2**63; beyond, Python's integers."""
    if not len(values):
        return [0] * n_series
    bound = int(np.abs(values).max()) * len(values)
    if bound < 1 << 53:
        out: list[int] = np.rint(np.bincount(series, weights=values, minlength=n_series)).astype(np.int64).tolist()
        return out
    if bound < 1 << 63:
        sums = np.zeros(n_series, dtype=np.int64)
        np.add.at(sums, series, values)
        out = sums.tolist()
        return out
    out = [0] * n_series
    for s, v in zip(series.tolist(), values.tolist(), strict=True):
        out[s] += v
    return out


def native_counts(series: npt.NDArray[np.int64], values: npt.NDArray[np.int64], unit: float
                  ) -> dict[int, tuple[int, dict[int, int]]]:
    """Per series: (zeros, native bucket index at STORE_SCHEMA -> count) of integer observations
    in 1/unit of the exposed unit (ns for seconds: the buckets are those of the exact value)."""
    out: dict[int, tuple[int, dict[int, int]]] = {}
    if not len(values):
        return out
    series = np.asarray(series, dtype=np.int64)
    pos = values > 0
    for sid, n in zip(*np.unique(series[~pos], return_counts=True), strict=True):
        out[int(sid)] = (int(n), {})
    idx = native_index(values[pos] / unit, STORE_SCHEMA)
    if not len(idx):
        return out
    # one flat key per (series, bucket): a 1-D unique, far cheaper than np.unique(axis=1)
    lo = int(idx.min())
    span = int(idx.max()) - lo + 1
    keys, counts = np.unique(series[pos] * span + (idx - lo), return_counts=True)
    sids, ks = np.divmod(keys, span)
    for sid, k, n in zip(sids.tolist(), (ks + lo).tolist(), counts.tolist(), strict=True):
        out.setdefault(sid, (0, {}))[1][k] = n
    return out


Key = TypeVar("Key")


def binned_beyond(hists: dict[Key, Histogram], values: dict[Key, list[int]], most: int, bounds: tuple[int, ...],
                  unit: float) -> tuple[dict[Key, Histogram], dict[Key, list[int]]]:
    """(histograms, values) with each series of more than `most` values binned into its histogram
    (a copy; neither mapping changed), the others' values left as they are."""
    if all(len(vs) <= most for vs in values.values()):
        return hists, values
    hists, few = dict(hists), {}
    for k, vs in values.items():
        if len(vs) <= most:
            few[k] = vs
        else:
            h = hists[k] = hists[k].copy() if k in hists else Histogram(bounds)
            h.fill(vs, unit)
    return hists, few
