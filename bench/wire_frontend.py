"""The case Triton's trace cannot see: its HTTP frontend, not the model, is the bottleneck.

A real Triton with one HTTP thread (`--http-thread-count 1`) and a trivial model (add_sub),
`tcp-events --record` beside it; every traced request is joined to its socket turn. Printed
per HTTP thread count: the join shares; what the clients saw (send -> receipt), what Triton's
trace says (HTTP_RECV_START -> HTTP_SEND_END), their gap, and the joined stages socket_wait,
ack_wait and wire, each with its share of the gap, and the parts of each.

The frontend-bound case (`--preset socket-wait`, the configuration docs/traces.md quotes):

    sudo .venv/bin/python bench/wire_frontend.py --preset socket-wait [--dashboard]

is `--client loop --waves --body gzip --body-kb 256 --clients 16 --requests 20 --threads 1
--realtime`: 16 keep-alive connections of one client process send their requests at the same
instant (a wave), and the next wave when every response of this one is in. Each body is
gzip-compressed JSON, a few hundred bytes on the wire (one read) that Triton's HTTP thread
inflates to 256 KiB and parses before the request goes to the model, which adds 8 floats. With
one HTTP thread the requests of a wave are handled one after the other, so the k-th waits in
its socket for the k-1 before it; Triton's trace of it starts only when the thread gets to it
(HTTP_RECV_START), and socket_wait is what the client sees minus what Triton's trace says.
Its responses are written at once: nothing else waits for the thread by then.

Why these choices (each measured, docs/traces.md): a body Triton must read in many pieces
(the default --body params, or large uncompressed bodies) moves the thread's contention
inside the trace (`http_recv`: the frontend reads a large body in many small reads, between
the other connections'); padding in the request's `parameters` also
reaches the model (the Python backend gets the parameters), which then becomes a
bottleneck of its own; clients that send again as soon as they read a response (no waves)
make the response wait for the thread about as long as the next request does (the one
thread sends a finished response in a later pass of its event loop, behind the requests it
parses in this one), and that wait is after HTTP_SEND_END (in ack_wait), not before the
trace: `--preset socket-wait --no-waves` shows it. `--realtime` runs the
client process at SCHED_FIFO priority (root) so that on a busy machine it reads each response
when it arrives rather than when the scheduler gets to it; the loop client also asks its kernel
to acknowledge each response once read (TCP_QUICKACK), not with its next request (the next
wave), so ack_wait ends about when the client has the response.

    sudo .venv/bin/python bench/wire_frontend.py [--clients 16] [--requests 40] [--body-kb 512] [--threads 1,8]

runs the earlier case: 16 client processes sending JSON bodies whose `parameters` carry
--body-kb of padding, one after the other.
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
from collections.abc import Callable
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
from tests.wire_burst import Body, add_sub_inputs, gzip_body, loop_clients  # noqa: E402
from tests.wire_driver import Joined, Recorder, Sent, http_clients  # noqa: E402
from tests.wire_driver import joined_requests as joined_of  # noqa: E402

PRESETS = {
    "socket-wait": {"client": "loop", "waves": True, "body": "gzip", "body_kb": 256, "clients": 16,
                    "requests": 20, "threads": "1", "realtime": True},
}


def padded_body(kb: int) -> Body:
    """JSON whose request `parameters` carry kb KiB: read and parsed by the frontend, and
    handed to the model with the request."""
    pad = "x" * (kb * 1024)

    def body(rid: str) -> tuple[bytes, dict[str, str]]:
        return json.dumps({"id": rid, "parameters": {"pad": pad}, "inputs": add_sub_inputs()}).encode(), {}
    return body


BODIES: dict[str, Callable[[int], Body]] = {"params": padded_body, "gzip": gzip_body}


def timed(conn: http.client.HTTPConnection, rid: str, payload: bytes, headers: dict[str, str],
          quickack: bool) -> Sent:
    """One infer on conn, bracketed by CLOCK_MONOTONIC at send and at receipt; `quickack`: quick
    ACKs asked for once the request is sent (sending data can put the kernel back into delayed-ACK
    mode), so the response is acknowledged as it arrives."""
    t0 = time.monotonic_ns()
    conn.request("POST", f"/v2/models/{MODEL}/infer", payload, headers)
    if quickack:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    resp = conn.getresponse()
    resp.read()
    t1 = time.monotonic_ns()
    assert resp.status == 200, resp.status
    return Sent(rid, conn.sock.getsockname()[1], t0, t1)


def client_process(args: tuple[int, int, str, str, int, int, bool]) -> list[Sent]:
    """One client in a process of its own (no GIL shared with the other clients); `quickack`:
    its kernel acknowledges each response at once rather than delaying the ACK."""
    port, requests, prefix, kind, body_kb, c, quickack = args
    body = BODIES[kind](body_kb)
    # every body built first: the client sends its next request as soon as it has read a response,
    # and its kernel's ACK of that response rides on it (no delayed ACK in ack_wait)
    payloads = [(f"{prefix}{c}-{k}", *body(f"{prefix}{c}-{k}")) for k in range(requests)]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.connect()
    out = [timed(conn, rid, payload, headers, quickack) for rid, payload, headers in payloads]
    conn.close()
    return out


def burst(args: tuple[int, int, int, str, int, bool, bool]) -> list[Sent]:
    """loop_clients in a process of its own: a realtime policy stays there."""
    port, clients, requests, kind, body_kb, waves, realtime = args
    return loop_clients(port, clients, requests, BODIES[kind](body_kb), waves, realtime)


def ms(values: list[int]) -> str:
    values = sorted(values)
    return (f"mean {statistics.fmean(values) / 1e6:7.2f}  p50 {values[len(values) // 2] / 1e6:7.2f}  "
            f"p99 {values[len(values) * 99 // 100] / 1e6:7.2f} ms")


PANEL = "Waiting for a frontend thread"
STAGES = {"socket wait": "socket_wait", "http recv": "http_recv", "queue": "queue", "ack wait": "ack_wait"}


def panel_expr(legend: str) -> str:
    """The stage timeline dashboard's frontend-wait query of `legend`, for add_sub over any
    job, instance, pod, version and protocol, averaged over the last 10 minutes."""
    dash = json.loads((ROOT / "grafana" / "dashboards" / "inference-stage-timeline.json").read_text())
    panels = [p for row in dash["panels"] for p in [row, *row.get("panels", [])]]
    (panel,) = [p for p in panels if p.get("title", "").startswith(PANEL)]
    (expr,) = [t["expr"] for t in panel["targets"] if t.get("legendFormat") == legend]
    expr = expr.replace('"$model"', f'"{MODEL}"').replace("$__rate_interval", "10m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


class Dashboard:
    """`serve --wire-join on` over the run's trace files and a Prometheus scraping it each second:
    what the dashboard's frontend-wait panel shows, beside the daemon's own sums."""

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
        self.before: dict[str, tuple[float, float]] = {}

    def sums(self) -> dict[str, tuple[float, float]]:
        """Per panel stage, the daemon's (sum in seconds, count) for add_sub, from /metrics."""
        scrape = self.exporter.scrape()
        return {stage: (scrape.total("inference_profiler_stage_duration_seconds_sum", model=MODEL, stage=stage),
                        scrape.total("inference_profiler_stage_duration_seconds_count", model=MODEL, stage=stage))
                for stage in STAGES.values()}

    def settle(self, joined: int) -> None:
        """Wait until the daemon joined `joined` requests and Prometheus scraped that twice."""
        self.exporter.wait_for(lambda m: m.total("inference_profiler_socket_joins_total", result="joined") >= joined,
                               timeout=60)
        time.sleep(2.5)  # a 1 s scrape interval

    def warmed(self, joined: int) -> None:
        """The warm-up requests counted and scraped: the panel's series exist before the load, so its
        rate() over the run counts every request of it (a series' first sample counts nothing)."""
        self.settle(joined)
        self.before = self.sums()

    def show(self, joined: int, offline: dict[str, list[int]]) -> None:
        self.settle(joined)
        after = self.sums()
        for legend, stage in STAGES.items():
            res = self.prometheus.api("query", query=panel_expr(legend))["result"]
            v = ", ".join(f"{float(r['value'][1]) * 1e3:.2f}" for r in res) or "no data"
            (s1, n1), (s0, n0) = after[stage], self.before.get(stage, (0.0, 0.0))
            own = f"{(s1 - s0) / (n1 - n0) * 1e3:.3f} ms over {n1 - n0:.0f}" if n1 > n0 else "none"
            mine = offline.get(stage)
            off = f"{statistics.fmean(mine) / 1e6:.3f} ms over {len(mine)}" if mine else "-"
            print(f"  panel '{PANEL}', {legend:11s}: Prometheus {v} ms; the daemon's sum/count {own}; "
                  f"the bench's join {off}")

    def stop(self) -> None:
        for p in (self.prometheus, self.exporter):
            if p is not None:
                p.stop()


def run(threads: int, opts: argparse.Namespace, workdir: Path) -> None:
    triton = start_triton(workdir / f"t{threads}", log_frequency=100, models=(MODEL,),
                          extra_args=["--http-thread-count", str(threads)])
    turns_file = workdir / f"turns{threads}.jsonl"
    shown = None
    try:
        if opts.dashboard:
            shown = Dashboard(triton, workdir / f"d{threads}")
        rec = Recorder(EXPORTER, turns_file, [triton.http_port])
        try:
            http_clients(triton, 2, 5, keep_alive=True, prefix="warm")
            if shown is not None:
                flush_until_traced(triton, 10)
                shown.warmed(10)
            started = time.monotonic()
            if opts.client == "loop":
                with ProcessPoolExecutor(1) as pool:  # its own process: the realtime policy stays there
                    sent = pool.submit(burst, (triton.http_port, opts.clients, opts.requests, opts.body,
                                                      opts.body_kb, opts.waves, opts.realtime)).result()
            elif opts.client == "processes":
                with ProcessPoolExecutor(opts.clients) as pool:
                    sent = [x for part in pool.map(client_process, [
                        (triton.http_port, opts.requests, "b", opts.body, opts.body_kb, c, opts.quickack)
                        for c in range(opts.clients)]) for x in part]
            else:
                body = BODIES[opts.body](opts.body_kb)
                sent = http_clients(triton, opts.clients, opts.requests, keep_alive=True, prefix="b",
                                    body_of=lambda rid: body(rid)[0])
            seconds = time.monotonic() - started
            files = flush_until_traced(triton, len(sent) + 10, timeout=60)
        finally:
            rec.stop()
        joined = [j for j in joined_of(files, turns_file, {"http": frozenset({triton.http_port})})
                  if (j.request_id or "").startswith("b")]
        report(threads, opts, sent, joined, seconds)
        if shown is not None:
            ok = [j for j in joined if j.wire is not None]
            shown.show(len(sent) + 10, {
                "socket_wait": [j.wire.socket_wait_ns for j in ok if j.wire],
                "ack_wait": [j.wire.ack_wait_ns for j in ok if j.wire],
                "http_recv": [j.stamps["HTTP_RECV_END"] - j.stamps["HTTP_RECV_START"] for j in ok]})
    finally:
        if shown is not None:
            shown.stop()
        triton.stop()


def report(threads: int, opts: argparse.Namespace, sent: list[Sent], joined: list[Joined], seconds: float) -> None:
    by_id = {s.request_id: s for s in sent}
    results = Counter(j.result for j in joined)
    ok = [j for j in joined if j.wire is not None]
    wires = [j.wire for j in ok if j.wire is not None]
    clients = [by_id[j.request_id or ""] for j in ok]
    client = [s.receipt_ns - s.send_ns for s in clients]
    triton_says = [j.stamps["HTTP_SEND_END"] - j.stamps["HTTP_RECV_START"] for j in ok]
    gap = [c - t for c, t in zip(client, triton_says, strict=True)]
    socket_wait = [w.socket_wait_ns for w in wires]
    ack_wait = [w.ack_wait_ns for w in wires]

    def share(part: list[int]) -> str:
        return f"   {sum(part) / sum(gap):6.1%} of the gap"

    waves = " in waves" if opts.client == "loop" and opts.waves else ""
    print(f"\n--http-thread-count {threads}: {opts.clients} keep-alive clients ({opts.client}{waves}) "
          f"x {opts.requests} requests, {opts.body} bodies of {opts.body_kb} KiB, {len(sent) / seconds:.0f} req/s with the bodies' building; "
          f"joins: {dict(results)}")
    print(f"  client send -> receipt        {ms(client)}")
    print(f"  Triton http_infer             {ms(triton_says)}")
    print(f"    http_recv                   {ms([j.stamps['HTTP_RECV_END'] - j.stamps['HTTP_RECV_START'] for j in ok])}")
    print(f"    RECV_END -> REQUEST_START   {ms([j.stamps['REQUEST_START'] - j.stamps['HTTP_RECV_END'] for j in ok])}")
    print(f"    REQUEST_START -> _END       {ms([j.stamps['REQUEST_END'] - j.stamps['REQUEST_START'] for j in ok])}")
    print(f"    REQUEST_END -> SEND_START   {ms([j.stamps['HTTP_SEND_START'] - j.stamps['REQUEST_END'] for j in ok])}")
    print(f"  gap (client - Triton)         {ms(gap)}")
    print(f"  socket_wait                   {ms(socket_wait)}{share(socket_wait)}")
    print(f"    client send -> first byte in {ms([w.turn.start_ns - s.send_ns for w, s in zip(wires, clients, strict=True)])}")
    print(f"    first byte in -> first read {ms([w.turn.first_read_ns - w.turn.start_ns for w in wires])}")
    print(f"    first read -> RECV_START    {ms([j.stamps['HTTP_RECV_START'] - w.turn.first_read_ns for j, w in zip(ok, wires, strict=True)])}")
    print(f"  gap - socket_wait             {ms([g - w for g, w in zip(gap, socket_wait, strict=True)])}")
    print(f"  ack_wait                      {ms(ack_wait)}{share(ack_wait)}")
    print(f"    SEND_END -> last write      {ms([w.turn.last_write_ns - j.stamps['HTTP_SEND_END'] for j, w in zip(ok, wires, strict=True)])}")
    print(f"    last write -> ACK           {ms([w.turn.acked_ns - w.turn.last_write_ns for w in wires])}")
    print(f"    ACK - client receipt        {ms([w.turn.acked_ns - s.receipt_ns for w, s in zip(wires, clients, strict=True)])}")
    print(f"  wire                          {ms([w.wire_ns for w in wires])}")
    outside = [a + b for a, b in zip(socket_wait, ack_wait, strict=True)]
    print(f"  socket_wait + ack_wait        {ms(outside)}{share(outside)} "
          f"(ack_wait can end after the client's receipt: its kernel may delay the ACK)")


def options(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]))
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="socket-wait: the frontend-bound case where socket_wait is the gap (see below); "
                         "options given as well override it")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=40, help="per client")
    ap.add_argument("--body", choices=sorted(BODIES), default="params",
                    help="params: JSON, --body-kb of padding in the request's parameters (the model gets them "
                         "too); gzip: gzip-compressed JSON inflating to --body-kb (needs --client loop or processes)")
    ap.add_argument("--body-kb", type=int, default=512, help="padding per request body, KiB")
    ap.add_argument("--threads", default="1,8", help="Triton --http-thread-count values to compare")
    ap.add_argument("--client", choices=("processes", "threads", "loop"), default="processes",
                    help="processes: a process per client (default); threads: threads of this process (they read "
                         "late behind one interpreter lock); loop: one process, raw sockets, one selector")
    ap.add_argument("--waves", action=argparse.BooleanOptionalAction, default=False,
                    help="with --client loop: every connection sends at once, the next wave once all are answered")
    ap.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=False,
                    help="with --client loop: the client process at SCHED_FIFO priority while it sends (root)")
    ap.add_argument("--quickack", action="store_true",
                    help="client processes acknowledge responses at once (TCP_QUICKACK): ack_wait then holds "
                         "no delayed ACK")
    ap.add_argument("--dashboard", action="store_true",
                    help="also run serve --wire-join on and Prometheus, and print the dashboard's frontend-wait panel")
    ap.add_argument("--client-threads", action="store_const", const="threads", dest="client",
                    help="the same as --client threads")
    pre, _ = ap.parse_known_args(argv)
    if pre.preset:
        ap.set_defaults(**PRESETS[pre.preset])
    opts = ap.parse_args(argv)
    if opts.body == "gzip" and opts.client == "threads":
        ap.error("--body gzip needs --client loop or processes (the threads' client sends no extra headers)")
    if (opts.waves or opts.realtime) and opts.client != "loop":
        ap.error("--waves and --realtime need --client loop")
    return opts


def main() -> int:
    opts = options()
    with tempfile.TemporaryDirectory(prefix="wire-frontend.") as d:
        for t in opts.threads.split(","):
            run(int(t), opts, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
