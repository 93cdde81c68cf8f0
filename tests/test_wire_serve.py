"""The socket join in the trace aggregator: joined stages, segments and join results are
committed with their batch, so a restart mid-stream counts nothing twice; requests the join
cannot settle yet are held for later batches (in the state), and counted once."""

from __future__ import annotations

from pathlib import Path

from exporter.stages import PROTOCOLS, protocol_codes
from exporter.traces.aggregator import TraceAggregator
from exporter.traces.assembly import Trace, TraceBatch
from exporter.traces.store import StateStore
from exporter.wire.held import Joiner
from exporter.wire.live import TurnWindow
from exporter.wire.names import JOIN_RESULTS
from exporter.wire.turns import Turn
from tests.test_wire_live import seq_turn
from tests.test_wire_units import PORTS, turn

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
    agg.wire = Joiner(window.join)
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
    agg.wire = Joiner(None)
    commit(agg, range(1, 11))
    assert dict(agg.live.joins) == {("m", "1", "http", "unsupported"): 8,
                                    ("m", "1", PROTOCOLS[0], "unsupported"): 2}
    assert not any(key[-1] == "wire" for key in agg.live.histograms)


def http_traces(*requests: tuple[int, int, int]) -> TraceBatch:
    """HTTP traces (id, HTTP_RECV_START, HTTP_SEND_END) with a plausible inside."""
    out = []
    for k, a, e in requests:
        t = Trace(k, "m", "1")
        for name, ns in {"HTTP_RECV_START": a, "HTTP_RECV_END": a + 1, "REQUEST_START": a + 2, "QUEUE_START": a + 3,
                         "COMPUTE_START": a + 4, "COMPUTE_END": e - 5, "REQUEST_END": e - 3,
                         "HTTP_SEND_START": e - 2, "HTTP_SEND_END": e}.items():
            t.add(name, ns)
        out.append(t)
    return TraceBatch.from_traces(out)


def commit_traces(agg: TraceAggregator, *requests: tuple[int, int, int]) -> None:
    batch = http_traces(*requests)
    with agg.lock:
        change = agg.change()
        agg.observe(change, [(batch, protocol_codes(batch.stamps))], [])
        agg.commit(change)


def results(agg: TraceAggregator) -> dict[str, int]:
    return {key[-1]: n for key, n in agg.live.joins.items() if n}


# A fits both turns; B (a later batch) only the second: together they join, A alone cannot
A, B = (1, 10_015, 10_400), (2, 10_020, 10_480)
SHARED = [turn(1, 1, 10_000, 10_010, 10_450, 10_600), turn(2, 1, 10_005, 10_012, 10_500, 10_700)]


def window_of(turns: list[Turn]) -> TurnWindow:
    w = TurnWindow(PORTS)
    for t in turns:
        w.add(t)
    return w


def test_a_request_joins_with_a_later_batch_and_a_restart_in_between_counts_it_once(tmp_path: Path) -> None:
    window = window_of(SHARED)
    agg = aggregator(tmp_path, window)
    commit_traces(agg, A)
    assert results(agg) == {} and sum(agg.live.traces.values()) == 1  # traced, its join held
    assert list(agg.producer("wire")["held"]) == ["1@10015"]
    agg = aggregator(tmp_path, window)  # a restart: the held request is in the state
    commit_traces(agg, B)
    assert results(agg) == {"joined": 2}
    assert agg.producer("wire")["held"] == {}
    # the held request's exemplar carries its own trace id
    socket_wait = agg.live.exemplars[("m", "1", "http", "socket_wait")]
    assert {e.trace_id for e in socket_wait.values()} <= {"1", "2"} and socket_wait
    agg = aggregator(tmp_path, window)  # and again: nothing is counted twice
    assert agg.settle_wire() == 0
    commit_traces(agg, (3, 10**9, 10**9 + 400))  # far later, no turn: held itself, settles nothing else
    assert results(agg) == {"joined": 2}
    wire = [h for key, h in agg.live.histograms.items() if key[-1] == "wire"]
    assert sum(h.count for h in wire) == 2
    assert agg.live.timeline[("m", "1", "http", "socket_wait")] == 15 + 15


def test_held_requests_settle_by_trace_time_by_wall_time_and_by_count(tmp_path: Path) -> None:
    agg = aggregator(tmp_path, window_of(SHARED))
    commit_traces(agg, A)
    # traces of requests that ended SETTLE_NS after A: whatever was in flight with it is traced
    later = 10_400 + 20 * 10**9  # and no read in the 10 s before it: no_socket_event
    commit_traces(agg, (2, later - 100, later))
    assert results(agg) == {"ambiguous": 1}  # A, with the result it had; the new one is held
    assert agg.settle_wire() == 0  # not due yet
    assert isinstance(agg.wire, Joiner)
    agg.wire.hold_seconds = 0.0  # the wall clock's bound: no later trace came
    assert agg.settle_wire() == 1
    assert results(agg) == {"ambiguous": 1, "no_socket_event": 1}
    assert sum(results(agg).values()) == sum(agg.live.traces.values())
    # at most max_held: the oldest settles first
    agg = aggregator(tmp_path / "cap", window_of(SHARED))
    agg.wire = Joiner(window_of(SHARED).join, max_held=1)
    commit_traces(agg, A)
    commit_traces(agg, (5, 20_000, 20_400))
    assert results(agg) == {"ambiguous": 1} and len(agg.producer("wire")["held"]) == 1


def test_a_damaged_held_entry_is_dropped_and_the_rest_goes_on(tmp_path: Path) -> None:
    agg = aggregator(tmp_path, window_of(SHARED))
    commit_traces(agg, A)
    agg.state.producers["wire"]["held"]["junk"] = ["not", "a", "request"]
    commit_traces(agg, B)  # joins A with B; the junk entry leaves the state uncounted
    assert results(agg) == {"joined": 2} and agg.producer("wire")["held"] == {}
