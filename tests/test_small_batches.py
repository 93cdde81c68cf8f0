"""Small batches (an OTLP POST's few traces) are counted in plain Python (traces/small.py) and
OTLP rows get their request model from the C scanner (scanner.with_model): both must leave
exactly the state the vectorised path leaves, on the same random traces."""

from __future__ import annotations

import copy
import io
import json
import random
from typing import Any

import numpy as np
import pytest

from exporter import stages
from exporter.stages import COLUMN, anatomy, protocol_codes
from exporter.traces import scanner
from exporter.traces.aggregate import TraceAggregate
from exporter.traces.assembly import TraceBatch
from exporter.traces.records import ReadResult
from exporter.traces.small import observe_small
from tests import tracegen

BOUNDS = tuple(10**i for i in range(3, 10))


def random_batches(seed: int, rows: int) -> list[TraceBatch]:
    """Synthetic traces (unary, ensembles, streams with custom activities, four models) in batches
    of at most `rows`, some rows spoiled (no header, no REQUEST_END), some failed, some with W3C ids."""
    rng = random.Random(seed)
    data = ("[" + ",".join(tracegen.traces(300, seed=seed, ensemble_every=4, streaming_every=3,
                                           models=("a", "b", "c", "d"))) + "]").encode()
    out = []
    for b in scanner.PyFileScan(64, lambda r: None, batch=rows).batches(io.BytesIO(data), ReadResult()):
        b.stamps = b.stamps.copy()
        for i in range(len(b)):
            roll = rng.random()
            if roll < 0.05:
                b.hdr[i] = -1
            elif roll < 0.1:
                b.stamps[i, COLUMN["REQUEST_END"]] = -1
            elif roll < 0.2 and b.stamps[i, COLUMN["QUEUE_START"]] >= 0:  # a zero or a negative queue
                b.stamps[i, COLUMN["COMPUTE_START"]] = b.stamps[i, COLUMN["QUEUE_START"]] - (roll < 0.15)
        if rng.random() < 0.3:
            b.failed = np.array([rng.random() < 0.3 for _ in range(len(b))], dtype=bool)
        if rng.random() < 0.5:
            b.trace_ids = [f"{rng.getrandbits(128):032x}" for _ in range(len(b))]
        out.append(b)
    return out


def state(agg: TraceAggregate) -> dict[str, Any]:
    v = agg.to_json()
    v["exemplars"] = {k: {b: (e.trace_id, e.request_id, e.value) for b, e in per.items()}
                      for k, per in agg.exemplars.items()}
    v["exemplar_order"] = [(k, list(per)) for k, per in agg.exemplars.items()]
    v["native"] = {k: (h.zero, sorted((h.native or {}).items())) for k, h in agg.histograms.items()}
    v["response_native"] = {k: (h.zero, sorted((h.native or {}).items())) for k, h in agg.responses.items()}
    v["rejected_keys"] = list(agg.rejected)
    return v


@pytest.mark.parametrize("seed,rows,max_models", [(1, 1, 100), (2, 3, 100), (3, 12, 3), (4, 40, 2)])
def test_small_path_leaves_the_vectorised_state(seed: int, rows: int, max_models: int) -> None:
    fast, slow = TraceAggregate(BOUNDS), TraceAggregate(BOUNDS)
    # the small path read from the C request model (as OTLP's rows are): streams finished in C
    # with their gaps, and without them (streaming rows redone from their every response)
    modelled, ungapped = TraceAggregate(BOUNDS), TraceAggregate(BOUNDS)
    live = TraceAggregate(BOUNDS)
    live.models = {("a", "1")}
    n = 0
    for b in random_batches(seed, rows):
        codes = protocol_codes(b.stamps)
        slow.observe_batch(b, codes, ("pod",), max_models, live)
        observe_small(fast, b, codes, ("pod",), max_models, live)
        with_model = scanner.with_model(copy.copy(b))
        assert with_model.model is not None
        observe_small(modelled, with_model, codes, ("pod",), max_models, live)
        with_model.model_gaps = None
        observe_small(ungapped, with_model, codes, ("pod",), max_models, live)
        if n == 0:  # one batch of a few traces: journaled as its values
            one = TraceAggregate(BOUNDS)
            observe_small(one, b, codes, ("pod",), max_models, live)
            assert one.values and "v" in one.to_delta_json()
        n += len(b)
    assert n > 300 and sum(slow.traces.values()) > 80
    assert slow.rejected["missing_header"] and slow.rejected["incomplete_trace"] and slow.rejected["negative_span"]
    assert any(h.zero for h in slow.histograms.values())
    assert any(k[-1] == "failed" for k in slow.outcomes) and slow.exemplars
    assert slow.rejected["model_cap"] if max_models < 4 else slow.custom_stages
    assert fast.values and not fast.histograms  # left as values, binned by the commit's merge
    assert list(fast.rejected.items()) == list(slow.rejected.items())
    assert state(TraceAggregate(BOUNDS).merged(fast)) == state(TraceAggregate(BOUNDS).merged(slow))
    for other in (modelled, ungapped):
        assert list(other.rejected.items()) == list(slow.rejected.items())
        assert state(TraceAggregate(BOUNDS).merged(other)) == state(TraceAggregate(BOUNDS).merged(slow))
    record = fast.to_delta_json()  # a series' few values as they are, its many binned (fewer bytes)
    assert "h" in record and len(json.dumps(record)) < len(json.dumps(slow.to_delta_json())) * 1.5
    replayed = TraceAggregate(BOUNDS)  # as the journal holds and start-up replays them
    replayed.absorb(TraceAggregate.from_delta_json(json.loads(json.dumps(record)), BOUNDS, True))
    expect = state(TraceAggregate(BOUNDS).merged(slow))
    got = state(replayed)
    for k in ("exemplars", "exemplar_order"):
        del expect[k], got[k]
    assert got == expect


FIELDS = ("durations", "negative", "implausible", "segments", "timed", "responses", "gap_rows", "gaps", "outcome")


def test_c_request_model_of_assembled_rows_equals_the_numpy_rules() -> None:
    exact = 0
    for b in random_batches(5, 25):
        with_model = scanner.with_model(TraceBatch(b.ids, b.parents, b.stamps, b.hdr, b.headers, b.request_ids,
                                                   b.extra, b.customs, failed=b.failed))
        assert with_model.model is not None and with_model.model_gaps is not None
        exact += int((with_model.model[:, stages.M_FLAGS] & stages.F_EXACT != 0).sum())
        slow = anatomy(b.stamps, b.repeats, b.failed, None)
        # streaming rows finished in C with every occurrence; and, without the gaps, redone in Python
        for gaps in (with_model.model_gaps, None):
            fast = anatomy(b.stamps, b.repeats, b.failed, with_model.model, gaps)
            for field in FIELDS:
                assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
        sub = np.arange(len(b))[1::2]  # a subset of rows takes its rows' gaps, renumbered
        part = with_model.anatomy(sub)
        whole = anatomy(b.stamps[sub], lambda i, b=b, sub=sub: b.repeats(int(sub[i])), None if b.failed is None
                        else b.failed[sub])
        for field in FIELDS:
            assert np.array_equal(getattr(part, field), getattr(whole, field)), field
    assert exact > 20  # streams with more than two responses among them


def test_model_rows_refuses_a_partial_row() -> None:
    b = random_batches(6, 4)[0]
    scanner.with_model(b)  # makes the module's model scanner
    assert scanner._MODEL is not None
    sc, width = scanner._MODEL
    assert len(sc.model_rows(b.stamps.tobytes())) == len(b) * width * 8
    with pytest.raises(ValueError):
        sc.model_rows(b.stamps.tobytes()[:-8])


def test_fill_in_c_equals_the_python_loop_and_the_vectorised_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter import histogram
    from exporter.histogram import Histogram

    assert histogram._fill_c is not None  # the C scanner is built wherever the tests run
    rng = random.Random(7)
    values = [0, 1, *BOUNDS, *(b + 1 for b in BOUNDS), *(rng.randrange(1, 10**11) for _ in range(300))]
    c, slow = Histogram(BOUNDS), Histogram(BOUNDS)
    c.fill(values, 1e9)
    monkeypatch.setattr(histogram, "_fill_c", None)
    slow.fill(values, 1e9)
    ref = TraceAggregate(BOUNDS)
    ref.observe_values(np.zeros(len(values), dtype=np.int64), np.asarray(values, dtype=np.int64),
                       np.zeros(len(values), dtype=np.intp), [("s",)], lambda r: ("t", None))
    for h in (c, slow):
        assert (h.counts, h.total, h.count, h.zero, sorted((h.native or {}).items())) == (
            ref.histograms[("s",)].counts, ref.histograms[("s",)].total, ref.histograms[("s",)].count,
            ref.histograms[("s",)].zero, sorted((ref.histograms[("s",)].native or {}).items()))
