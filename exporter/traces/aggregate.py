"""The trace histograms' state: per-series stage histograms and counters, mergeable and
serialisable, so a file's contribution can be built aside and committed atomically."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

import numpy as np
import numpy.typing as npt

from ..histogram import Histogram
from ..stages import (
    ALL_STAGES,
    INTER_RESPONSE,
    OUTCOMES,
    PROTOCOLS,
    SEGMENTS,
    Outcome,
)
from ..wire.names import WIRE_STAGES
from .assembly import TraceBatch
from .binning import bin_values, binned_beyond
from .wire_counts import WireJoin, wire_counts

# series key: (*pattern labels, model, version, protocol[, stage | segment])
SeriesKey = tuple[str, ...]

RESPONSE_BOUNDS: tuple[int, ...] = tuple(1 << i for i in range(13))  # responses per request: 1 .. 4096
MAX_CUSTOM_STAGES = 16  # distinct custom activity stages exposed; more are rejected
JOURNALED_VALUES = 8  # a delta series' values are journaled as they are up to this many


@dataclass(slots=True)  # dozens made per commit
class Exemplar:
    trace_id: str
    request_id: str | None
    value: float
    timestamp: float


@dataclass
class TraceAggregate:
    bounds_ns: tuple[int, ...]
    histograms: dict[SeriesKey, Histogram] = field(default_factory=dict)  # stage durations
    traces: Counter[SeriesKey] = field(default_factory=Counter)  # (*labels, model, version, protocol)
    outcomes: Counter[SeriesKey] = field(default_factory=Counter)  # (*labels, model, version, protocol, outcome)
    responses: dict[SeriesKey, Histogram] = field(default_factory=dict)  # responses per request
    timeline: Counter[SeriesKey] = field(default_factory=Counter)  # ns per segment
    joins: Counter[SeriesKey] = field(default_factory=Counter)  # (*labels, model, version, protocol, result)
    files: Counter[str] = field(default_factory=Counter)  # parsed | failed
    rejected: Counter[str] = field(default_factory=Counter)
    models: set[tuple[str, str]] = field(default_factory=set)  # (model, version) pairs admitted
    custom_stages: set[str] = field(default_factory=set)
    last_ingest: float = 0.0
    # newest exemplar per series and bucket; not persisted (they describe recent traces)
    exemplars: dict[SeriesKey, dict[int, Exemplar]] = field(default_factory=dict)
    # a delta's observations not binned yet (small batches: stage ns, responses per request), binned
    # by merged()/absorb() and journaled as they are: a POST's few values, not its whole histograms
    values: dict[SeriesKey, list[int]] = field(default_factory=dict)
    response_values: dict[SeriesKey, list[int]] = field(default_factory=dict)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n

    def _admit(self, keys: list[tuple[str, str, int]], max_models: int, live: TraceAggregate | None
               ) -> npt.NDArray[np.bool_]:
        """Which (model, version, protocol) groups fit under the cap on (model, version) pairs."""
        known = live.models if live is not None else set()
        allowed = np.ones(len(keys), dtype=bool)
        for g, (model, version, _) in enumerate(keys):
            pair = (model, version)
            if pair not in known and pair not in self.models:
                if len(known) + len(self.models - known) >= max_models:
                    allowed[g] = False
                else:
                    self.models.add(pair)
        return allowed

    def _custom_observations(self, batch: TraceBatch, rows: npt.NDArray[np.intp], stage_names: list[str],
                             live: TraceAggregate | None) -> tuple[list[int], list[int], list[int]]:
        """(row index, stage index, ns) of the custom activity spans of the given rows."""
        out: tuple[list[int], list[int], list[int]] = ([], [], [])
        known = live.custom_stages if live is not None else set()
        index = {s: i for i, s in enumerate(stage_names)}
        for r, stage, d in batch.custom_spans(rows):
            if stage not in known and stage not in self.custom_stages:
                if len(known | self.custom_stages) >= MAX_CUSTOM_STAGES:
                    self.reject("custom_activity_cap")
                    continue
                self.custom_stages.add(stage)
            j = index.get(stage)
            if j is None:
                j = index[stage] = len(stage_names)
                stage_names.append(stage)
            out[0].append(r)
            out[1].append(j)
            out[2].append(d)
        return out

    def observe_batch(self, batch: TraceBatch, codes: npt.NDArray[np.int8], labels: Sequence[str],
                      max_models: int, live: TraceAggregate | None = None, wire: WireJoin | None = None) -> None:
        """Stages, responses and timeline of a batch of finished traces (vectorised); `live`
        is the committed aggregate this one will be merged into (for the caps); `wire`, where
        the socket join runs, adds the wire stages, segments and join results."""
        if not len(batch):
            return
        rows = np.flatnonzero(batch.usable(self.reject))
        if not len(rows):
            return
        # one group per (model, version, protocol); (model, version) pairs past the cap are rejected
        group_keys, gidx = batch.groups(rows, codes)
        allowed = self._admit(group_keys, max_models, live)[gidx]
        self.rejected["model_cap"] += int((~allowed).sum())
        rows, gidx = rows[allowed], gidx[allowed]
        if not len(rows):
            return
        n_groups = len(group_keys)
        bases = [(*labels, m, v, PROTOCOLS[c]) for m, v, c in group_keys]
        for g, n in enumerate(np.bincount(gidx, minlength=n_groups).tolist()):
            if n:
                self.traces[bases[g]] += n
        an = batch.anatomy(rows)
        n_out = len(OUTCOMES)
        for f, n in enumerate(np.bincount(gidx * n_out + an.outcome, minlength=n_groups * n_out).tolist()):
            if n:
                self.outcomes[(*bases[f // n_out], OUTCOMES[f % n_out])] += n
        self.rejected["negative_span"] += int(an.negative.sum())
        self.rejected["implausible_span"] += int(an.implausible.sum())

        # every (row, stage) observation at once: one series = (group, stage)
        stage_names = list(ALL_STAGES)
        by_stage = an.durations.T  # [stages, rows], C-contiguous: a series' rows stay in order
        stage_j, row_i = np.nonzero(by_stage >= 0)
        dv = by_stage[stage_j, row_i]
        c_rows, c_stages, c_ns = self._custom_observations(batch, rows, stage_names, live)
        if wire is not None:
            # children (ensemble steps, BLS calls) came through no frontend of their own: unsupported
            obs = wire(batch.stamps[rows], np.where(batch.parents[rows] >= 0, 0, codes[rows]).astype(np.int8), an,
                       [bases[g] for g in gidx.tolist()], _ids_of(batch, rows))
            first_wire = len(stage_names)
            stage_names.extend(WIRE_STAGES)
            c_rows += obs.rows.tolist()
            c_stages += (obs.stages + first_wire).tolist()
            c_ns += obs.ns.tolist()
            wire_counts(self, obs, gidx, bases)
        if len(an.gaps) or c_rows:
            row_i = np.concatenate([row_i, an.gap_rows, np.asarray(c_rows, dtype=np.intp)])
            stage_j = np.concatenate([stage_j, np.full(len(an.gaps), ALL_STAGES.index(INTER_RESPONSE)),
                                      np.asarray(c_stages, dtype=np.intp)])
            dv = np.concatenate([dv, an.gaps, np.asarray(c_ns, dtype=np.int64)])
        self.observe_values(gidx[row_i] * len(stage_names) + stage_j, dv, row_i,
                            [(*b, s) for b in bases for s in stage_names], _ids_of(batch, rows))

        # responses per request (cancelled requests had none), and the timeline's segments per group
        answered = an.outcome != Outcome.CANCELLED
        order = np.argsort(gidx[an.timed], kind="stable")
        timed_g = gidx[an.timed][order]
        if len(timed_g):
            starts = np.flatnonzero(np.r_[True, timed_g[1:] != timed_g[:-1]])
            seg_sums = np.add.reduceat(an.segments[an.timed][order], starts, axis=0)
            timeline = self.timeline
            for g, sums in zip(timed_g[starts].tolist(), seg_sums.tolist(), strict=True):
                for seg, ns in zip(SEGMENTS, sums, strict=True):
                    key = (*bases[g], seg)
                    timeline[key] = timeline.get(key, 0) + ns  # (a new key through Counter.__missing__ costs more)
        binned, _, _ = bin_values(gidx[answered], an.responses[answered], n_groups, RESPONSE_BOUNDS, 1.0)
        for g, row, total, n, zero, native in binned:
            h = self.responses.get(bases[g])
            if h is None:
                self.responses[bases[g]] = Histogram(RESPONSE_BOUNDS, row, total, n, native, zero)
            else:
                h.add(row, total, n, native, zero)

    def observe_values(self, series: npt.NDArray[np.int64], dv: npt.NDArray[np.int64], row_i: npt.NDArray[np.intp],
                       keys: list[SeriesKey], ids_of: Callable[[int], tuple[str, str | None]]) -> None:
        """Bucket every observation (series index into keys, value, row) into its series'
        histogram; the newest of each bucket becomes its exemplar, with ids_of(row)."""
        binned, cells, lasts = bin_values(series, dv, len(keys), self.bounds_ns, 1e9)
        histograms = self.histograms
        for sid, row, total, n, zero, native in binned:
            key = keys[sid]
            h = histograms.get(key)
            if h is None:
                histograms[key] = Histogram(self.bounds_ns, row, total, n, native, zero)
            else:
                h.add(row, total, n, native, zero)
        if not cells:
            return
        at = np.asarray(lasts, dtype=np.intp)
        n_buckets = len(self.bounds_ns) + 1
        now = time.time()
        exemplars = self.exemplars
        for f, r, v in zip(cells, row_i[at].tolist(), (dv[at] / 1e9).tolist(), strict=True):
            sid, b = divmod(f, n_buckets)
            per = exemplars.get(keys[sid])
            if per is None:
                per = exemplars[keys[sid]] = {}
            per[b] = Exemplar(*ids_of(r), v, now)

    def merged(self, delta: TraceAggregate) -> TraceAggregate:
        """A new aggregate = self + delta (self is left untouched for concurrent scrapes). The new
        one shares every series the delta does not touch with self: a commit costs what it changed
        (plus a C-level copy of the mappings), not a copy of every histogram."""
        out = TraceAggregate(self.bounds_ns)
        # in the journal record's form, so that a replay adds new series in the same order
        out.histograms = _merged(self.histograms, *binned_beyond(delta.histograms, delta.values, JOURNALED_VALUES,
                                                                 self.bounds_ns, 1e9), self.bounds_ns, 1e9)
        out.responses = _merged(self.responses, *binned_beyond(delta.responses, delta.response_values,
                                                               JOURNALED_VALUES, RESPONSE_BOUNDS, 1.0),
                                RESPONSE_BOUNDS, 1.0)
        out.traces = _added(self.traces, delta.traces)
        out.outcomes = _added(self.outcomes, delta.outcomes)
        out.timeline = _added(self.timeline, delta.timeline)
        out.joins = _added(self.joins, delta.joins)
        out.files = _added(self.files, delta.files)
        out.rejected = _added(self.rejected, delta.rejected)
        out.models = self.models | delta.models if delta.models - self.models else self.models
        out.custom_stages = (self.custom_stages | delta.custom_stages if delta.custom_stages - self.custom_stages
                             else self.custom_stages)
        out.last_ingest = max(self.last_ingest, delta.last_ingest)
        out.exemplars = dict(self.exemplars)
        for k, v in delta.exemplars.items():
            out.exemplars[k] = {**out.exemplars.get(k, {}), **v}
        return out

    def absorb(self, delta: TraceAggregate) -> None:
        """self += delta in place, the same result as merged() (series in the same order): replaying
        the journal at start-up, where copying the whole aggregate per record would cost O(records x state)."""
        for mine, theirs in ((self.histograms, delta.histograms), (self.responses, delta.responses)):
            for k, h in theirs.items():
                if k in mine:
                    mine[k].merge(h)
                else:
                    mine[k] = h.copy()
        for mine, values, bounds, unit in ((self.histograms, delta.values, self.bounds_ns, 1e9),
                                           (self.responses, delta.response_values, RESPONSE_BOUNDS, 1.0)):
            for k, vs in values.items():
                mine.setdefault(k, Histogram(bounds)).fill(vs, unit)
        self.traces += delta.traces  # Counter +=, like +, keeps only positive counts
        self.outcomes += delta.outcomes
        self.timeline += delta.timeline
        self.joins += delta.joins
        self.files += delta.files
        self.rejected += delta.rejected
        self.models |= delta.models
        self.custom_stages |= delta.custom_stages
        self.last_ingest = max(self.last_ingest, delta.last_ingest)

    def to_json(self) -> dict[str, Any]:
        return {
            "bounds_ns": list(self.bounds_ns),
            "histograms": [[list(k), h.counts, h.total, h.count, h.native_json()] for k, h in self.histograms.items()],
            "traces": [[list(k), n] for k, n in self.traces.items()],
            "outcomes": [[list(k), n] for k, n in sorted(self.outcomes.items())],  # in any order of arrival
            "responses": [[list(k), h.counts, h.total, h.count, h.native_json()] for k, h in self.responses.items()],
            "timeline": [[list(k), n] for k, n in self.timeline.items()],
            "joins": [[list(k), n] for k, n in sorted(self.joins.items())],
            "files": dict(self.files),
            "rejected": dict(self.rejected),
            "models": sorted([m, v] for m, v in self.models),
            "custom_stages": sorted(self.custom_stages),
            "last_ingest": self.last_ingest,
        }

    def to_delta_json(self) -> dict[str, Any]:
        """This aggregate as a journal record holds one commit's delta: each (labels, model, version,
        protocol) once in a table "b", series refer to it by index, bucket counts sparse (a file's
        delta fills few buckets): half the bytes of to_json. Empty parts are left out."""
        table: dict[SeriesKey, int] = {}

        def ref(base: SeriesKey) -> int:
            return table.setdefault(base, len(table))

        def sparse(h: Histogram) -> list[Any]:
            return [list(compress(range(len(h.counts)), h.counts)), list(filter(None, h.counts)), h.total, h.count,
                    h.native_json()]

        # a series' few values as they are, its many binned (fewer bytes)
        hists, values = binned_beyond(self.histograms, self.values, JOURNALED_VALUES, self.bounds_ns, 1e9)
        responses, response_values = binned_beyond(self.responses, self.response_values, JOURNALED_VALUES,
                                                   RESPONSE_BOUNDS, 1.0)
        v: dict[str, Any] = {
            "h": [[ref(k[:-1]), k[-1], *sparse(h)] for k, h in hists.items()],
            "t": [[ref(k), n] for k, n in self.traces.items()],
            "o": [[ref(k[:-1]), k[-1], n] for k, n in self.outcomes.items()],
            "r": [[ref(k), *sparse(h)] for k, h in responses.items()],
            "l": [[ref(k[:-1]), k[-1], n] for k, n in self.timeline.items() if n > 0],  # a merge drops the rest
            "j": [[ref(k[:-1]), k[-1], n] for k, n in self.joins.items()],
            "v": [[ref(k[:-1]), k[-1], vs] for k, vs in values.items()],
            "rv": [[ref(k), vs] for k, vs in response_values.items()],
            "files": dict(self.files),
            "rejected": {r: n for r, n in self.rejected.items() if n > 0},
            "models": sorted([m, ver] for m, ver in self.models),
            "custom_stages": sorted(self.custom_stages),
            "last_ingest": self.last_ingest,
        }
        v["b"] = [list(k) for k in table]
        return {k: x for k, x in v.items() if x}

    @classmethod
    def from_delta_json(cls, v: dict[str, Any], bounds_ns: tuple[int, ...], same_buckets: bool) -> TraceAggregate:
        """The inverse of to_delta_json; stage histograms left out unless written with bounds_ns."""
        agg = cls(bounds_ns)
        table = [tuple(b) for b in v.get("b", [])]

        def at(seq: list[Any], i: int) -> Any:
            if not isinstance(i, int) or not 0 <= i < len(seq):
                raise IndexError(f"index {i!r} of {len(seq)}")
            return seq[i]

        def dense(n: int, idx: list[Any], counts: list[Any]) -> list[int]:
            out = [0] * n
            for i, c in zip(idx, counts, strict=True):
                at(out, i)
                out[i] = int(c)
            return out

        if same_buckets:
            for b, last, idx, counts, total, count, *native in v.get("h", []):
                h = agg.histograms[(*at(table, b), last)] = Histogram(
                    bounds_ns, dense(len(bounds_ns) + 1, idx, counts), int(total), int(count))
                h.load_native(native[0] if native else None)
            agg.values = {(*at(table, b), str(last)): [_count(x) for x in vs] for b, last, vs in v.get("v", [])}
        agg.response_values = {at(table, b): [_count(x) for x in vs] for b, vs in v.get("rv", [])}
        agg.traces = Counter({at(table, b): int(n) for b, n in v.get("t", [])})
        agg.outcomes = Counter({(*at(table, b), str(o)): _count(n) for b, o, n in v.get("o", [])})
        for b, idx, counts, total, count, *native in v.get("r", []):
            h = agg.responses[at(table, b)] = Histogram(
                RESPONSE_BOUNDS, dense(len(RESPONSE_BOUNDS) + 1, idx, counts), int(total), int(count))
            h.load_native(native[0] if native else None)
        agg.timeline = Counter({(*at(table, b), last): int(n) for b, last, n in v.get("l", [])})
        agg.joins = Counter({(*at(table, b), str(r)): _count(n) for b, r, n in v.get("j", [])})
        agg.files = Counter({str(k): int(n) for k, n in v.get("files", {}).items()})
        agg.rejected = Counter({str(k): int(n) for k, n in v.get("rejected", {}).items()})
        agg.models = {(str(p[0]), str(p[1])) for p in v.get("models", []) if isinstance(p, list) and len(p) == 2}
        agg.custom_stages = {str(c) for c in v.get("custom_stages", [])}
        agg.last_ingest = float(v.get("last_ingest", 0.0))
        return agg

    @classmethod
    def from_json(cls, v: dict[str, Any], bounds_ns: tuple[int, ...]) -> TraceAggregate:
        agg = cls(bounds_ns)
        same_buckets = tuple(v.get("bounds_ns", ())) == bounds_ns
        if same_buckets:
            for k, counts, total, count, *native in v.get("histograms", []):
                h = agg.histograms[tuple(k)] = Histogram(bounds_ns, [int(c) for c in counts], int(total), int(count))
                h.load_native(native[0] if native else None)
        agg.traces = Counter({tuple(k): int(n) for k, n in v.get("traces", [])})
        agg.outcomes = Counter({tuple(map(str, k)): _count(n) for k, n in v.get("outcomes", [])})
        for k, counts, total, count, *native in v.get("responses", []):
            h = agg.responses[tuple(k)] = Histogram(RESPONSE_BOUNDS, [int(c) for c in counts], int(total), int(count))
            h.load_native(native[0] if native else None)
        agg.timeline = Counter({tuple(k): int(n) for k, n in v.get("timeline", [])})
        agg.joins = Counter({tuple(map(str, k)): _count(n) for k, n in v.get("joins", [])})
        agg.files = Counter({str(k): int(n) for k, n in v.get("files", {}).items()})
        agg.rejected = Counter({str(k): int(n) for k, n in v.get("rejected", {}).items()})
        agg.models = {(str(p[0]), str(p[1])) for p in v.get("models", []) if isinstance(p, list) and len(p) == 2}
        agg.custom_stages = {str(c) for c in v.get("custom_stages", [])}
        agg.last_ingest = float(v.get("last_ingest", 0.0))
        return agg


def _ids_of(batch: TraceBatch, rows: npt.NDArray[np.intp]) -> Callable[[int], tuple[str, str | None]]:
    """(trace id, request id) of the batch's r-th observed row: the exemplar's labels."""
    at, rids, w3c = rows.tolist(), batch.request_ids, batch.trace_ids
    if w3c is None:
        ids = batch.ids[rows].tolist()
        return lambda r: (str(ids[r]), rids[at[r]])
    return lambda r: (w3c[at[r]], rids[at[r]])


def _count(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"count {n!r} is not a non-negative integer")
    return n


def _merged(a: dict[SeriesKey, Histogram], b: dict[SeriesKey, Histogram], values: dict[SeriesKey, list[int]],
            bounds: tuple[int, ...], unit: float) -> dict[SeriesKey, Histogram]:
    """a + b + values (observations in 1/unit), none changed: the histograms b or values touch are
    new, the others are a's own (shared, never changed in place once committed)."""
    out = dict(a)
    for k, h in b.items():
        mine = out.get(k)
        out[k] = h.copy() if mine is None else mine.plus(h)
    for k, vs in values.items():
        mine = out.get(k)
        out[k] = mine = Histogram(bounds) if mine is None else mine if k in b else mine.copy()
        mine.fill(vs, unit)
    return out


def _added(a: Counter[Any], b: Counter[Any]) -> Counter[Any]:
    """a + b's positive counts as a new Counter in a's order (b's new keys last), neither changed;
    a itself where b adds nothing (a committed Counter is never changed in place)."""
    add = [(k, n) for k, n in b.items() if n > 0]
    if not add:
        return a
    out = a.copy()
    for k, n in add:
        out[k] += n
    return out
