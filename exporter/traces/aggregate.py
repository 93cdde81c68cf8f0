"""The trace histograms' state: per-series stage histograms and counters, mergeable and
serialisable, so a file's contribution can be built aside and committed atomically."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..histogram import Histogram
from ..stages import PROTOCOLS, STAGES, stage_matrix
from .assembly import TraceBatch

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

    def observe_batch(self, batch: TraceBatch, codes: npt.NDArray[np.int8], labels: Sequence[str],
                      max_models: int, known_models: set[str]) -> None:
        """Stage histograms and trace counts of a batch of finished traces (vectorised)."""
        if not len(batch):
            return
        rows = np.flatnonzero(batch.usable(self.reject))
        if not len(rows):
            return
        # one group per (model, version, protocol); models past the cap are rejected
        group_keys, gidx = batch.groups(rows, codes)
        allowed_groups = np.ones(len(group_keys), dtype=bool)
        for g, (model, _, _) in enumerate(group_keys):
            if model not in known_models and model not in self.models:
                if len(known_models | self.models) >= max_models:
                    allowed_groups[g] = False
                else:
                    self.models.add(model)
        allowed = allowed_groups[gidx]
        self.rejected["model_cap"] += int((~allowed).sum())
        rows, gidx = rows[allowed], gidx[allowed]
        if not len(rows):
            return
        n_groups = len(group_keys)
        per_group = np.bincount(gidx, minlength=n_groups)
        bases = [(*labels, m, v, PROTOCOLS[c]) for m, v, c in group_keys]
        for g, base in enumerate(bases):
            if per_group[g]:
                self.traces[base] += int(per_group[g])
        durations, negative = stage_matrix(batch.stamps[rows])
        self.rejected["negative_span"] += int(negative.sum())
        # every (row, stage) observation at once: one series = (group, stage)
        n_stages = len(STAGES)
        bounds = np.asarray(self.bounds_ns, dtype=np.int64)
        n_buckets = len(bounds) + 1
        row_i, stage_j = np.nonzero(durations >= 0)
        dv = durations[row_i, stage_j]
        series = gidx[row_i] * n_stages + stage_j
        n_series = n_groups * n_stages
        flat = series * n_buckets + np.searchsorted(bounds, dv, side="left")
        counts = np.bincount(flat, minlength=n_series * n_buckets).reshape(n_series, n_buckets)
        per_series = np.bincount(series, minlength=n_series)
        if len(dv) and int(dv.max()) * len(dv) < 1 << 53:  # float64 sums are exact below 2**53
            sums = np.rint(np.bincount(series, weights=dv, minlength=n_series)).astype(np.int64)
        else:
            sums = np.zeros(n_series, dtype=np.int64)
            np.add.at(sums, series, dv)
        for sid in np.flatnonzero(per_series).tolist():
            g, j = divmod(sid, n_stages)
            key = (*bases[g], STAGES[j])
            h = self.histograms.get(key)
            if h is None:
                h = self.histograms[key] = Histogram(self.bounds_ns)
            row = counts[sid]
            for b in np.flatnonzero(row).tolist():
                h.counts[b] += int(row[b])
            h.count += int(per_series[sid])
            h.total += int(sums[sid])
        # a recent trace of each (series, bucket) becomes its exemplar
        last_of = np.full(n_series * n_buckets, -1, dtype=np.int64)
        last_of[flat] = np.arange(len(flat))
        cells = np.flatnonzero(last_of >= 0)
        now = time.time()
        ids = batch.ids[rows]
        for f, pos in zip(cells.tolist(), last_of[cells].tolist(), strict=True):
            sid, b = divmod(f, n_buckets)
            g, j = divmod(sid, n_stages)
            r = int(row_i[pos])
            self.exemplars.setdefault((*bases[g], STAGES[j]), {})[b] = Exemplar(
                str(int(ids[r])), batch.request_ids[int(rows[r])], int(dv[pos]) / 1e9, now)

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
