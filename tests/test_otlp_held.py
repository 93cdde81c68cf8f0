"""OTLP held spans and duplicates, in process: spans waiting for their root stay out of the
per-post commit and are bounded in bytes; a root that comes before its children gives them its
protocol; a span is known by its (trace id, span id)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from exporter.otlp.decode import Decoded
from exporter.otlp.decode import decode as decode_payload
from exporter.otlp.held import span_bytes
from exporter.otlp.ingest import OtlpIngest
from exporter.otlp.spans import spans_of
from exporter.traces.tailer import STATE_FILE, TailerSettings, TraceTailer
from tests.otlp_payloads import T0, _span, request_spans
from tests.otlp_payloads import export_request as protobuf_request


def export_request(spans: list[Any]) -> Decoded:
    """The spans of one request as the receiver's decoder hands them to the ingest."""
    return decode_payload(protobuf_request(spans).SerializeToString(), "application/x-protobuf", None)[0]

BOUNDS = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)


def _ingest(tmp_path: Path, **kw: float) -> tuple[TraceTailer, OtlpIngest]:
    t = TraceTailer(TailerSettings([], str(tmp_path / "state"), BOUNDS))
    t.aggregator.store.journal_min_bytes = 1 << 30  # every commit a journal record: their sizes are measured
    return t, OtlpIngest(t.aggregator, 60.0, **kw)  # type: ignore[arg-type]


def test_a_span_id_reused_by_another_trace_is_not_a_duplicate(tmp_path: Path) -> None:
    t, otlp = _ingest(tmp_path)
    first = request_spans(T0, request_id="a")
    second = request_spans(T0 + 10**6, request_id="b", protocol="grpc")
    for a, b in zip(first, second, strict=True):
        b.span_id = a.span_id  # unique only within their trace
        if a.parent_span_id:
            b.parent_span_id = a.parent_span_id
    assert otlp.ingest(export_request(first)) == (3, 0, "")
    assert otlp.ingest(export_request(second)) == (3, 0, "")
    assert otlp.ingest(export_request(second)) == (0, 0, "")  # the same trace resent: a duplicate
    assert dict(t.live.traces) == {("add_sub", "1", "http"): 1, ("add_sub", "1", "grpc"): 1}
    assert otlp.spans == {"accepted": 6, "duplicate": 3, "rejected": 0}


def test_a_root_posted_before_its_children_gives_them_its_protocol_when_they_come(tmp_path: Path) -> None:
    t, otlp = _ingest(tmp_path)
    spans = request_spans(T0, protocol="grpc")
    root, children = spans[-1], spans[:-1]
    assert not root.parent_span_id
    otlp.ingest(export_request([root]))
    assert dict(t.live.traces) == {} and not t.live.rejected  # the root waits for its children
    otlp.ingest(export_request(children))
    assert dict(t.live.traces) == {("add_sub", "1", "grpc"): 1}  # at once, with the root's protocol
    assert not otlp.holding.entries and not t.live.rejected
    # after a restart too: the waiting root is in the state
    _, otlp2 = _ingest(tmp_path)
    spans = request_spans(T0 + 10**6, protocol="http")
    otlp2.ingest(export_request([spans[-1]]))
    t3, otlp3 = _ingest(tmp_path)
    otlp3.ingest(export_request(spans[:-1]))
    assert dict(t3.live.traces) == {("add_sub", "1", "grpc"): 1, ("add_sub", "1", "http"): 1}


def test_a_root_whose_children_never_come_is_an_orphan_after_the_hold(tmp_path: Path) -> None:
    t = TraceTailer(TailerSettings([], None, BOUNDS))
    otlp = OtlpIngest(t.aggregator, 0.2)
    otlp.ingest(export_request([request_spans(T0)[-1]]))
    assert otlp.expire() == 0
    time.sleep(0.25)
    assert otlp.expire() == 1
    assert dict(t.live.rejected) == {"orphan_span": 1} and dict(t.live.traces) == {}


def test_waiting_spans_stay_out_of_each_posts_commit(tmp_path: Path) -> None:
    """40,000 spans wait for their roots: a post's journal record holds its own spans, not theirs,
    and a 1,000-span post takes about as long as with none waiting."""
    t, otlp = _ingest(tmp_path, max_held_bytes=64 << 20)  # room for all of them

    def post_complete(n: int, t0: int) -> float:
        req = export_request([s for r in range(n) for s in request_spans(t0 + r * 10**4, request_id=f"c{r}")])
        start = time.perf_counter()
        otlp.ingest(req)
        return time.perf_counter() - start

    with_none = min(post_complete(333, T0 + i * 10**8) for i in range(3))  # 999 spans each
    for batch in range(20):  # 20,000 requests without their root: 40,000 spans wait
        otlp.ingest(export_request([s for r in range(1000) for s in request_spans(T0 + (batch * 1000 + r) * 10**5)
                                    if s.parent_span_id]))
    assert sum(len(tree) for tree, _ in otlp.held.values()) == 40_000
    before = t.state_written_bytes["journal"]
    spans = request_spans(T0 + 5 * 10**9, request_id="small")
    otlp.ingest(export_request(spans))
    record = t.state_written_bytes["journal"] - before
    assert record < 4096, record  # the 3 spans' counts and keys, none of the 40,000 waiting
    with_waiting = min(post_complete(333, T0 + 10**10 + i * 10**8) for i in range(3))
    assert with_waiting < 3 * with_none + 0.05, (with_waiting, with_none)


def test_waiting_spans_are_bounded_in_bytes_one_huge_span_is_counted_at_once(tmp_path: Path) -> None:
    """A rootless span of 30,000 events is past a 1 MiB budget: counted as it is (protocol none),
    never held, never in the state."""
    t, otlp = _ingest(tmp_path, max_held_bytes=1 << 20)
    tid = os.urandom(16)
    events = [("REQUEST_START", T0), ("QUEUE_START", T0 + 1000), *[("COMPUTE_START", T0 + 2000 + i)
                                                                   for i in range(30_000)],
              ("REQUEST_END", T0 + 10**6)]
    big = _span(tid, "add_sub", os.urandom(8), events, {"triton.model_name": "add_sub", "triton.model_version": 1})
    [parsed] = spans_of(export_request([big]), lambda reason, n: None, T0)
    assert span_bytes(parsed) > 1 << 20
    otlp.ingest(export_request([big]))
    assert not otlp.held and otlp.holding.bytes == 0
    assert dict(t.live.traces) == {("add_sub", "1", "none"): 1}
    small = [s for s in request_spans(T0 + 10**9) if s.parent_span_id]
    otlp.ingest(export_request(small))
    assert len(otlp.held) == 1 and 0 < otlp.holding.bytes < 4096
    t.close()
    assert os.path.getsize(tmp_path / "state" / STATE_FILE) < 64 << 10
