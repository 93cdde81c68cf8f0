"""The socket join in the trace aggregator: joined stages, segments and join results are
committed with their batch, so a restart mid-stream counts nothing twice."""

from __future__ import annotations

from pathlib import Path

from exporter.stages import PROTOCOLS, protocol_codes
from exporter.traces.aggregator import TraceAggregator
from exporter.traces.assembly import Trace, TraceBatch
from exporter.traces.store import StateStore
from exporter.wire.live import TurnWindow, unjoinable
from exporter.wire.names import JOIN_RESULTS
from tests.test_wire_live import seq_turn
from tests.test_wire_units import PORTS

BOUNDS = tuple(10**k for k in range(2, 10))


def traces(ks: range) -> TraceBatch:
    """HTTP traces k whose stamps fall inside seq_turn(k); k % 5 == 0 is in-process (no frontend)."""
    out = []
    for k in ks:
        a, e = 10_000 * k + 15, 10_000 * k + 400
        stamps = {"REQUEST_START": a + 2, "QUEUE_START": a + 3, "COMPUTE_START": a + 4, "COMPUTE_END": e - 5,
                  "REQUEST_END": e - 3}
        if k % 5:
            stamps |= {"HTTP_RECV_START": a, "HTTP_RECV_END": a + 1, "HTTP_SEND_START": e - 2, "HTTP_SEND_END": e}
        t = Trace(k, "m", "1")
        for name, ns in stamps.items():
            t.add(name, ns)
        out.append(t)
    return TraceBatch.from_traces(out)


def aggregator(state: Path, window: TurnWindow) -> TraceAggregator:
    agg = TraceAggregator(StateStore(str(state), BOUNDS, lambda _r: None), [])
    agg.wire = window.observe
    return agg


def commit(agg: TraceAggregator, ks: range) -> None:
    batch = traces(ks)
    with agg.lock:
        change = agg.change()
        agg.observe(change, [(batch, protocol_codes(batch.stamps))], [])
        agg.commit(change)


def test_joins_are_committed_with_their_batch_and_survive_a_restart(tmp_path: Path) -> None:
    window = TurnWindow(PORTS)
    for k in range(1, 41):
        window.add(seq_turn(k))
    agg = aggregator(tmp_path, window)
    commit(agg, range(1, 21))
    live = agg.live
    assert sum(n for key, n in live.joins.items() if key[-1] == "joined") == 16
    assert sum(n for key, n in live.joins.items() if key[-1] == "unsupported") == 4
    # a restart mid-stream: the next daemon loads the counts and goes on; nothing counted twice
    agg = aggregator(tmp_path, window)
    commit(agg, range(21, 41))
    agg = aggregator(tmp_path, window)
    joins = agg.live.joins
    assert set(k[-1] for k in joins) <= set(JOIN_RESULTS)
    assert sum(joins.values()) == 40 == sum(agg.live.traces.values())
    assert sum(n for key, n in joins.items() if key[-1] == "joined") == 32
    wire = sum(h.count for key, h in agg.live.histograms.items() if key[-1] == "wire")
    assert wire == 32 == sum(h.count for key, h in agg.live.histograms.items() if key[-1] == "socket_wait")
    # joined requests' segments add up to wire: socket_wait + the end_to_end segments + ack_wait
    wire_ns = sum(h.total for key, h in agg.live.histograms.items() if key[-1] == "wire")
    tl = agg.live.timeline
    assert tl[("m", "1", "http", "socket_wait")] == 32 * 15
    assert tl[("m", "1", "http", "ack_wait")] == 32 * 200
    e2e_http = sum(n for key, n in tl.items() if key[2] == "http" and key[-1] not in ("socket_wait", "ack_wait"))
    assert tl[("m", "1", "http", "socket_wait")] + e2e_http + tl[("m", "1", "http", "ack_wait")] == wire_ns


def test_where_ebpf_cannot_run_every_request_is_unsupported(tmp_path: Path) -> None:
    agg = aggregator(tmp_path, TurnWindow(PORTS))
    agg.wire = unjoinable
    commit(agg, range(1, 11))
    assert dict(agg.live.joins) == {("m", "1", "http", "unsupported"): 8,
                                    ("m", "1", PROTOCOLS[0], "unsupported"): 2}
    assert not any(key[-1] == "wire" for key in agg.live.histograms)
