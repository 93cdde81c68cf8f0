"""Bucket schemes and the one conversion from bucket counts to Prometheus buckets.

Shared by the trace histograms (fixed ladder, observed in Python) and the eBPF
histograms (log-linear, counted in the kernel). Buckets are "le": a value equal to
a bound lands in that bound's bucket (ceil, never floor).
"""

from __future__ import annotations

import functools
import math
import operator
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import utils as client_python_utils
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.samples import Exemplar, Sample

from .traces import compiled

# 4 sub-buckets per power of two: bounds are m * 2**e with m in 5..8 (plus 0..4).
LOG_LINEAR_SUB = 4


def ladder(lo: float, hi: float, steps: Sequence[float] = (1.0, 2.5, 5.0)) -> tuple[float, ...]:
    """A 1-2.5-5 ladder from lo to hi (hi always included as the last bound)."""
    out: list[float] = []
    decade = 1e-9
    while decade <= hi * 10:
        for s in steps:
            v = float(f"{s * decade:.6g}")
            if lo - 1e-15 <= v < hi - 1e-15:
                out.append(v)
        decade *= 10
    out.append(hi)
    return tuple(sorted(set(out)))


DEFAULT_STAGE_BUCKETS: tuple[float, ...] = ladder(50e-6, 60.0)


def log_linear_index(v: int) -> int:
    """Index of the smallest log-linear bound >= v (mirrors bpf/histogram.h)."""
    if v <= LOG_LINEAR_SUB:
        return max(v, 0)
    x = v - 1
    e = x.bit_length() - 3  # x >= 4, so e >= 0 and 4 <= x >> e <= 7
    m = x >> e
    return 5 + 4 * e + (m - 4)


def log_linear_bound(i: int) -> int:
    """Upper bound (inclusive) of log-linear bucket i."""
    if i <= LOG_LINEAR_SUB:
        return i
    e, k = divmod(i - 5, 4)
    return (5 + k) << e


# client_python's own 'le' formatter (untyped there): Go's float text, 1.073741824e+09 and +Inf
_go_float: Callable[[float], str] = client_python_utils.floatToGoString


def format_le(bound: float) -> str:
    """Prometheus 'le' label text, exactly as client_python writes it."""
    return _go_float(bound)


def cumulative(counts: Iterable[int]) -> list[int]:
    total = 0
    out: list[int] = []
    for c in counts:
        total += c
        out.append(total)
    return out


def indexed_counts(by_index: Mapping[int, int], n_bounds: int) -> list[int]:
    """Dense counts (len n_bounds + 1, the last for values above every bound) from a sparse map."""
    dense = [0] * (n_bounds + 1)
    for i, c in by_index.items():
        dense[min(max(i, 0), n_bounds)] += c
    return dense


@functools.lru_cache(maxsize=64)
def log_linear_les(first: int, last: int, divisor: float = 1.0) -> tuple[str, ...]:
    """The 'le' texts of log-linear bounds first..last divided by divisor, then +Inf."""
    return (*(format_le(log_linear_bound(i) / divisor) for i in range(first, last + 1)), "+Inf")


def log_linear_cumulative(by_index: Mapping[int, int], first: int, last: int) -> list[float]:
    """Cumulative counts for log_linear_les(first, last): indexes below first fold into first's
    bucket, above last into +Inf, so every le stays exact."""
    dense = indexed_counts({i - first: c for i, c in by_index.items()}, last - first + 1)
    return [float(c) for c in cumulative(dense)]


@functools.lru_cache(maxsize=64)
def log_linear_subset(first: int, last: int, n: int) -> tuple[int, ...]:
    """At most n log-linear indexes from first to last (both kept), evenly spaced: the kernel's
    buckets are evenly spaced in log, so these are too (0 or more than there are: every one)."""
    if n <= 0 or last - first + 1 <= n:
        return tuple(range(first, last + 1))
    if n == 1:
        return (last,)
    return tuple(sorted({first + round(j * (last - first) / (n - 1)) for j in range(n)}))


def subset_cumulative(by_index: Mapping[int, int], chosen: Sequence[int]) -> list[float]:
    """Cumulative counts at each chosen index (every index at or below it), then the total."""
    out: list[float] = []
    items = sorted(by_index.items())
    total = 0
    j = 0
    for bound in chosen:
        while j < len(items) and items[j][0] <= bound:
            total += items[j][1]
            j += 1
        out.append(float(total))
    out.append(float(total + sum(c for _, c in items[j:])))
    return out


# a log-linear bucket's bound lies within a native bucket when kernel buckets are at least as wide
KERNEL_SCHEMA = 2  # 4 log-linear buckets per power of two are no finer than schema 2's 19 %


@functools.lru_cache(maxsize=4096)
def log_linear_native(i: int, divisor: float, schema: int) -> int:
    """The native bucket (at `schema`) holding log-linear bucket i's upper bound in the exposed unit:
    the kernel's counts go there, each value in a bucket no lower than its own."""
    return int(native_index([log_linear_bound(i) / divisor], schema)[0])


def log_linear_to_native(by_index: Mapping[int, int], divisor: float, schema: int) -> NativeBuckets:
    """Native buckets from the kernel's log-linear counts (index 0 counts zeros: the zero bucket)."""
    schema = min(schema, KERNEL_SCHEMA)
    out: dict[int, int] = {}
    zero = 0
    for i, c in by_index.items():
        if i <= 0:
            zero += c
        else:
            k = log_linear_native(i, divisor, schema)
            out[k] = out.get(k, 0) + c
    return NativeBuckets(schema, zero, out)


def add_histogram(family: HistogramMetricFamily, labels: dict[str, str], les: Sequence[str],
                  cumulative_counts: Sequence[float], total: float,
                  exemplars: Mapping[int, Exemplar] | None = None) -> None:
    """The samples HistogramMetricFamily.add_metric(labels, buckets, total) adds, equal and in
    the same order, built without its per-bucket list and dict concatenations: this is the
    hot loop of a scrape. Counts are floats, as add_metric is given them. Callers zip label
    names and values as add_metric does (strict=False): a key of another length, from a state
    saved under other pattern labels, must not fail the scrape."""
    bucket = family.name + "_bucket"
    append = family.samples.append
    for i, (le, c) in enumerate(zip(les, cumulative_counts, strict=True)):
        d = labels.copy()
        d["le"] = le
        append(Sample(bucket, d, c, None, exemplars.get(i) if exemplars else None))
    append(Sample(family.name + "_count", dict(labels), cumulative_counts[-1], None, None))
    append(Sample(family.name + "_sum", dict(labels), total, None, None))


# --- native (exponential) histograms: Prometheus' sparse buckets, rendered in the protobuf format ---
#
# At schema s the positive buckets have bounds base**k, base = 2**(2**-s): bucket k holds
# (base**(k-1), base**k], so schema 0 doubles per bucket and each step of s halves the width.
# Zeros go to the zero bucket. The trace state keeps every series at STORE_SCHEMA (the finest
# exposed) and the scrape coarsens it to the configured schema: merging buckets is exact.
STORE_SCHEMA = 4  # bucket width 2**(1/16) - 1 = 4.4 %: the default, and the finest --native-schema
MIN_SCHEMA = -4  # Prometheus accepts -4 .. 8
ZERO_THRESHOLD = 2.0**-128  # as client_golang: only zeros fall in the zero bucket


def native_width(schema: int) -> float:
    """A native bucket's width relative to its lower bound: the most an estimate within the bucket
    can be off (a quantile and its estimate always share a bucket)."""
    return float(2.0 ** (2.0**-schema) - 1.0)


@functools.lru_cache(maxsize=16)
def _fraction_bounds(schema: int) -> npt.NDArray[np.float64]:
    """The bounds within one power of two, as frexp fractions in [0.5, 1): 2**(j / 2**schema - 1)."""
    n = 1 << schema
    return np.asarray([2.0 ** (j / n - 1.0) for j in range(n)], dtype=np.float64)


# STORE_SCHEMA's bounds within a power of two (frexp fractions) and buckets per power of two: the
# native index of a value one at a time (Histogram.fill) or a batch at a time (traces.binning)
STORE_FRACTIONS: tuple[float, ...] = tuple(_fraction_bounds(STORE_SCHEMA).tolist())
STORE_PER_EXP = 1 << STORE_SCHEMA
# the same loop in C, where the trace scanner is built (a commit fills every series a POST touched)
_fill_c = getattr(compiled.SCAN, "fill", None)


def native_index(values: npt.ArrayLike, schema: int) -> npt.NDArray[np.int64]:
    """Native bucket index of each positive value: the k with base**(k-1) < v <= base**k, against
    the float64 bounds (a value equal to a bound lands in that bound's bucket)."""
    frac, exp = np.frexp(np.asarray(values, dtype=np.float64))  # v = frac * 2**exp, 0.5 <= frac < 1
    exp = exp.astype(np.int64)
    if schema > 0:
        key = np.searchsorted(_fraction_bounds(schema), frac, side="left").astype(np.int64)
        out: npt.NDArray[np.int64] = key + (exp - 1) * (1 << schema)
        return out
    key = exp - (frac == 0.5)  # a power of two is the upper bound of its bucket
    coarse: npt.NDArray[np.int64] = (key + (1 << -schema) - 1) >> -schema
    return coarse


def coarser(buckets: Mapping[int, int], by: int) -> dict[int, int]:
    """Buckets of a schema `by` steps coarser: each new bucket is 2**by old ones, exactly."""
    if by <= 0:
        return dict(buckets)
    out: dict[int, int] = {}
    add = (1 << by) - 1
    for k, c in buckets.items():
        j = (k + add) >> by  # ceil(k / 2**by): the upper bounds coincide
        out[j] = out.get(j, 0) + c
    return out


@dataclass(frozen=True)
class NativeBuckets:
    """One native histogram's buckets: sparse index -> count at `schema`, and the zero bucket."""

    schema: int
    zero: int
    positive: Mapping[int, int]

    def at(self, schema: int) -> NativeBuckets:
        """These buckets at a coarser (or the same) schema."""
        if schema >= self.schema:
            return self
        return NativeBuckets(schema, self.zero, coarser(self.positive, self.schema - schema))


def spans_and_deltas(buckets: Mapping[int, int]) -> tuple[list[tuple[int, int]], list[int]]:
    """The protobuf encoding of sparse buckets: (offset, length) spans over runs of indexes (a gap
    of one or two empty buckets is filled, as client_golang does: cheaper than a new span) and each
    bucket's count as the delta from the previous one. A plain loop: a series has tens of buckets,
    too few for numpy's per-call cost."""
    keys = sorted([k for k, c in buckets.items() if c])
    spans: list[tuple[int, int]] = []
    deltas: list[int] = []
    if not keys:
        return spans, deltas
    offset = start = prev = keys[0]
    prev_count = 0
    for k in keys:
        gap = k - prev - 1
        if gap > 2:
            spans.append((offset, prev - start + 1))
            offset, start = gap, k
        elif gap > 0:
            deltas.append(-prev_count)
            deltas.extend([0] * (gap - 1))
            prev_count = 0
        c = buckets[k]
        deltas.append(c - prev_count)
        prev_count, prev = c, k
    spans.append((offset, prev - start + 1))
    return spans, deltas


@dataclass(frozen=True)
class HistogramSeries:
    """One series of a NativeHistogramFamily as the protobuf format needs it: no sample parsing."""

    labels: Mapping[str, str]
    bounds: tuple[float, ...]  # the classic upper bounds, +Inf left out
    cumulative: Sequence[float]  # per finite bound, then the total
    total: float
    exemplars: Mapping[int, Exemplar] | None
    native: NativeBuckets | None


class NativeHistogramFamily(HistogramMetricFamily):
    """A histogram family whose series also carry native buckets. The text formats render the
    classic samples only; the protobuf format renders `series` (with the native buckets at
    `schema`) instead of re-reading the samples."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], schema: int) -> None:
        super().__init__(name, documentation, labels=labels)
        self.native_schema = schema
        self.series: list[HistogramSeries] = []

    def add(self, labels: dict[str, str], les: Sequence[str], cumulative_counts: Sequence[float], total: float,
            exemplars: Mapping[int, Exemplar] | None = None, native: NativeBuckets | None = None) -> None:
        """add_histogram's samples, and the series kept for the protobuf format."""
        add_histogram(self, labels, les, cumulative_counts, total, exemplars)
        self.series.append(HistogramSeries(labels, _float_bounds(tuple(les)), cumulative_counts, total, exemplars,
                                           native))


@functools.lru_cache(maxsize=256)
def _float_bounds(les: tuple[str, ...]) -> tuple[float, ...]:
    return tuple(float(le) for le in les[:-1])


@dataclass(slots=True)  # dozens made per commit
class Histogram:
    """One series' bucket counts over integer observations (ns, bytes), with exact sum; filled by
    vectorised bucketing (traces.aggregate), merged and copied here. `native` holds the same
    observations in native buckets at STORE_SCHEMA (None: not known, in state written before them)."""

    bounds: tuple[int, ...]  # inclusive upper bounds in the observed integer unit
    counts: list[int] = field(default_factory=list)
    total: int = 0  # exact sum of observations, in the integer unit
    count: int = 0
    native: dict[int, int] | None = field(default_factory=dict)
    zero: int = 0  # observations of exactly 0 (the native zero bucket)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def merge(self, other: Histogram) -> None:
        self.add(other.counts, other.total, other.count, other.native, other.zero)

    def add(self, counts: list[int], total: int, count: int, native: Mapping[int, int] | None, zero: int) -> None:
        """merge() of another histogram's parts, without building it."""
        if len(counts) == len(self.counts):  # always, but for a state file written otherwise
            self.counts[:] = map(operator.add, self.counts, counts)
        else:
            for i, c in enumerate(counts):
                self.counts[i] += c
        self.total += total
        self.count += count
        if self.native is None or native is None:
            self.native = None
        else:
            mine = self.native
            for k, c in native.items():
                mine[k] = mine.get(k, 0) + c
        self.zero += zero

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total, self.count,
                         None if self.native is None else dict(self.native), self.zero)

    def plus(self, other: Histogram) -> Histogram:
        """A new histogram, self + other (a commit's merge: neither is changed): a copy (its native
        buckets only where both know theirs) merged with other."""
        out = Histogram(self.bounds, list(self.counts), self.total, self.count,
                        None if self.native is None or other.native is None else dict(self.native), self.zero)
        out.merge(other)
        return out

    def fill(self, values: list[int], unit: float) -> None:
        """Add integer observations one by one (a few: a vectorised fill costs more per call): the
        buckets, count, exact sum and native buckets of value / unit (native_index's float math)."""
        if _fill_c is not None:  # (ValueError where counts and bounds disagree, as from a hand-edited state)
            self.zero += _fill_c(self.counts, self.native, self.bounds, STORE_FRACTIONS, STORE_PER_EXP, values, unit)
        else:
            bounds, counts, native = self.bounds, self.counts, self.native
            for v in values:
                counts[bisect_left(bounds, v)] += 1
                if v <= 0:
                    self.zero += 1
                elif native is not None:
                    frac, exp = math.frexp(v / unit)
                    k = bisect_left(STORE_FRACTIONS, frac) + (exp - 1) * STORE_PER_EXP
                    native[k] = native.get(k, 0) + 1
        self.count += len(values)
        self.total += sum(values)

    def native_buckets(self) -> NativeBuckets | None:
        return None if self.native is None else NativeBuckets(STORE_SCHEMA, self.zero, self.native)

    def native_json(self) -> list[Any] | None:
        """[schema, zero, indexes, counts] for the state file; None when not known."""
        if self.native is None:
            return None
        keys = sorted(self.native)
        return [STORE_SCHEMA, self.zero, keys, list(map(self.native.__getitem__, keys))]

    def load_native(self, v: Any) -> None:
        """The inverse of native_json; a missing or other-schema entry leaves the buckets unknown."""
        if not isinstance(v, list) or len(v) != 4 or v[0] != STORE_SCHEMA:
            self.native = None
            return
        self.zero = int(v[1])
        self.native = {int(k): int(c) for k, c in zip(v[2], v[3], strict=True)}


class QuantileSketch:
    """Constant-memory quantiles of non-negative integers with <= 0.5% relative error.

    Log buckets of ratio GAMMA (DDSketch's idea) over 1 .. 2**63; the mean stays
    exact (integer sum). Used by `summary`, whose memory must not grow with its input.
    """

    GAMMA = 1.01
    _LOG_GAMMA = math.log(GAMMA)
    SIZE = 4400  # ceil(log(2**63) / log(GAMMA)) + 1

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        import numpy as np

        self.buckets = np.zeros(self.SIZE, dtype=np.int64)  # bucket 0 holds zeros
        self.count = 0
        self.total = 0

    def add_many(self, values: Any) -> None:
        import numpy as np

        v = np.asarray(values, dtype=np.int64)
        if not len(v):
            return
        self.count += len(v)
        self.total += int(v.sum())
        idx = np.zeros(len(v), dtype=np.int64)
        pos = v > 0
        idx[pos] = np.ceil(np.log(v[pos].astype(np.float64)) / self._LOG_GAMMA).astype(np.int64) + 1
        self.buckets += np.bincount(np.minimum(idx, self.SIZE - 1), minlength=self.SIZE)

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile (the value whose rank is ceil(q * count))."""
        import numpy as np

        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        i = int(np.searchsorted(np.cumsum(self.buckets), rank))
        if i == 0:
            return 0.0
        # midpoint (in ratio) of the bucket (GAMMA**(i-2), GAMMA**(i-1)]
        return float(2 * self.GAMMA ** (i - 1) / (self.GAMMA + 1))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0
