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
        bounds = np.asarray(self.bounds_ns, dtype=np.int64)
        n_buckets = len(bounds) + 1
        now = time.time()
        ids, rids = batch.ids[rows], [batch.request_ids[i] for i in rows.tolist()]
        for j, stage in enumerate(STAGES):
            d = durations[:, j]
            valid = np.flatnonzero(d >= 0)
            if not len(valid):
                continue
            dv, gv = d[valid], gidx[valid]
            bucket = np.searchsorted(bounds, dv, side="left")
            flat = gv * n_buckets + bucket
            counts = np.bincount(flat, minlength=n_groups * n_buckets).reshape(n_groups, n_buckets)
            if int(dv.max()) * len(dv) < 1 << 53:  # float64 sums are exact below 2**53
                sums_all = np.bincount(gv, weights=dv, minlength=n_groups)
                present = np.flatnonzero(np.bincount(gv, minlength=n_groups))
                gs_starts, sums = present, np.rint(sums_all[present]).astype(np.int64)
            else:
                order = np.argsort(gv, kind="stable")
                gs = gv[order]
                starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
                gs_starts, sums = gs[starts], np.add.reduceat(dv[order], starts)
            # a recent trace of each (group, bucket) becomes its exemplar
            last_of = np.full(n_groups * n_buckets, -1, dtype=np.int64)
            last_of[flat] = np.arange(len(flat))
            uniq = np.flatnonzero(last_of >= 0)
            last = last_of[uniq]
            for g_start, total in zip(gs_starts.tolist(), sums.tolist(), strict=True):
                key = (*bases[g_start], stage)
                h = self.histograms.get(key)
                if h is None:
                    h = self.histograms[key] = Histogram(self.bounds_ns)
                row = counts[g_start]
                for b in np.flatnonzero(row).tolist():
                    h.counts[b] += int(row[b])
                n = int(row.sum())
                h.count += n
                h.total += int(total)
            for f, pos in zip(uniq.tolist(), last.tolist(), strict=True):
                g, b = divmod(f, n_buckets)
                r = int(valid[pos])
                self.exemplars.setdefault((*bases[g], stage), {})[b] = Exemplar(
                    str(int(ids[r])), rids[r], int(dv[pos]) / 1e9, now)

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
