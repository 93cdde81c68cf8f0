"""The request model the C scanner computes as each trace finishes (stages.scan_model) equals
stages.anatomy's numpy rules, field by field, on real files and on any timestamp order."""

from __future__ import annotations

import io
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import stages
from exporter.stages import anatomy
from exporter.traces import scanner
from exporter.traces.assembly import TraceBatch
from exporter.traces.records import ReadResult
from tests import tracegen
from tests.conftest import SAMPLES


def batches(data: bytes) -> list[TraceBatch]:
    return list(scanner.CFileScan(64, lambda r: None, batch=5).batches(io.BytesIO(data), ReadResult()))


def assert_same(data: bytes) -> int:
    rows = 0
    for b in batches(data):
        assert b.model is not None
        every = np.arange(len(b))
        fast = anatomy(b.stamps, b.repeats, None, b.model)
        slow = anatomy(b.stamps, b.repeats, None, None)
        # the rows as assembled elsewhere (OTLP), with every occurrence: streaming rows finished in C too
        mine = scanner.with_model(TraceBatch(b.ids, b.parents, b.stamps, b.hdr, b.headers, b.request_ids, b.extra,
                                             b.customs))
        assert mine.model is not None
        exact = anatomy(b.stamps, b.repeats, None, mine.model, mine.model_gaps)
        for field in ("durations", "negative", "implausible", "segments", "timed", "responses", "gap_rows", "gaps",
                      "outcome"):
            assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
            assert np.array_equal(getattr(exact, field), getattr(slow, field)), field
        sub = every[::2]  # a subset of rows takes the model's rows too

        def extra_of(i: int, b: TraceBatch = b, sub: np.ndarray = sub) -> stages.Extra:  # type: ignore[type-arg]
            return b.repeats(int(sub[i]))

        assert np.array_equal(b.anatomy(sub).segments, anatomy(b.stamps[sub], extra_of).segments)
        rows += len(b)
    return rows


def test_real_files() -> None:
    files = [p for d in ("rolling-traces", "outcomes", "tensors") for p in sorted((SAMPLES / "triton-2.51" / d).iterdir())]
    assert sum(assert_same(p.read_bytes()) for p in files) > 100


def test_synthetic_streams_ensembles_and_custom_activities() -> None:
    data = ("[" + ",".join(tracegen.traces(3000, seed=5, ensemble_every=4, streaming_every=3)) + "]").encode()
    assert assert_same(data) >= 3000


NAMES = sorted(stages.KNOWN_TIMESTAMPS - {"CUSTOM_ACTIVITY"})
one_trace = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(1, 2_000)), max_size=30)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces=st.lists(one_trace, min_size=1, max_size=8))
def test_any_timestamp_order(traces: list[list[tuple[str, int]]]) -> None:
    objs: list[dict[str, object]] = []
    for i, stamps in enumerate(traces, start=1):
        objs.append({"id": i, "model_name": "m", "model_version": 1})
        objs.extend({"id": i, "timestamps": [{"name": n, "ns": ns}]}
                    for n, ns in [("REQUEST_START", 1), ("REQUEST_END", 2), *stamps])
    assert_same(json.dumps(objs, separators=(",", ":")).encode())


def test_the_model_layout_is_refused_when_wrong() -> None:
    import pytest

    sc = scanner.CFileScan(4, lambda r: None).sc
    for bad in ((), (1,), stages.scan_model()[:-1], (*stages.scan_model(), 1)):
        with pytest.raises(ValueError):
            sc.set_model(bad)
    assert sc.set_model(stages.scan_model()) == stages.M_SEGMENTS + len(stages.SEGMENTS)


