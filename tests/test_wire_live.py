"""The daemon's side of the wire join as pure logic: turns held in a bounded window, joined once
across batches, what is lost when the bounds are exceeded."""

from __future__ import annotations

import numpy as np

from exporter.stages import COLUMN, anatomy
from exporter.wire.live import TURN_BYTES, DropCounter, TurnWindow
from exporter.wire.turns import Turn, records_of
from tests.test_wire_units import HTTP, PORTS, turn


def http_batch(*requests: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Stamps of HTTP traces (recv start, send end), with a plausible inside."""
    stamps = np.full((len(requests), len(COLUMN)), -1, dtype=np.int64)
    for i, (a, e) in enumerate(requests):
        for name, ns in {"HTTP_RECV_START": a, "HTTP_RECV_END": a + 1, "REQUEST_START": a + 2,
                         "REQUEST_END": e - 3, "HTTP_SEND_START": e - 2, "HTTP_SEND_END": e,
                         "HTTP_SEND_START#count": 1, "HTTP_SEND_END#count": 1}.items():
            stamps[i, COLUMN[name]] = ns
    return stamps, np.ones(len(requests), dtype=np.int8)


def observe(w: TurnWindow, *requests: tuple[int, int]):  # type: ignore[no-untyped-def]
    stamps, codes = http_batch(*requests)
    return w.observe(stamps, codes, anatomy(stamps, lambda _i: {}))


def seq_turn(k: int, sock: int = 1) -> Turn:
    base = 10_000 * k
    return turn(sock, k, base, base + 10, base + 500, base + 600)


def test_turns_wait_for_late_traces_and_join_once() -> None:
    w = TurnWindow(PORTS)
    for k in range(1, 4):
        w.add(seq_turn(k))
    first = observe(w, (10_015, 10_400), (20_015, 20_400))
    assert first.results["joined"] == 2 and len(w) == 1
    assert first.stages.tolist() == [0, 1, 2, 0, 1, 2] and first.ns.tolist() == [15, 200, 600] * 2
    assert first.socket_wait.tolist() == [15, 15] and first.ack_wait.tolist() == [200, 200]
    # the same requests again (a trace counted twice upstream would be): their turns are gone
    again = observe(w, (10_015, 10_400))
    assert again.results["joined"] == 0
    w.add(seq_turn(1))  # the kernel sends a turn again when more was written after its ACK
    assert len(w) == 1
    late = observe(w, (30_015, 30_400))
    assert late.results["joined"] == 1 and len(w) == 0


def test_a_later_record_of_a_turn_replaces_the_earlier() -> None:
    w = TurnWindow(PORTS)
    unacked = turn(1, 1, 0, 10, 500, 0)
    w.add(unacked)
    w.add(turn(1, 1, 0, 10, 500, 600))
    assert len(w) == 1 and observe(w, (15, 400)).results["joined"] == 1


def test_turns_older_than_the_hold_are_dropped_and_their_requests_not_joined() -> None:
    w = TurnWindow(PORTS, hold_seconds=1e-6)  # 1000 ns
    w.add(seq_turn(1))
    w.add(seq_turn(2))  # 10 us later: the first is past the hold
    assert len(w) == 1 and w.expired == 1
    assert observe(w, (10_015, 10_400)).results["joined"] == 0


def test_the_memory_bound_drops_the_oldest_first() -> None:
    w = TurnWindow(PORTS, max_bytes=2 * TURN_BYTES)
    for k in range(1, 5):
        w.add(seq_turn(k))
    assert len(w) == 2 and w.evicted == 2
    res = observe(w, (30_015, 30_400), (40_015, 40_400), (10_015, 10_400))
    assert res.results["joined"] == 2
    assert res.socket_wait.tolist()[:2] == [15, 15] and res.socket_wait[2] == -1


def test_turns_of_other_ports_are_not_held_against_http_requests() -> None:
    w = TurnWindow(PORTS)
    w.add(turn(1, 1, 0, 10, 500, 600, port=HTTP + 100))
    assert observe(w, (15, 400)).results["no_socket_event"] == 1


def test_records_read_in_batches_keep_the_last_of_each_turn_and_never_rejoin() -> None:
    """The daemon's path: ring buffer reads as records arrays, a turn re-sent within a batch or
    across batches, records of turns never read left out."""
    w = TurnWindow(PORTS)
    unacked, acked = turn(1, 1, 0, 10, 500, 0), turn(1, 1, 0, 10, 500, 600)
    never_read = turn(2, 1, 0, 0, 0, 0)
    w.add_records(records_of([unacked, never_read, acked]))
    assert len(w) == 1
    w.add_records(records_of([seq_turn(2), seq_turn(3)]))
    assert len(w) == 3
    res = observe(w, (15, 400), (20_015, 20_400))
    assert res.results["joined"] == 2 and res.ns.tolist() == [5, 200, 590, 15, 200, 600]
    w.add_records(records_of([acked, seq_turn(2)]))  # sent again after their join: ignored
    assert len(w) == 1
    assert observe(w, (15, 400), (20_015, 20_400), (30_015, 30_400)).results["joined"] == 1


def test_memory_bound_in_rows_of_held_turns() -> None:
    w = TurnWindow(PORTS, max_bytes=10 * TURN_BYTES)
    w.add_records(records_of([seq_turn(k) for k in range(1, 26)]))
    assert len(w) <= 10 and w.evicted == 25 - len(w)
    assert observe(w, (250_015, 250_400)).results["joined"] == 1  # the newest is kept


def test_kernel_drop_totals_become_error_count_deltas() -> None:
    counted: list[tuple[str, int]] = []
    drops = DropCounter(lambda reason, n: counted.append((reason, n)))
    drops.update({"ring_full": 0, "rate": 0, "sockets_full": 0})
    drops.update({"ring_full": 5, "rate": 0, "sockets_full": 1})
    drops.update({"ring_full": 12, "rate": 0, "sockets_full": 1})
    assert counted == [("ring_full", 5), ("sockets_full", 1), ("ring_full", 7)]
