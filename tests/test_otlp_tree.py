"""The OTLP receiver's compiled path (exporter/otlp/_tree.c: span checks, duplicates, whole trees
-> trace rows) counts exactly what the Python path counts: the same requests through both, into
two aggregators, expose the same histograms, counters, rejects by reason, held spans and
remembered keys; on Triton's real body, the Triton-shaped payloads and fuzzed trees split across
requests."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.otlp import ingest as ingest_module
from exporter.otlp import whole
from exporter.otlp.decode import Decoded, SpanRecord, decode
from exporter.otlp.ingest import OtlpIngest
from exporter.traces.tailer import TailerSettings, TraceTailer
from tests.otlp_payloads import BOOT, T0, export_request, request_spans

BOUNDS = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
SAMPLE = Path(__file__).parent / "samples" / "otlp" / "triton-2.51-stream.json"
TREE, STALE = whole.BUILT, whole.STALE


def test_the_compiled_path_is_built_and_fresh() -> None:
    # setup.sh builds it with the checkout; a stale build would silently leave the Python path
    assert TREE is not None and not STALE, STALE
    assert whole.TREE is not None or os.environ.get("INFPROF_PURE_PYTHON_OTLP")


def test_its_span_keys_are_the_persisted_blake2b_keys() -> None:
    """Keys remembered by any earlier version (state files) still catch a resent span."""
    assert TREE is not None
    for _ in range(200):
        tid, sid = os.urandom(16), os.urandom(8)
        assert TREE.key(tid, sid) == hashlib.blake2b(tid + sid, digest_size=8).digest()


def _exposed(t: TraceTailer, ingest: OtlpIngest, replies: list[Any]) -> dict[str, Any]:
    live = t.live

    def hist(h: dict[Any, Any]) -> dict[Any, Any]:
        return {k: (v.count, v.total, list(v.counts)) for k, v in h.items()}

    return {
        "replies": replies, "spans": dict(ingest.spans),
        "histograms": hist(live.histograms), "responses": hist(live.responses),
        "traces": dict(live.traces), "outcomes": dict(live.outcomes), "timeline": dict(live.timeline),
        "rejected": {k: v for k, v in live.rejected.items() if v}, "custom": sorted(live.custom_stages),
        "exemplar buckets": {k: sorted(v) for k, v in live.exemplars.items()},
        "held": {tid: ({sid: s.to_json() for sid, s in e.tree.items()}, e.root_only)
                 for tid, e in ingest.holding.entries.items()},
        "seen": list(ingest.seen),
    }


def _run(requests: list[Decoded], fast: bool, monkeypatch: pytest.MonkeyPatch,
         legacy: frozenset[bytes] = frozenset()) -> dict[str, Any]:
    rows = [0]
    split = whole.split

    def counted(*a: Any) -> whole.Split | None:
        out = split(*a)
        rows[0] += len(out.rows[0]) if out is not None and out.rows is not None else 0
        return out

    with monkeypatch.context() as m:
        m.setattr(whole, "TREE", TREE if fast else None)
        m.setattr(ingest_module, "split", counted)
        t = TraceTailer(TailerSettings([], None, BOUNDS))
        ingest = OtlpIngest(t.aggregator, 60.0)
        ingest.legacy = set(legacy)  # span ids alone, as a state of an earlier version remembered them
        replies = [ingest.ingest(r) for r in requests]
        ingest.holding.hold_seconds = 0  # what still waits is counted as it is (protocol none, orphans)
        replies.append(ingest.expire())
        out = _exposed(t, ingest, replies)
    assert fast or not rows[0]
    out["fast rows"] = rows[0]
    # every exemplar names a request that was posted
    posted = {r.trace_id.hex() for req in requests for r in req}
    assert all(e.trace_id in posted for per in t.live.exemplars.values() for e in per.values())
    return out


def _same(requests: list[Decoded], monkeypatch: pytest.MonkeyPatch,
          legacy: frozenset[bytes] = frozenset()) -> dict[str, Any]:
    assert TREE is not None
    fast, slow = _run(requests, True, monkeypatch, legacy), _run(requests, False, monkeypatch, legacy)
    for k in slow:
        if k != "fast rows":
            assert fast[k] == slow[k], k
    return fast


def _records(spans: list[Any]) -> Decoded:
    return decode(export_request(spans).SerializeToString(), "application/x-protobuf", None)[0]


def test_triton_s_real_body_counts_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    records = decode(SAMPLE.read_bytes(), "application/json", None)[0]
    out = _same([records], monkeypatch)
    assert sum(out["traces"].values()) >= 2 and out["spans"]["accepted"] == len(records)
    assert out["fast rows"] == sum(out["traces"].values())  # the real shape: every tree whole
    out = _same([records[::2], records[1::2], records], monkeypatch)  # split, then resent whole
    assert out["spans"]["duplicate"] == len(records)
    out = _same([records[::-1]], monkeypatch)  # the root first
    assert sum(out["traces"].values()) >= 2
    # span ids an earlier version remembered (its state's `seen` section) still catch a resent span
    out = _same([records], monkeypatch, frozenset({records[0].span_id, records[-1].span_id}))
    assert out["spans"]["duplicate"] == 2


def _triton_shapes() -> list[Any]:
    return [
        *request_spans(T0, protocol="http", request_id="a"),
        *request_spans(T0 + 10**6, protocol="grpc", request_id="b"),
        *request_spans(T0 + 2 * 10**6, protocol="http", ensemble="add_sub_ensemble", request_id="c"),
        *request_spans(T0 + 3 * 10**6, protocol="grpc", ensemble="ens", request_id="c2"),
        *request_spans(T0 + 4 * 10**6, model="stream", protocol="grpc", responses=4, request_id="d"),
        *request_spans(T0 + 5 * 10**6, model="stream", protocol="http", responses=3, boot_sends=True),
        *request_spans(T0 + 6 * 10**6, model="plain", protocol="none"),
    ]


@pytest.mark.parametrize("split", ["whole", "roots apart", "each span", "halves", "resent"])
def test_triton_shaped_payloads_count_the_same(split: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spans = _triton_shapes()
    if split == "whole":
        posts = [spans]
    elif split == "roots apart":
        posts = [[s for s in spans if s.parent_span_id], [s for s in spans if not s.parent_span_id]]
    elif split == "each span":
        posts = [[s] for s in spans]
    elif split == "halves":
        posts = [spans[: len(spans) // 2], spans[len(spans) // 2:]]
    else:
        posts = [spans[:5], spans, spans[3:]]
    out = _same([_records(p) for p in posts], monkeypatch)
    assert sum(out["traces"].values()) == 7 + 2  # the two ensembles count their step too
    # rows built in C: those of trees a post brings whole, none held (resent: the second request's
    # first two spans were held)
    want = {"whole": 9, "resent": 8, "roots apart": 0, "each span": 0}.get(split, out["fast rows"])
    assert out["fast rows"] == want


# --- fuzzed trees -----------------------------------------------------------------------------

MODEL_EVENTS = ("REQUEST_START", "QUEUE_START", "REQUEST_END", "CUSTOM_ACTIVITY")
COMPUTE_EVENTS = ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END", "MY_STEP_START",
                  "MY_STEP_END", "NOT_A_STAMP")
FRONT_EVENTS = ("HTTP_RECV_START", "HTTP_RECV_END", "HTTP_SEND_START", "HTTP_SEND_END", "GRPC_WAITREAD_START",
                "GRPC_WAITREAD_END", "GRPC_SEND_START", "GRPC_SEND_END", "INFER_RESPONSE_COMPLETE", "WEIRD",
                "X_END")


def _events(rng: random.Random, names: tuple[str, ...], t0: int) -> list[tuple[str, int]]:
    out = [(rng.choice(names), t0 + rng.randrange(0, 10**6)) for _ in range(rng.randrange(0, 9))]
    if names is FRONT_EVENTS and rng.random() < 0.5:  # a stream: events repeated once per response
        sends = rng.choice((("HTTP_SEND_START", "HTTP_SEND_END"), ("GRPC_SEND_START", "GRPC_SEND_END")))
        for _ in range(rng.randrange(1, 6)):
            t = t0 + rng.randrange(0, 10**6)
            out += [("INFER_RESPONSE_COMPLETE", t), (sends[0], t + 10), (sends[1], t + rng.randrange(10, 10**4))]
    if rng.random() < 0.1:
        out.append(("HTTP_SEND_START", BOOT))  # a send Triton did not capture: before the receive
    if rng.random() < 0.03:
        out.append(("REQUEST_START", 5))  # not a wall clock: implausible_time
    return out


def _span_id(rng: random.Random) -> bytes:
    r = rng.random()
    return bytes(8) if r < 0.02 else rng.randbytes(7) if r < 0.04 else rng.randbytes(8)


def _tree(rng: random.Random, t0: int) -> list[SpanRecord]:
    """One OTel trace: a root (maybe), a model span with ensemble steps to depth 1-3, compute spans."""
    tid = bytes(16) if rng.random() < 0.02 else rng.randbytes(16)
    out: list[SpanRecord] = []
    root = _span_id(rng)

    def status() -> int:
        return rng.choice((0, 0, 0, 1, 2))

    def model(parent: bytes, depth: int) -> None:
        sid = _span_id(rng)
        if rng.random() < 0.02:
            parent = sid  # its own parent: a loop no tree has, counted (not followed) all the same
        attrs = {"triton.model_name": rng.choice(("m", "ens", "x" * 300, "")), "triton.model_version": "1",
                 "triton.request_id": rng.choice(("", "r1", "r2"))}
        if rng.random() < 0.05:
            del attrs["triton.model_version"]
        if rng.random() < 0.3:
            attrs["triton.model_name"] = "m"
        out.append(SpanRecord(tid, sid, parent, attrs["triton.model_name"], attrs, _events(rng, MODEL_EVENTS, t0),
                              status()))
        if rng.random() < 0.8:
            out.append(SpanRecord(tid, rng.randbytes(8), sid, "compute", {}, _events(rng, COMPUTE_EVENTS, t0),
                                  status()))
        for _ in range(rng.randrange(0, 3) if depth < 3 else 0):
            model(sid, depth + 1)

    model(root if rng.random() < 0.9 else rng.randbytes(8), 1)
    if rng.random() < 0.85:
        out.append(SpanRecord(tid, root, b"", "InferRequest", {}, _events(rng, FRONT_EVENTS, t0), status()))
    if rng.random() < 0.05:
        out.append(SpanRecord(tid, rng.randbytes(8), b"", "InferRequest", {}, [], 0))  # a root without children
    if rng.random() < 0.05:
        out.append(SpanRecord(tid, rng.randbytes(8), rng.randbytes(8), "compute", {}, [], 0))  # an orphan
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(rng=st.randoms(use_true_random=False), trees=st.integers(1, 12), posts=st.integers(1, 4))
def test_fuzzed_trees_split_across_requests_count_the_same(rng: random.Random, trees: int, posts: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    spans = [s for i in range(trees) for s in _tree(rng, T0 + i * 10**7)]
    if rng.random() < 0.5:  # Triton's order: children first, the root last; else any
        rng.shuffle(spans)
    spans += rng.sample(spans, min(len(spans), rng.randrange(0, 3)))  # resent spans: duplicates
    cuts = sorted(rng.randrange(0, len(spans) + 1) for _ in range(posts - 1))
    requests = [spans[a:b] for a, b in zip([0, *cuts], [*cuts, len(spans)], strict=True)]
    _same(requests, monkeypatch)


def test_check_names_the_path_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    assert whole.path_name().startswith("C (compiled _tree") == (whole.TREE is not None)
    monkeypatch.setattr(whole, "TREE", None)
    assert whole.path_name().startswith("pure Python (INFPROF_PURE_PYTHON_OTLP is set")
    monkeypatch.setattr(whole, "BUILT", None)
    monkeypatch.setattr(whole, "STALE", "the compiled _tree.so is older than _tree.c; rebuild it")
    assert "older than _tree.c" in whole.path_name()


@pytest.mark.parametrize("levels", [16, 17, 20])
def test_a_chain_of_ensembles_deeper_than_the_order_bound_counts_the_same(levels: int,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    tid, root = os.urandom(16), os.urandom(8)
    spans = [SpanRecord(tid, root, b"", "InferRequest", {}, [("GRPC_WAITREAD_END", T0)], 0)]
    parent = root
    for depth in range(levels):  # each step a child of the last: tree_traces orders 16 levels
        sid = os.urandom(8)
        spans.append(SpanRecord(tid, sid, parent, f"m{depth}", {"triton.model_name": f"m{depth}",
                                "triton.model_version": "1"},
                                [("REQUEST_START", T0 + depth), ("REQUEST_END", T0 + 10**6 - depth)], 0))
        parent = sid
    out = _same([spans[::-1]], monkeypatch)
    assert sum(out["traces"].values()) == levels
    assert out["fast rows"] == (levels if levels <= 16 else 0)  # deeper: the Python path orders it
    assert {k[2] for k in out["traces"]} == {"grpc"}
