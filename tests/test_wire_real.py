"""From the wire to the wire on a real Triton: `tcp-events --record` beside rolling traces, clients
stamping time.monotonic_ns() at send and receipt; every joined request must sit inside them.

Figures of the runs are printed (pytest -s shows them); docs/traces.md quotes them.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.demo.launcher import TritonServer
from exporter.wire.turns import latest, read_turns
from tests.triton_harness import EXPORTER, flush_until_traced
from tests.wire_driver import Recorder, http_clients, joined_requests

pytestmark = pytest.mark.ebpf

# The client's kernel acknowledges the response as its application reads it, or at the latest
# when its delayed-ACK timer fires (40 ms on Linux once a connection turns interactive); the
# ACK's arrival at the server can so follow the client's receipt. Measured here on loopback:
# median ~70 us, p99 < 1 ms, rare outliers of several ms on this shared 2-core machine
# (the client thread descheduled before its close() or next request carried the ACK).
ACK_AFTER_RECEIPT_NS = 50_000_000


def test_http_requests_join_their_socket_turns_exactly(triton_factory: Callable[..., TritonServer],
                                                       tmp_path: Path) -> None:
    triton = triton_factory(log_frequency=50)
    turns_file = tmp_path / "turns.jsonl"
    rec = Recorder(EXPORTER, turns_file, [triton.http_port, triton.grpc_port])
    try:
        sent = http_clients(triton, clients=4, per_client=40, keep_alive=True, prefix="k")
        sent += http_clients(triton, clients=4, per_client=15, keep_alive=False, prefix="n")
        files = flush_until_traced(triton, len(sent))
    finally:
        err = rec.stop()
    # each turn names the thread that read it: one of Triton's (the join pairs by read order only
    # the turns one thread read)
    tasks = {int(t) for t in os.listdir(f"/proc/{triton.pid}/task")}
    with turns_file.open() as fp:
        read = [t for t in latest(read_turns(fp)) if t.first_read_ns and t.lport == triton.http_port]
    assert read and all(t.reader in tasks for t in read), ({t.reader for t in read}, tasks)
    ports = {"http": frozenset({triton.http_port}), "grpc": frozenset({triton.grpc_port})}
    joined = [j for j in joined_requests(files, turns_file, ports) if j.protocol == "http"]
    by_id = {s.request_id: s for s in sent}
    results = Counter(j.result for j in joined)
    print(f"\nHTTP, 4 keep-alive + 4 new-connection clients: {dict(results)}; recorder: {err.strip()}")
    assert len(joined) == len(sent)
    assert results["joined"] >= 0.95 * len(joined), results

    late: list[int] = []
    for j in joined:
        if j.wire is None:
            continue
        s = by_id[j.request_id or ""]
        t = j.wire.turn
        assert t.rport == s.port, (s, t)  # the turn is on the client's own connection
        assert s.send_ns <= t.first_in_ns <= j.stamps["HTTP_RECV_START"], (s, t, j.stamps)
        assert j.stamps["HTTP_SEND_END"] <= t.acked_ns, (t, j.stamps)
        late.append(t.acked_ns - s.receipt_ns)
        assert t.acked_ns <= s.receipt_ns + ACK_AFTER_RECEIPT_NS, (t.acked_ns - s.receipt_ns, s, t)
        # the timeline from the wire to the wire adds up exactly
        assert j.wire.socket_wait_ns + (j.request.end_ns - j.request.arrival_ns) + j.wire.ack_wait_ns == j.wire.wire_ns
    late.sort()
    print(f"last byte acknowledged - client receipt: median {late[len(late) // 2] / 1e3:.0f} us, "
          f"p99 {late[len(late) * 99 // 100] / 1e3:.0f} us, max {late[-1] / 1e3:.0f} us over {len(late)} joined requests")

    out = subprocess.run([*EXPORTER, "summary", "--timeline", "--socket-turns", str(turns_file),
                          "--http-port", str(triton.http_port), "--grpc-port", str(triton.grpc_port),
                          *map(str, files)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "from the wire to the wire" in out.stdout and "socket_wait" in out.stdout, out.stdout
    print(out.stdout)


def test_grpc_joins_where_one_request_is_in_flight(triton_factory: Callable[..., TritonServer],
                                                   tmp_path: Path) -> None:
    from exporter.demo.launcher import MODEL, STREAM
    from tests.wire_driver import grpc_clients

    triton = triton_factory(log_frequency=50, models=(MODEL, STREAM))
    turns_file = tmp_path / "turns.jsonl"
    rec = Recorder(EXPORTER, turns_file, [triton.http_port, triton.grpc_port])
    try:
        n = grpc_clients(triton, 1, 60, "c1-")
        n += grpc_clients(triton, 8, 15, "c8-")
        n += grpc_clients(triton, 8, 15, "o8-", own_connection=True)
        n += grpc_clients(triton, 2, 15, "st-", stream_model=STREAM)
        n += grpc_clients(triton, 2, 15, "os-", stream_model=STREAM, own_connection=True)
        files = flush_until_traced(triton, n)
    finally:
        rec.stop()
    ports = {"http": frozenset({triton.http_port}), "grpc": frozenset({triton.grpc_port})}
    joined = [j for j in joined_requests(files, turns_file, ports) if j.protocol == "grpc"]
    assert len(joined) == n
    for prefix, what in (("c1-", "unary, concurrency 1"), ("c8-", "unary, concurrency 8, one shared connection"),
                         ("o8-", "unary, concurrency 8, a connection each"),
                         ("st-", "2 streams, one shared connection"), ("os-", "2 streams, a connection each")):
        mine = [j for j in joined if (j.request_id or "").startswith(prefix)]
        results = Counter(j.result for j in mine)
        print(f"\ngRPC {what}: " + ", ".join(f"{r} {results[r] / len(mine):.0%}"
                                              for r in ("joined", "ambiguous", "no_socket_event")))
        for j in mine:
            if j.wire is not None:
                t = j.wire.turn
                # the response turn may have begun with a control frame (a window update) before it
                assert t.first_in_ns <= j.stamps["GRPC_WAITREAD_END"] <= t.last_write_ns
                assert t.first_write_ns <= j.stamps["GRPC_SEND_END"]
        if prefix in ("o8-", "os-"):  # a client's requests all joined to its own connection, no other's
            conns = {(j.request_id or "").split("-")[1]: set() for j in mine}  # type: dict[str, set[tuple[int, int]]]
            for j in mine:
                if j.wire is not None:
                    conns[(j.request_id or "").split("-")[1]].add(j.wire.turn.connection)
            assert all(len(c) <= 1 for c in conns.values()), conns
            assert len(set().union(*conns.values())) == sum(len(c) for c in conns.values()), conns
        if prefix == "c1-":  # one request in flight on the one connection: these must join
            assert results["joined"] >= 0.9 * len(mine), results
        if prefix == "o8-":  # one request in flight on each connection: most join (72-98 % measured)
            assert results["joined"] >= 0.4 * len(mine), results
