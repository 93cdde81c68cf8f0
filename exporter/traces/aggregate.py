"""The trace histograms' state: per-series stage histograms and counters, mergeable and
serialisable, so a file's contribution can be built aside and committed atomically."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..histogram import Histogram
from ..stages import stage_spans
from .assembly import Finished

# series key: (*pattern labels, model, version, protocol, stage)
SeriesKey = tuple[str, ...]


@dataclass
class Exemplar:
    trace_id: str
    request_id: str | None
    value: float
    timestamp: float


@dataclass
class TraceAggregate:
    bounds_ns: tuple[int, ...]
    histograms: dict[SeriesKey, Histogram] = field(default_factory=dict)
    traces: Counter[SeriesKey] = field(default_factory=Counter)  # (*labels, model, version, protocol)
    files: Counter[str] = field(default_factory=Counter)  # parsed | failed
    rejected: Counter[str] = field(default_factory=Counter)
    models: set[str] = field(default_factory=set)
    last_ingest: float = 0.0
    # newest exemplar per series and bucket; not persisted (they describe recent traces)
    exemplars: dict[SeriesKey, dict[int, Exemplar]] = field(default_factory=dict)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n

    def observe_trace(self, f: Finished, labels: Sequence[str], max_models: int,
                      known_models: set[str]) -> None:
        t = f.trace
        model = t.model or ""
        if model not in known_models and model not in self.models:
            if len(known_models | self.models) >= max_models:
                self.rejected["model_cap"] += 1
                return
            self.models.add(model)
        version = t.version or ""
        base = (*labels, model, version, f.protocol)
        res = stage_spans(t.stamps)
        if res.negative:
            self.rejected["negative_span"] += res.negative
        self.traces[base] += 1
        now = time.time()
        for stage, ns in res.spans:
            key = (*base, stage)
            h = self.histograms.get(key)
            if h is None:
                h = self.histograms[key] = Histogram(self.bounds_ns)
            i = h.observe(ns)
            self.exemplars.setdefault(key, {})[i] = Exemplar(str(t.id), t.request_id, ns / 1e9, now)

    def merged(self, delta: TraceAggregate) -> TraceAggregate:
        """A new aggregate = self + delta (self is left untouched for concurrent scrapes)."""
        out = TraceAggregate(self.bounds_ns)
        out.histograms = {k: h.copy() for k, h in self.histograms.items()}
        for k, h in delta.histograms.items():
            if k in out.histograms:
                out.histograms[k].merge(h)
            else:
                out.histograms[k] = h.copy()
        out.traces = self.traces + delta.traces
        out.files = self.files + delta.files
        out.rejected = self.rejected + delta.rejected
        out.models = self.models | delta.models
        out.last_ingest = max(self.last_ingest, delta.last_ingest)
        out.exemplars = {k: dict(v) for k, v in self.exemplars.items()}
        for k, v in delta.exemplars.items():
            out.exemplars.setdefault(k, {}).update(v)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "bounds_ns": list(self.bounds_ns),
            "histograms": [[list(k), h.counts, h.total, h.count] for k, h in self.histograms.items()],
            "traces": [[list(k), n] for k, n in self.traces.items()],
            "files": dict(self.files),
            "rejected": dict(self.rejected),
            "models": sorted(self.models),
            "last_ingest": self.last_ingest,
        }

    @classmethod
    def from_json(cls, v: dict[str, Any], bounds_ns: tuple[int, ...]) -> TraceAggregate:
        agg = cls(bounds_ns)
        same_buckets = tuple(v.get("bounds_ns", ())) == bounds_ns
        if same_buckets:
            for k, counts, total, count in v.get("histograms", []):
                agg.histograms[tuple(k)] = Histogram(bounds_ns, [int(c) for c in counts], int(total), int(count))
        agg.traces = Counter({tuple(k): int(n) for k, n in v.get("traces", [])})
        agg.files = Counter({str(k): int(n) for k, n in v.get("files", {}).items()})
        agg.rejected = Counter({str(k): int(n) for k, n in v.get("rejected", {}).items()})
        agg.models = set(v.get("models", []))
        agg.last_ingest = float(v.get("last_ingest", 0.0))
        return agg
