"""What the daemon needs of a metric source, and the error counts every source reports.

Every collector also has describe(), so the registry refuses two collectors that would
serve one family (eBPF names come from editable YAML); docs/metrics.md lists them all.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__

PREFIX = "inference_profiler_"


class Source(Protocol):
    """A source of metrics: background work in start()/stop(), state read by its collector."""

    name: str

    def collectors(self) -> list[Collector]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def ready(self) -> bool: ...


class ErrorCounts:
    """Thread-safe counts behind inference_profiler_errors_total{source, reason}."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def inc(self, source: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self._counts[(source, reason)] += n

    def get(self, source: str, reason: str) -> int:
        with self._lock:
            return self._counts[(source, reason)]

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


class SelfCollector(Collector):
    """build_info and errors_total; process metrics come from prometheus_client's ProcessCollector."""

    def __init__(self, errors: ErrorCounts) -> None:
        self.errors = errors

    def describe(self) -> Iterator[Metric]:
        return self.collect()  # reads two small in-memory values

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(PREFIX + "build_info", "Build of the running exporter.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        err = CounterMetricFamily(
            PREFIX + "errors", "Errors per source and reason (the log says more).", labels=["source", "reason"]
        )
        for (src, reason), n in sorted(self.errors.snapshot().items()):
            err.add_metric([src, reason], float(n))
        yield err
