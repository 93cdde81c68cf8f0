"""The case Triton's trace cannot see: its HTTP frontend, not the model, is the bottleneck.

A real Triton with one HTTP thread (`--http-thread-count 1`) and a trivial model (add_sub),
16 keep-alive clients sending large request bodies (the request's `parameters` carry
--body-kb of padding that the frontend must read and parse). Requests wait in their
sockets for the one thread; Triton's trace starts at HTTP_RECV_START and does not see it.
`tcp-events --record` runs beside it, and every traced request is joined to its socket turn.

Printed per thread count: the join shares; what the clients saw (send -> receipt), what
Triton's trace says (HTTP_RECV_START -> HTTP_SEND_END, http_infer), their gap, and the
joined stages socket_wait, ack_wait and wire: socket_wait should account for the gap.

    sudo .venv/bin/python bench/wire_frontend.py [--clients 16] [--requests 40] [--body-kb 512] [--threads 1,8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.demo.launcher import (  # noqa: E402
    MODEL,
    TritonServer,
    free_port,
)
from tests.triton_harness import EXPORTER, ExporterProcess, flush_until_traced, start_triton  # noqa: E402
from tests.wire_driver import Recorder, Sent, http_clients, timed_infer  # noqa: E402
from tests.wire_driver import joined_requests as joined_of  # noqa: E402


def padded_body(kb: int) -> object:
    pad = "x" * (kb * 1024)

    def body(rid: str) -> bytes:
        data = [1.0] * 4
        return json.dumps({"id": rid, "parameters": {"pad": pad}, "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": data},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": data}]}).encode()
    return body


def quick_infer(conn: http.client.HTTPConnection, rid: str, payload: bytes) -> Sent:
    """timed_infer, with quick ACKs asked for once the request is sent (sending data can put the
    kernel back into delayed-ACK mode), so the response is acknowledged as it arrives."""
    t0 = time.monotonic_ns()
    conn.request("POST", f"/v2/models/{MODEL}/infer", payload)
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    resp = conn.getresponse()
    resp.read()
    t1 = time.monotonic_ns()
    assert resp.status == 200, resp.status
    return Sent(rid, conn.sock.getsockname()[1], t0, t1)


def client_process(args: tuple[int, int, str, int, int, bool]) -> list[Sent]:
    """One client in a process of its own (no GIL shared with the other clients); `quickack`:
    its kernel acknowledges each response at once rather than delaying the ACK."""
    port, requests, prefix, body_kb, c, quickack = args
    body = padded_body(body_kb)
    # every body built first: the client sends its next request as soon as it has read a response,
    # and its kernel's ACK of that response rides on it (no delayed ACK in ack_wait)
    payloads = [(f"{prefix}{c}-{k}", body(f"{prefix}{c}-{k}")) for k in range(requests)]  # type: ignore[operator]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.connect()
    out: list[Sent] = []
    for rid, payload in payloads:
        out.append(quick_infer(conn, rid, payload) if quickack else timed_infer(conn, MODEL, rid, payload))
    conn.close()
    return out


def ms(values: list[float]) -> str:
    values = sorted(values)
    return (f"mean {statistics.fmean(values) / 1e6:7.2f}  p50 {values[len(values) // 2] / 1e6:7.2f}  "
            f"p99 {values[len(values) * 99 // 100] / 1e6:7.2f} ms")


PANEL = "Waiting for a frontend thread"


def panel_expr(legend: str) -> str:
    """The stage timeline dashboard's frontend-wait query of `legend`, for add_sub over any
    job, instance, pod, version and protocol, averaged over the whole run."""
    dash = json.loads((ROOT / "grafana" / "dashboards" / "inference-stage-timeline.json").read_text())
    panels = [p for row in dash["panels"] for p in [row, *row.get("panels", [])]]
    (panel,) = [p for p in panels if p.get("title", "").startswith(PANEL)]
    (expr,) = [t["expr"] for t in panel["targets"] if t.get("legendFormat") == legend]
    expr = expr.replace('"$model"', f'"{MODEL}"').replace("$__rate_interval", "10m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


class Dashboard:
    """`serve --wire-join on` over the run's trace files and a Prometheus scraping it each second:
    what the dashboard's frontend-wait panel shows."""

    def __init__(self, triton: TritonServer, workdir: Path) -> None:
        from tests.test_dashboards_e2e import Prometheus, prometheus_config

        port = free_port()
        workdir.mkdir()
        self.exporter = ExporterProcess([
            "--trace-file", str(triton.trace_file), "--state-dir", str(workdir / "state"),
            "--listen", f"127.0.0.1:{port}", "--trace-poll-seconds", "0.2", "--ebpf", "on",
            "--ebpf-port", str(triton.http_port), "--wire-join", "on", "--wire-http-port", str(triton.http_port)],
            workdir, port)
        self.prometheus: Any = None
        self.exporter.wait_ready()
        deadline = time.monotonic() + 120
        while "socket join on" not in self.exporter.log():
            assert "socket join off" not in self.exporter.log() and time.monotonic() < deadline, self.exporter.log()
            time.sleep(0.2)
        self.prometheus = Prometheus(prometheus_config(workdir, f"127.0.0.1:{port}"), workdir)

    def show(self, joined: int) -> None:
        self.exporter.wait_for(lambda m: m.total("inference_profiler_socket_joins_total", result="joined") >= joined,
                               timeout=60)
        time.sleep(4)  # scraped a few times since
        for legend in ("socket wait", "http recv", "queue", "ack wait"):
            res = self.prometheus.api("query", query=panel_expr(legend))["result"]
            v = ", ".join(f"{float(r['value'][1]) * 1e3:.2f}" for r in res) or "no data"
            print(f"  dashboard panel '{PANEL}', {legend:11s} (mean over the run, Prometheus): {v} ms")

    def stop(self) -> None:
        for p in (self.prometheus, self.exporter):
            if p is not None:
                p.stop()


def run(threads: int, clients: int, requests: int, body_kb: int, workdir: Path, processes: bool,
        quickack: bool, dashboard: bool) -> None:
    triton = start_triton(workdir / f"t{threads}", log_frequency=100, models=(MODEL,),
                          extra_args=["--http-thread-count", str(threads)])
    turns_file = workdir / f"turns{threads}.jsonl"
    shown = None
    try:
        if dashboard:
            shown = Dashboard(triton, workdir / f"d{threads}")
        rec = Recorder(EXPORTER, turns_file, [triton.http_port])
        try:
            http_clients(triton, 2, 5, keep_alive=True, prefix="warm")
            if processes:
                with ProcessPoolExecutor(clients) as pool:
                    sent = [x for part in pool.map(client_process, [(triton.http_port, requests, "b", body_kb, c, quickack)
                                                                  for c in range(clients)]) for x in part]
            else:
                sent = http_clients(triton, clients, requests, keep_alive=True, prefix="b",
                                    body_of=padded_body(body_kb))  # type: ignore[arg-type]
            files = flush_until_traced(triton, len(sent) + 10, timeout=60)
        finally:
            rec.stop()
        if shown is not None:
            shown.show(len(sent))
    finally:
        if shown is not None:
            shown.stop()
        triton.stop()
    by_id = {s.request_id: s for s in sent}
    joined = [j for j in joined_of(files, turns_file, {"http": frozenset({triton.http_port})})
              if (j.request_id or "").startswith("b")]
    results = Counter(j.result for j in joined)
    ok = [j for j in joined if j.wire is not None]
    client = [by_id[j.request_id or ""].receipt_ns - by_id[j.request_id or ""].send_ns for j in ok]
    triton_says = [j.stamps["HTTP_SEND_END"] - j.stamps["HTTP_RECV_START"] for j in ok]
    gap = [c - t for c, t in zip(client, triton_says, strict=True)]
    print(f"\n--http-thread-count {threads}: {clients} keep-alive clients ({'processes' if processes else 'threads'}) "
          f"x {requests} requests, "
          f"{body_kb} KiB bodies; joins: {dict(results)}")
    print(f"  client send -> receipt        {ms(client)}")
    print(f"  Triton http_infer             {ms(triton_says)}")
    print(f"  gap (client - Triton)         {ms(gap)}")
    print(f"  socket_wait                   {ms([j.wire.socket_wait_ns for j in ok if j.wire])}")
    print(f"    first byte in -> first read {ms([j.wire.turn.first_read_ns - j.wire.turn.start_ns for j in ok if j.wire])}")
    print(f"    first read -> RECV_START    {ms([j.stamps['HTTP_RECV_START'] - j.wire.turn.first_read_ns for j in ok if j.wire])}")
    print(f"  gap - socket_wait             {ms([g - j.wire.socket_wait_ns for g, j in zip(gap, ok, strict=True) if j.wire])}")
    print(f"  ack_wait                      {ms([j.wire.ack_wait_ns for j in ok if j.wire])}")
    print(f"    SEND_END -> last write      {ms([j.wire.turn.last_write_ns - j.stamps['HTTP_SEND_END'] for j in ok if j.wire])}")
    print(f"    last write -> ACK           {ms([j.wire.turn.acked_ns - j.wire.turn.last_write_ns for j in ok if j.wire])}")
    print(f"  wire                          {ms([j.wire.wire_ns for j in ok if j.wire])}")
    outside = [j.wire.socket_wait_ns + j.wire.ack_wait_ns for j in ok if j.wire]
    print(f"  socket_wait + ack_wait        {ms(outside)}")
    print(f"  of the gap, socket_wait + ack_wait explain {sum(outside) / sum(gap):.1%} "
          f"(the rest: client-side send and read, loopback)")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=40, help="per client")
    ap.add_argument("--body-kb", type=int, default=512, help="padding per request body, KiB")
    ap.add_argument("--threads", default="1,8", help="Triton --http-thread-count values to compare")
    ap.add_argument("--quickack", action="store_true",
                    help="client processes acknowledge responses at once (TCP_QUICKACK): ack_wait then holds "
                         "no delayed ACK")
    ap.add_argument("--dashboard", action="store_true",
                    help="also run serve --wire-join on and Prometheus, and print the dashboard's frontend-wait panel")
    ap.add_argument("--client-threads", action="store_true",
                    help="clients as threads of this process (default: a process each, so they read promptly)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wire-frontend.") as d:
        for t in args.threads.split(","):
            run(int(t), args.clients, args.requests, args.body_kb, Path(d), not args.client_threads, args.quickack,
                args.dashboard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
