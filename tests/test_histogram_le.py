"""`le` labels are written exactly as client_python writes them for its own histograms."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from exporter.histogram import DEFAULT_STAGE_BUCKETS, format_le, log_linear_bound


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
