"""Request outcomes (answered, cancelled, cache_hit, failed) and tensor records, as pure logic
over synthetic stamps and over real Triton 2.51 files (tests/samples/triton-2.51/outcomes)."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exporter.stages import OUTCOMES, SEGMENTS, STAGES, Outcome
from exporter.traces import records, scanner
from exporter.traces.aggregate import TraceAggregate
from exporter.traces.assembly import StreamState, Trace, TraceBatch
from exporter.traces.pipeline import file_batches
from exporter.traces.records import TENSOR_RECORD, ReadResult
from tests import reference
from tests.conftest import SAMPLES
from tests.otlp_payloads import post
from tests.test_otlp import SAMPLE as OTLP_SAMPLE
from tests.test_otlp import Receiver

OUTCOME_FILES = sorted((SAMPLES / "triton-2.51" / "outcomes").iterdir())
BOUNDS = tuple(10**i for i in range(3, 10))

UNARY = dict(REQUEST_START=100, QUEUE_START=110, COMPUTE_START=200, COMPUTE_INPUT_END=210,
             COMPUTE_OUTPUT_START=900, COMPUTE_END=960, INFER_RESPONSE_COMPLETE=950, REQUEST_END=1000)
GRPC = dict(GRPC_WAITREAD_START=1, GRPC_WAITREAD_END=50)
HTTP = dict(HTTP_RECV_START=50, HTTP_RECV_END=60)


def batch_of(*traces: dict[str, int], failed: tuple[int, ...] = ()) -> TraceBatch:
    out = []
    for i, stamps in enumerate(traces):
        t = Trace(i + 1, "m", "1", failed=i in failed)
        for name, ns in stamps.items():
            t.add(name, 10**9 + ns)
        out.append(t)
    return TraceBatch.from_traces(out)


def without(d: dict[str, int], *names: str) -> dict[str, int]:
    return {k: v for k, v in d.items() if k not in names and not any(k.startswith(n) for n in names)}


CASES: list[tuple[str, dict[str, int], Outcome]] = [
    ("grpc answered", {**GRPC, **UNARY, "GRPC_SEND_START": 1010, "GRPC_SEND_END": 1020}, Outcome.ANSWERED),
    ("http answered", {**HTTP, **UNARY, "HTTP_SEND_START": 1010, "HTTP_SEND_END": 1020}, Outcome.ANSWERED),
    # generate: HTTP sends not captured (0), the completion says a response went out
    ("http generate", {**HTTP, **UNARY}, Outcome.ANSWERED),
    ("grpc deadline", {**GRPC, **without(UNARY, "INFER_RESPONSE_COMPLETE")}, Outcome.CANCELLED),
    # a stream closed with cancel_requests=True: completed after the client went, never sent
    ("grpc stream closed", {**GRPC, **UNARY}, Outcome.CANCELLED),
    ("http client gone", {**HTTP, **without(UNARY, "INFER_RESPONSE_COMPLETE")}, Outcome.CANCELLED),
    ("cache hit", {**GRPC, **without(UNARY, "COMPUTE_"), "GRPC_SEND_START": 1010, "GRPC_SEND_END": 1020},
     Outcome.CACHE_HIT),
    ("ensemble step", without(UNARY, "INFER_RESPONSE_COMPLETE"), Outcome.ANSWERED),  # no frontend of its own
]


@pytest.mark.parametrize(("what", "stamps", "want"), CASES, ids=[c[0] for c in CASES])
def test_outcome_rules(what: str, stamps: dict[str, int], want: Outcome) -> None:
    an = batch_of(stamps).anatomy(np.arange(1))
    assert Outcome(int(an.outcome[0])) == want, what
    ref = {k: [v] for k, v in stamps.items()}
    assert reference.outcome({"ts": stamps, "all": ref}) == want.label, what


def test_the_source_saying_failed_wins() -> None:
    an = batch_of({**GRPC, **UNARY}, {**HTTP, **UNARY}, failed=(0, 1)).anatomy(np.arange(2))
    assert an.outcome.tolist() == [Outcome.FAILED, Outcome.FAILED]
    # a failed request got its (error) response: it keeps its response stages
    assert (an.durations[:, STAGES.index("end_to_end")] >= 0).all()


def test_cancelled_requests_have_no_response_stages_nor_timeline() -> None:
    answered = {**GRPC, **UNARY, "GRPC_SEND_START": 1010, "GRPC_SEND_END": 1020}
    cancelled = {**GRPC, **without(UNARY, "INFER_RESPONSE_COMPLETE")}
    an = batch_of(answered, cancelled).anatomy(np.arange(2))
    for stage in ("end_to_end", "first_response", "handler_overhead", "frontend_overhead"):
        assert an.durations[1, STAGES.index(stage)] == -1, stage
    assert an.durations[1, STAGES.index("compute")] == 760  # what did happen is still observed
    assert an.timed.tolist() == [True, False] and (an.segments[1] == 0).all()
    # the answered request's stages are what they are alone
    alone = batch_of(answered).anatomy(np.arange(1))
    assert (an.durations[0] == alone.durations[0]).all() and (an.segments[0] == alone.segments[0]).all()


def test_a_cache_hit_has_its_own_segment_not_the_handlers() -> None:
    hit = {**GRPC, "REQUEST_START": 100, "QUEUE_START": 110, "INFER_RESPONSE_COMPLETE": 140,
           "GRPC_SEND_START": 142, "REQUEST_END": 150, "GRPC_SEND_END": 400}
    an = batch_of(hit).anatomy(np.arange(1))
    seg = dict(zip(SEGMENTS, an.segments[0].tolist(), strict=True))
    assert seg["cache_hit"] == 142 - 110  # queued (the cache looked up) until the send began
    assert seg["handler_overhead"] == 10  # REQUEST_START -> QUEUE_START only
    assert an.durations[0, STAGES.index("handler_overhead")] == 10
    assert sum(seg.values()) == 400 - 50


def test_aggregate_counts_outcomes_keeps_cancelled_out_of_responses_and_persists() -> None:
    answered = {**GRPC, **UNARY, "GRPC_SEND_START": 1010, "GRPC_SEND_END": 1020}
    cancelled = {**GRPC, **without(UNARY, "INFER_RESPONSE_COMPLETE")}
    hit = {**GRPC, **without(UNARY, "COMPUTE_"), "GRPC_SEND_START": 1010, "GRPC_SEND_END": 1020}
    batch = batch_of(answered, cancelled, cancelled, hit, answered, failed=(4,))
    agg = TraceAggregate(BOUNDS)
    agg.observe_batch(batch, np.full(len(batch), 2, dtype=np.int8), ("pod-a",), 100)
    base = ("pod-a", "m", "1", "grpc")
    assert agg.outcomes == Counter({(*base, "answered"): 1, (*base, "cancelled"): 2, (*base, "cache_hit"): 1,
                                    (*base, "failed"): 1})
    assert agg.traces[base] == 5
    assert agg.responses[base].count == 3
    assert agg.histograms[(*base, "end_to_end")].count == 3
    assert agg.histograms[(*base, "compute")].count == 4  # the cancelled ones computed too
    again = TraceAggregate.from_json(agg.to_json(), BOUNDS)
    assert again.outcomes == agg.outcomes
    delta = TraceAggregate.from_delta_json(agg.to_delta_json(), BOUNDS, True)
    assert delta.outcomes == agg.outcomes
    assert agg.merged(delta).outcomes == agg.outcomes + agg.outcomes
    live = TraceAggregate(BOUNDS)
    live.absorb(delta)
    assert live.outcomes == agg.outcomes
    assert set(OUTCOMES) == {k[-1] for k in agg.outcomes}


def test_outcome_counts_refuse_what_is_not_a_count() -> None:
    good = TraceAggregate(BOUNDS).to_json()
    for bad in (-1, "3", 1.5, True):
        with pytest.raises(ValueError):
            TraceAggregate.from_json({**good, "outcomes": [[["m", "1", "grpc", "answered"], bad]]}, BOUNDS)


def scan(cls: Any, data: bytes) -> tuple[list[tuple[Any, ...]], Counter[str], bool]:
    rejected: Counter[str] = Counter()
    out: list[tuple[Any, ...]] = []
    result = ReadResult()
    for b in cls(64, lambda r: rejected.update([r]), batch=3).batches(io.BytesIO(data), result):
        for i in range(len(b)):
            t = b.trace(i)
            out.append((t.id, t.model, sorted(t.stamps.items())))
    return out, rejected, result.complete


def test_real_tensor_records_are_counted_apart_and_cost_no_trace() -> None:
    for path in OUTCOME_FILES:
        data = path.read_bytes()
        py = scan(scanner.PyFileScan, data)
        c = scan(scanner.CFileScan, data)
        assert c == py
        _, rejected, complete = py
        assert complete, path
        assert set(rejected) <= {TENSOR_RECORD}, (path, rejected)
    tensors = sum(scan(scanner.CFileScan, p.read_bytes())[1][TENSOR_RECORD] for p in OUTCOME_FILES)
    assert tensors == 4  # two inputs and two outputs of tensor_echo


def read_all(data: bytes, chunk: int) -> tuple[list[Any], Counter[str]]:
    rejected: Counter[str] = Counter()
    recs = [r for r in records.read_records(io.BytesIO(data), lambda r: rejected.update([r]), ReadResult(), 0, chunk)
            if not isinstance(r, records.ChunkEnd)]
    return recs, rejected


def test_tensor_records_split_by_any_read_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor record's data may hold '{"id":' and straddle any read boundary."""
    data = OUTCOME_FILES[-1].read_bytes()
    assert b'{"id":1}' in data  # inside a BYTES tensor's data
    want = scan(scanner.PyFileScan, data)
    want_records = read_all(data, records.CHUNK)
    assert want_records[1] == Counter({TENSOR_RECORD: 4})
    for cut in (1, 7, 64, 333):
        assert read_all(data, cut) == want_records, cut
        monkeypatch.setattr(scanner, "C_CHUNK", cut)
        assert scan(scanner.CFileScan, data) == want, cut


def test_real_outcomes_equal_the_plain_computation() -> None:
    want = reference.stage_stats([str(p) for p in OUTCOME_FILES])
    got = TraceAggregate(BOUNDS)
    rejected: Counter[str] = Counter()
    stream = StreamState()
    for p in OUTCOME_FILES:
        with open(p, "rb") as fp:
            for batch, codes in file_batches(fp, ReadResult(), stream, lambda r: rejected.update([r]), 0.0):
                got.observe_batch(batch, codes, (), 100)
    assert dict(got.outcomes) == want["outcomes"]
    assert Counter(k[-1] for k in want["outcomes"] for _ in range(want["outcomes"][k])) == Counter(
        answered=3, cache_hit=2, cancelled=3)
    for (m, v, p, stage), (count, total) in want["stages"].items():
        h = got.histograms[(m, v, p, stage)]
        assert (h.count, h.total) == (count, total), stage
    assert {k: v for k, v in got.timeline.items() if v} == want["timeline"]
    assert set(rejected) <= {TENSOR_RECORD} and not +got.rejected


@pytest.mark.parametrize("form", ["json", "protobuf"])
def test_otlp_spans_with_an_error_status_are_failed_requests(form: str, tmp_path: Path) -> None:
    """Triton 2.51 sets no span status (checked: a model raising in execute() posts status-less
    spans); a source that does mark the model's span ERROR gets its request counted failed."""
    body = json.loads(OTLP_SAMPLE.read_bytes())  # a gRPC stream and an HTTP generate_stream, real
    spans = [s for rs in body["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    grpc_root = next(s for s in spans if s["name"] == "InferRequest"
                     and any(e["name"].startswith("GRPC_") for e in s.get("events", [])))
    model_span = next(s for s in spans if s.get("parentSpanId") == grpc_root["spanId"])
    model_span["status"] = {"code": "STATUS_CODE_ERROR", "message": "execute() raised"}
    data = json.dumps(body).encode()
    if form == "protobuf":  # protobuf's JSON form has base64 ids where OTLP/JSON has hex
        for s in spans:
            for k in ("traceId", "spanId", "parentSpanId"):
                if s.get(k):
                    s[k] = base64.b64encode(bytes.fromhex(s[k])).decode()
        req = ExportTraceServiceRequest()
        json_format.Parse(json.dumps(body), req)
        data, ctype = req.SerializeToString(), "application/x-protobuf"
    else:
        ctype = "application/json"
    r = Receiver(tmp_path / "state")
    try:
        status, _ = post(r.url, data, ctype)
        assert status == 200
        assert dict(r.live.outcomes) == {("stream", "1", "grpc", "failed"): 1, ("stream", "1", "http", "answered"): 1}
    finally:
        r.close()
