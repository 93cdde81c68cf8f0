"""TraceAggregate.observe_batch for a batch of a few traces, in plain Python.

An OTLP sender posts a dozen spans at a time (a few traces), and each POST is committed on its
own: numpy's fixed cost per call, paid a few hundred times a batch, was most of a POST's cost.
This path computes the same thing row by row over Python lists, in the same order, so the
aggregate it leaves is identical to the vectorised one's (tests/test_small_batches.py feeds the
same random traces through both and compares the state exactly). The request anatomy itself
stays the vectorised one (from the C scanner's model where there is one). Stage durations and
responses are left as values in the delta (TraceAggregate.values), binned when it is merged."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..stages import ALL_STAGES, INTER_RESPONSE, OUTCOMES, PROTOCOLS, SEGMENTS, Outcome
from .aggregate import Exemplar, SeriesKey, TraceAggregate
from .assembly import TraceBatch

# batches of at most this many traces take this path (where no socket join runs): the crossover, in
# instructions per POST of real Triton bodies, lies near 11 traces since the vectorised path bins in C
# (binning.py): this path 9 % cheaper at 8, the vectorised one 2 % cheaper at 12, 9 % at 16, 30 % at 24
SMALL_ROWS = 10

def observe_small(agg: TraceAggregate, batch: TraceBatch, codes: npt.NDArray[np.int8], labels: Sequence[str],
                  max_models: int, live: TraceAggregate | None = None) -> None:
    """agg.observe_batch(batch, codes, labels, max_models, live) without a socket join."""
    if not len(batch):
        return
    rows_a = np.flatnonzero(batch.usable(agg.reject))
    if not len(rows_a):
        return
    n_proto = len(PROTOCOLS)
    hdr = batch.hdr.tolist()
    code = codes.tolist()
    rows = rows_a.tolist()
    flat = [hdr[r] * n_proto + code[r] for r in rows]
    uniq = sorted(set(flat))
    group_keys = [(*batch.headers[u // n_proto], u % n_proto) for u in uniq]
    allowed = agg._admit(group_keys, max_models, live).tolist()
    where = {u: g for g, u in enumerate(uniq)}
    gidx_all = [where[f] for f in flat]
    keep = [i for i, g in enumerate(gidx_all) if allowed[g]]
    agg.rejected["model_cap"] += len(rows) - len(keep)
    if not keep:
        return
    if len(keep) < len(rows):
        rows_a = rows_a[keep]
        rows = [rows[i] for i in keep]
    gidx = [gidx_all[i] for i in keep]
    n_groups = len(group_keys)
    bases: list[SeriesKey] = [(*labels, m, v, PROTOCOLS[c]) for m, v, c in group_keys]
    per_group = [0] * n_groups
    for g in gidx:
        per_group[g] += 1
    for g, n in enumerate(per_group):
        if n:
            agg.traces[bases[g]] += n
    an = batch.anatomy(rows_a)
    outcome = an.outcome.tolist()
    n_out = len(OUTCOMES)
    cells = sorted({g * n_out + o for g, o in zip(gidx, outcome, strict=True)})
    for f in cells:
        agg.outcomes[(*bases[f // n_out], OUTCOMES[f % n_out])] += sum(
            1 for g, o in zip(gidx, outcome, strict=True) if g * n_out + o == f)
    agg.rejected["negative_span"] += int(sum(an.negative.tolist()))
    agg.rejected["implausible_span"] += int(sum(an.implausible.tolist()))

    # the observations in the vectorised path's order: stage by stage, then the gaps, then custom spans
    stage_names = list(ALL_STAGES)
    by_stage = an.durations.T  # [stages, rows]: stage by stage, a stage's rows in order
    stage_j, row_i = np.nonzero(by_stage >= 0)
    obs_j: list[int] = stage_j.tolist()
    obs_r: list[int] = row_i.tolist()
    obs_v: list[int] = by_stage[stage_j, row_i].tolist()
    c_rows, c_stages, c_ns = agg._custom_observations(batch, rows_a, stage_names, live)
    gap_rows = an.gap_rows.tolist()
    obs_r += gap_rows
    obs_j += [ALL_STAGES.index(INTER_RESPONSE)] * len(gap_rows)
    obs_v += an.gaps.tolist()
    obs_r += c_rows
    obs_j += c_stages
    obs_v += c_ns
    _observe(agg, [gidx[r] * len(stage_names) + j for r, j in zip(obs_r, obs_j, strict=True)], obs_v, obs_r,
             bases, stage_names, batch, rows)

    # responses per request (cancelled requests had none), and the timeline's segments per group
    responses = an.responses.tolist()
    answered: dict[int, list[int]] = {}
    for g, o, n in zip(gidx, outcome, responses, strict=True):
        if o != Outcome.CANCELLED:
            answered.setdefault(g, []).append(n)
    timed = an.timed.tolist()
    segments = an.segments.tolist()
    sums: dict[int, list[int]] = {}
    for i, g in enumerate(gidx):
        if timed[i]:
            acc = sums.get(g)
            if acc is None:
                sums[g] = list(segments[i])
            else:
                sums[g] = [a + b for a, b in zip(acc, segments[i], strict=True)]
    timeline = agg.timeline
    for g in sorted(sums):
        for seg, ns in zip(SEGMENTS, sums[g], strict=True):
            key = (*bases[g], seg)
            timeline[key] = timeline.get(key, 0) + ns  # (a new key through Counter.__missing__ costs more)
    for g in sorted(answered):
        agg.response_values.setdefault(bases[g], []).extend(answered[g])


def _observe(agg: TraceAggregate, series: list[int], dv: list[int], row_i: list[int], bases: list[SeriesKey],
             stage_names: list[str], batch: TraceBatch, rows: list[int]) -> None:
    """TraceAggregate._observe: each series' histogram filled, the newest of each bucket its exemplar
    (series = group * len(stage_names) + stage)."""
    bounds = agg.bounds_ns
    by_series: dict[int, list[int]] = {}
    last: dict[tuple[int, int], int] = {}  # (series, bucket) -> the last observation's position
    for pos, (sid, v) in enumerate(zip(series, dv, strict=True)):
        vs = by_series.get(sid)
        if vs is None:
            by_series[sid] = [v]
        else:
            vs.append(v)
        last[(sid, bisect_left(bounds, v))] = pos
    n_stages = len(stage_names)
    keys = {sid: (*bases[sid // n_stages], stage_names[sid % n_stages]) for sid in sorted(by_series)}
    values = agg.values
    for sid, key in keys.items():  # binned when the delta is merged (and journaled as they are)
        known = values.get(key)
        if known is None:
            values[key] = by_series[sid]
        else:
            known += by_series[sid]
    now = time.time()
    w3c = batch.trace_ids
    trace_ids = w3c if w3c is not None else [str(i) for i in batch.ids.tolist()]
    rids = batch.request_ids
    exemplars = agg.exemplars
    at = -1
    per: dict[int, Exemplar] = {}
    for (sid, b), pos in sorted(last.items()):
        row = rows[row_i[pos]]
        if sid != at:
            at = sid
            key = keys[sid]
            per = exemplars.get(key) or exemplars.setdefault(key, {})
        per[b] = Exemplar(trace_ids[row], rids[row], dv[pos] / 1e9, now)
