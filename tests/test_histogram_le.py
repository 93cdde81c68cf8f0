"""`le` labels are written exactly as client_python writes them for its own histograms."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.samples import Exemplar

from exporter.histogram import (
    DEFAULT_STAGE_BUCKETS,
    add_histogram,
    cumulative,
    format_le,
    log_linear_bound,
)


def client_python_les(bounds: list[float]) -> list[str]:
    registry = CollectorRegistry()
    Histogram("h", "h", buckets=bounds, registry=registry)
    return re.findall(r'h_bucket\{le="([^"]+)"\}', generate_latest(registry).decode())


def test_le_text_matches_client_python() -> None:
    ebpf_bytes = [float(log_linear_bound(i)) for i in range(1, 130)]  # up to 2**31 and beyond 1e6
    bounds = sorted({*DEFAULT_STAGE_BUCKETS, *ebpf_bytes, 1073741824.0, 1e-9, 2.5e-05, 123456789.5})
    assert [format_le(b) for b in bounds] + ["+Inf"] == client_python_les(bounds)
    assert format_le(1073741824) == "1.073741824e+09"
    assert format_le(float("inf")) == "+Inf"


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30), st.integers(0, 10**12),
       st.dictionaries(st.integers(0, 29), st.floats(0, 1e3, allow_nan=False), max_size=4),
       st.sampled_from([[], ["model"], ["model", "stage"]]))
def test_add_histogram_adds_what_add_metric_adds(counts: list[int], total: int, ex: dict[int, float],
                                                 names: list[str]) -> None:
    """The scrape's fast histogram builder: the same samples as client_python's add_metric."""
    les = [format_le(float(i + 1)) for i in range(len(counts) - 1)] + ["+Inf"]
    cum = [float(c) for c in cumulative(counts)]
    exemplars = {i: Exemplar({"trace_id": str(i)}, v) for i, v in ex.items() if i < len(counts)}
    values = [f"v{i}" for i in range(len(names))]
    theirs = HistogramMetricFamily("h", "help", labels=names)
    theirs.add_metric(values, [(le, c, exemplars[i]) if i in exemplars else (le, c)
                               for i, (le, c) in enumerate(zip(les, cum, strict=True))], total / 1e9)
    ours = HistogramMetricFamily("h", "help", labels=names)
    add_histogram(ours, dict(zip(names, values, strict=True)), les, cum, total / 1e9, exemplars)
    assert ours.samples == theirs.samples
