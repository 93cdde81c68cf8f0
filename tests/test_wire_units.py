"""The wire join as pure logic: turns, candidates, the assignment, the timeline's sum; the turn
file format; BTF member offsets from a hand-built blob."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from exporter.stages import COLUMN, SEGMENTS, anatomy
from exporter.wire.btf import BtfError, kernel_offsets, member_offsets
from exporter.wire.join import JOIN_RESULTS, Request, assign, join, join_counts, wire_segments
from exporter.wire.requests import requests_of
from exporter.wire.turns import (
    RECORD_DTYPE,
    RECORD_SIZE,
    Turn,
    decode,
    decode_many,
    from_json,
    latest,
    read_turns,
    records_of,
)

HTTP, GRPC = 8000, 8001
PORTS = {"http": frozenset({HTTP}), "grpc": frozenset({GRPC})}


def turn(sock: int, n: int, first_in: int, read: int, write: int, acked: int, *, port: int = HTTP,
         last_read: int | None = None, last_write: int | None = None, born: int = 1, reader: int = 0) -> Turn:
    return Turn(sock, born, first_in, read, last_read if last_read is not None else read, write,
                last_write if last_write is not None else write, acked, 0, n, 100, 100, 2, port, 40000 + sock, 0,
                "127.0.0.1", "127.0.0.1", reader)


def http(arrival: int, end: int, read_end: int | None = None, send_start: int | None = None) -> Request:
    return Request("http", arrival, end, read_end if read_end is not None else arrival + 1,
                   send_start if send_start is not None else end - 2)


def results(reqs: list[Request], turns: list[Turn]) -> list[str]:
    return [r for r, _ in join(reqs, turns, PORTS)]


def test_keep_alive_turns_join_one_request_each_and_add_up_to_wire() -> None:
    turns = [turn(1, k, 1000 * k, 1000 * k + 10, 1000 * k + 500, 1000 * k + 600) for k in range(1, 4)]
    reqs = [http(1000 * k + 15, 1000 * k + 400) for k in range(1, 4)]
    out = join(reqs, turns, PORTS)
    assert [r for r, _ in out] == ["joined"] * 3
    for k, (_, w) in enumerate(out, start=1):
        assert w is not None and w.turn.turn == k
        assert (w.socket_wait_ns, w.ack_wait_ns, w.wire_ns) == (15, 200, 600)
        segments = [385] + [0] * (len(SEGMENTS) - 1)  # whatever Triton's own segments are, they sum to end_to_end
        assert sum(wire_segments(segments, w)) == w.wire_ns


def test_concurrent_connections_are_told_apart_by_elimination() -> None:
    # B read after A's arrival: A has one candidate; once A takes its turn, B has one left
    a, b = turn(1, 1, 0, 10, 900, 1000), turn(2, 1, 5, 20, 950, 1100)
    reqs = [http(15, 800, send_start=850), http(25, 900, send_start=900)]
    out = join(reqs, [a, b], PORTS)
    assert [w.turn.sock for _, w in out if w] == [1, 2]


def test_http_requests_sharing_turns_pair_in_read_order_only_where_one_thread_read_them() -> None:
    # two requests read 1 us apart and stamped after both reads: either pairing fits every stamp
    def two(reader_a: int, reader_b: int, arrivals: tuple[int, int]) -> list[tuple[str, int]]:
        a = turn(1, 1, 0, 10, 900, 1000, reader=reader_a)
        b = turn(2, 1, 0, 11, 900, 1000, reader=reader_b)
        out = join([http(arrivals[0], 800, send_start=850), http(arrivals[1], 800, send_start=850)], [a, b], PORTS)
        return [(r, w.turn.sock if w else 0) for r, w in out]

    # one thread handles what it read in that order: the first arrival is the first read
    assert two(7, 7, (13, 14)) == [("joined", 1), ("joined", 2)]
    assert two(7, 7, (14, 13)) == [("joined", 2), ("joined", 1)]
    # two threads: the one that read second can stamp first (seen once in CI on a real Triton,
    # a request joined to another client's connection): no guess; nor where the thread is unknown
    assert two(7, 8, (13, 14)) == [("ambiguous", 0), ("ambiguous", 0)]
    assert two(0, 0, (13, 14)) == [("ambiguous", 0), ("ambiguous", 0)]
    # a third request whose one candidate is its own still joins beside two ambiguous ones
    a, b = turn(1, 1, 0, 10, 900, 1000, reader=7), turn(2, 1, 0, 11, 900, 1000, reader=8)
    c = turn(3, 1, 995, 1000, 1900, 2000, reader=9)
    out = join([http(13, 800, send_start=850), http(14, 800, send_start=850), http(1005, 1800, send_start=1750)],
               [a, b, c], PORTS)
    assert [r for r, _ in out] == ["ambiguous", "ambiguous", "joined"]
    assert out[2][1] is not None and out[2][1].turn.sock == 3


def test_a_request_with_no_read_recorded_before_it_has_no_socket_event() -> None:
    old = turn(1, 1, 0, 10, 50, 60)
    late = 11 * 10**9  # more than LOOKBACK_NS after the last recorded read
    assert results([http(late, late + 500)], [old]) == ["no_socket_event"]
    assert results([http(10_000, 10_500)], [old]) == ["ambiguous"]  # a read shortly before: not its turn


def test_turn_whose_ack_precedes_the_send_end_is_not_an_http_candidate() -> None:
    early = turn(1, 1, 0, 10, 300, 350)
    assert results([http(15, 400)], [early]) == ["ambiguous"]  # under way, yet not its turn


def test_in_process_and_ensemble_children_are_unsupported_and_every_request_counted_once() -> None:
    reqs = [Request("none", 10, 20), http(15, 400), Request("grpc", 5, 10)]
    counts = join_counts(join(reqs, [turn(1, 1, 0, 10, 500, 600)], PORTS))
    assert set(counts) == set(JOIN_RESULTS) and sum(counts.values()) == 3
    assert counts["unsupported"] == 1 and counts["joined"] == 1


def test_grpc_exchange_spans_turns_split_by_control_frames() -> None:
    # request bytes in turn 3; a window update goes out, the client answers after the arrival
    # (turn 4 begins); the response is written in turn 4 within Triton's send span
    t3 = turn(1, 3, 100, 110, 120, 130, port=GRPC)
    t4 = turn(1, 4, 300, 310, 900, 1200, port=GRPC)
    req = Request("grpc", 200, 1000, -1, 850)
    ((result, w),) = join([req], [t3, t4], PORTS)
    assert result == "joined" and w is not None
    assert w.socket_wait_ns == 100 and w.ack_wait_ns == 200 and w.wire_ns == 1100
    # GRPC_SEND_END after the ACK (gRPC's completion queue): ack_wait 0, the parts still add up
    ((_, w2),) = join([Request("grpc", 200, 1300, -1, 850)], [t3, t4], PORTS)
    assert w2 is not None and w2.ack_wait_ns == 0 and w2.wire_ns == 100 + 1100


def test_grpc_response_in_a_turn_begun_by_a_control_frame_or_of_writes_only() -> None:
    # turn 3 reads the request, writes a window update before the arrival and the response after
    t3 = turn(1, 3, 100, 110, 120, 1000, port=GRPC, last_write=900)
    req = Request("grpc", 200, 950, -1, 850)
    ((result, w),) = join([req], [t3], PORTS)
    assert result == "joined" and w is not None and w.ack_wait_ns == 50
    # the response begins a turn of writes only, whose ACK rode on the client's next frames (turn 5)
    t4 = turn(1, 4, 0, 0, 880, 0, port=GRPC, last_write=900)
    t5 = turn(1, 5, 990, 995, 0, 0, port=GRPC)
    ((result, w),) = join([req], [turn(1, 3, 100, 110, 120, 130, port=GRPC), t4, t5], PORTS)
    assert result == "joined" and w is not None and w.ack_wait_ns == 990 - 950  # an upper bound
    # without a next turn its ACK is unknown: not joined
    assert results([req], [turn(1, 3, 100, 110, 120, 130, port=GRPC), t4]) == ["ambiguous"]


def test_grpc_connections_each_with_one_request_in_flight_join_by_their_response_turns() -> None:
    # two connections, a request each at once; B's turn 2 wrote within A's send span too, but that
    # response is B's own (its only candidate): A is left its own connection
    a1 = turn(1, 1, 100, 110, 880, 1000, port=GRPC)
    b1 = turn(2, 1, 105, 115, 870, 990, port=GRPC)
    a, b = Request("grpc", 200, 900, -1, 860), Request("grpc", 210, 875, -1, 865)
    assert results([a, b], [a1, b1]) == ["joined", "joined"]
    # a third request in flight with no candidate at all could have been on either: no guess
    c = Request("grpc", 220, 890, -1, 2000)
    assert results([a, b, c], [a1, b1]) == ["ambiguous"] * 3


def test_grpc_requests_in_flight_together_on_one_connection_are_ambiguous() -> None:
    t1 = turn(1, 1, 100, 110, 500, 600, port=GRPC)
    t2 = turn(1, 2, 520, 530, 900, 1000, port=GRPC)
    reqs = [Request("grpc", 120, 800, -1, 450), Request("grpc", 540, 950, -1, 850)]
    assert results(reqs, [t1, t2]) == ["ambiguous", "ambiguous"]
    # one after the other on the connection: both join
    seq = [Request("grpc", 120, 510, -1, 450), Request("grpc", 540, 950, -1, 850)]
    assert results(seq, [t1, t2]) == ["joined", "joined"]


def test_assign_leaves_a_turn_claimed_by_two_requests_to_neither() -> None:
    assert assign([[0], [0], [1]]) == {2: 1}
    assert assign([[0, 1], [1]]) == {1: 1, 0: 0}


def test_requests_of_reads_arrival_end_and_sends_from_a_stamps_matrix() -> None:
    stamps = np.full((1, len(COLUMN)), -1, dtype=np.int64)
    for name, ns in {"REQUEST_START": 120, "REQUEST_END": 300, "HTTP_RECV_START": 100, "HTTP_RECV_END": 110,
                     "HTTP_SEND_START": 310, "HTTP_SEND_END": 330, "HTTP_SEND_START#count": 1,
                     "HTTP_SEND_END#count": 1}.items():
        stamps[0, COLUMN[name]] = ns
    an = anatomy(stamps, lambda _i: {})
    (req,) = requests_of(stamps, np.array([1], dtype=np.int8), an)
    assert req == Request("http", 100, 330, 110, 310)
    assert int(an.segments[0].sum()) == req.end_ns - req.arrival_ns


def test_turn_records_decode_and_round_trip_through_json_lines() -> None:
    raw = struct.pack("<9Q3I3HB3x16s16s2xI4x", 7, 1, 2, 3, 4, 5, 6, 8, 9, 1, 10, 20, 2, 8000, 5555, 1,
                      bytes([127, 0, 0, 1]) + bytes(12), bytes([10, 0, 0, 2]) + bytes(12), 4321)
    assert len(raw) == RECORD_SIZE == 136
    t = decode(raw)
    assert (t.sock, t.acked_ns, t.lport, t.rport, t.laddr, t.raddr, t.reader) == (
        7, 8, 8000, 5555, "127.0.0.1", "10.0.0.2", 4321)
    (same,) = decode_many(np.frombuffer(raw, dtype=RECORD_DTYPE))
    assert same == t and decode_many(records_of([t])) == [t]
    # a line of an older version has no reader: read as unknown (0), never paired by read order
    older = {k: v for k, v in json.loads(t.to_json()).items() if k != "reader"}
    assert from_json(older) == Turn(**{**older, "reader": 0})
    assert from_json({**older, "reader": -1}) is None
    later = Turn(**{**json.loads(t.to_json()), "acked_ns": 99})
    rejected: dict[str, int] = {}
    text = t.to_json() + "\nnot json\n{\"sock\": 1}\n\n" + later.to_json() + "\n"
    turns = list(read_turns(io.StringIO(text), rejected))
    assert turns == [t, later] and rejected == {"bad_turn_line": 2}
    assert latest(turns) == [later]  # the last record of a turn wins


def _btf(types: bytes, strings: bytes) -> bytes:
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) + types + strings


def test_btf_member_offsets_flatten_anonymous_members() -> None:
    strings = b"\0int\0sk_buff\0len\0data\0tcp_sock\0write_seq\0"
    off = {n: strings.index(n.encode() + b"\0") for n in ("int", "sk_buff", "len", "data", "tcp_sock", "write_seq")}
    types = struct.pack("<IIII", off["int"], 1 << 24, 4, 32)  # 1: int
    types += struct.pack("<III", 0, (5 << 24) | 1, 8) + struct.pack("<III", off["data"], 1, 64)  # 2: anon union
    types += struct.pack("<III", off["sk_buff"], (4 << 24) | 2, 24)  # 3: struct sk_buff
    types += struct.pack("<III", off["len"], 1, 32) + struct.pack("<III", 0, 2, 64)
    types += struct.pack("<III", off["tcp_sock"], (4 << 24) | 1, 8)  # 4: struct tcp_sock
    types += struct.pack("<III", off["write_seq"], 1, 32)
    blob = _btf(types, strings)
    found = member_offsets({"sk_buff": ("len", "data"), "tcp_sock": ("write_seq",)}, blob)
    assert found == {("sk_buff", "len"): 4, ("sk_buff", "data"): 16, ("tcp_sock", "write_seq"): 4}
    with pytest.raises(BtfError, match=r"tcp_sock\.snd_una"):
        member_offsets({"tcp_sock": ("snd_una",)}, blob)


def test_no_btf_means_the_headers_layout(tmp_path: Path) -> None:
    assert kernel_offsets({"tcp_sock": ("write_seq",)}, tmp_path / "missing") is None
    (tmp_path / "junk").write_bytes(b"\0" * 64)
    assert kernel_offsets({"tcp_sock": ("write_seq",)}, tmp_path / "junk") is None
