"""The C fast path of the trace scanner counts exactly what the pure-Python reference does."""

from __future__ import annotations

import io
import os
import tempfile
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.traces import scanner
from exporter.traces.records import ReadResult
from tests import tracegen
from tests.conftest import ROLLING_TRACES

SAMPLES = ROLLING_TRACES


def run(cls: Any, data: bytes, window: int = 16384, salvage: bool = False) -> tuple[list[Any], Counter[str], tuple[Any, ...]]:
    rejected: Counter[str] = Counter()
    scan = cls(window, lambda r: rejected.update([r]), batch=7)
    result = ReadResult()
    out = []
    for b in scan.batches(io.BytesIO(data), result, 0, salvage):
        for i in range(len(b)):
            t = b.trace(i)
            out.append((t.id, t.model, t.version, t.request_id, t.parent_id, sorted(t.stamps.items()),
                        sorted(t.extra)))
    return out, rejected, (result.complete, result.array)


def assert_same(data: bytes, window: int = 16384, salvage: bool = False) -> None:
    py = run(scanner.PyFileScan, data, window, salvage)
    c = run(scanner.CFileScan, data, window, salvage)
    assert c == py


def test_the_extension_is_built_here() -> None:
    assert scanner._scan is not None, "exporter.traces._scan did not build (gcc and Python headers are needed)"
    assert scanner.FileScan is scanner.CFileScan


def test_real_samples() -> None:
    for p in sorted(SAMPLES.iterdir()):
        assert_same(p.read_bytes())


def test_synthetic_with_ensembles_and_small_window() -> None:
    data = ("[" + ",".join(tracegen.traces(3000, seed=2, ensemble_every=3)) + "]").encode()
    assert_same(data)
    assert_same(data, window=3)


def test_streaming_traces_custom_activities_and_zeros() -> None:
    data = ("[" + ",".join(tracegen.traces(3000, seed=4, ensemble_every=5, streaming_every=2)) + "]").encode()
    assert b'"ns":0}' in data and b"TOKENIZE_START" in data
    assert_same(data)
    assert_same(data, window=2)


def test_big_chunks_cross_object_boundaries() -> None:
    data = ("[" + ",\n ".join(tracegen.traces(40000, seed=3)) + "]").encode()
    assert len(data) > 2 * scanner.C_CHUNK
    assert_same(data)


odd_objects = st.sampled_from([
    '{"id":5,"model_name":"caf\\u00e9","model_version":"2"}',
    '{ "id" : 6 , "timestamps" : [ { "ns" : 10 , "name" : "REQUEST_START" } ] }',
    '{"id":7,"timestamps":[{"name":"REQUEST_START","ns":1},{"name":"REQUEST_END","ns":9}]}',
    '{"id":8,"model_name":"m","model_version":1,"request_id":12,"parent_id":3}',
    '{"id":9,"model_name":"m","model_version":1,"extra":true}',
    '{"id":10,"timestamps":[{"name":"NOPE","ns":1}]}',
    '{"id":11,"timestamps":[]}',
    '{"id":01,"model_name":"x","model_version":1}',
    '{"id":12,"model_name":"a"b","model_version":1}',
    '{"id":13,"timestamps":[{"name":"REQUEST_START","ns":99999999999999999999}]}',
    '{"id":1,"timestamps":[{"name":"REQUEST_END","ns":5}]} junk',
    '{"id":14,"model_name":"","model_version":1}',
    '{"id":2,"model_name":"m","model_version":1,"request_id":""}',
    '{\x0b"id":15,"model_name":"m","model_version":1}',
    '{"id":16,"timestamps":[{"name":"REQUEST_START","ns":-1}]}',
    '{"id":3,"timestamps":[{"name":"QUEUE_START","ns":7}]',
    '{"id":4,"timestamps":[{"name":"GRPC_SEND_END","ns":0}]}',
    '{"id":4,"timestamps":[{"name":"INFER_RESPONSE_COMPLETE","ns":123},{"name":"INFER_RESPONSE_COMPLETE","ns":99}]}',
    '{"id":4,"timestamps":[{"name":"MY_STEP_START","ns":7},{"name":"MY_STEP_END","ns":70}]}',
    '{"id":4,"timestamps":[{"name":"MY_STEP_END","ns":80}]}',
])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.lists(st.tuples(st.integers(0, 200), odd_objects), max_size=10),
       seed=st.integers(0, 50), cut=st.one_of(st.none(), st.integers(0, 4000)), window=st.sampled_from([2, 16384]))
def test_fuzz_odd_objects_and_truncation(extra: list[tuple[int, str]], seed: int, cut: int | None,
                                         window: int) -> None:
    objs = list(tracegen.traces(20, seed=seed, ensemble_every=4, streaming_every=3))
    for pos, o in sorted(extra, reverse=True):
        objs.insert(min(pos, len(objs)), o)
    data = ("[" + ",".join(objs) + "]").encode()
    if cut is not None:
        data = data[:cut]
    assert_same(data, window, salvage=cut is not None)


def test_file_api_matches_bytes_api() -> None:
    data = ("[" + ",".join(tracegen.traces(50)) + "]").encode()
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    try:
        with open(f.name, "rb") as fp:
            r = ReadResult()
            n = sum(len(b) for b in scanner.CFileScan(16384, lambda _: None).batches(fp, r))
        assert n == 50 and r.complete
    finally:
        os.unlink(f.name)
