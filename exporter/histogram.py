"""Bucket schemes and the one conversion from bucket counts to Prometheus buckets.

Shared by the trace histograms (fixed ladder, observed in Python) and the eBPF
histograms (log-linear, counted in the kernel). Buckets are "le": a value equal to
a bound lands in that bound's bucket (ceil, never floor).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import utils as client_python_utils
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.samples import Exemplar, Sample

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


@dataclass
class Histogram:
    """One series' bucket counts over integer observations (ns, bytes), with exact sum; filled by
    vectorised bucketing (traces.aggregate), merged and copied here."""

    bounds: tuple[int, ...]  # inclusive upper bounds in the observed integer unit
    counts: list[int] = field(default_factory=list)
    total: int = 0  # exact sum of observations, in the integer unit
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total
        self.count += other.count

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total, self.count)


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
