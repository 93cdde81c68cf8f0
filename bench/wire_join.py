"""What the wire join costs the daemon: CPU per traced request and the turn window's memory,
at a given traced request rate, on synthetic turns and traces shaped like the real ones
(HTTP keep-alive connections, reads ~10 us before HTTP_RECV_START, responses written
~100 us after HTTP_SEND_START and acknowledged ~500 us later, batches of traces arriving
as files roll; turns added as the daemon reads them, a ring buffer read of records every
READ_EVERY). With --grpc, that share of the requests goes over gRPC connections shaped as
HTTP/2 is: the request read in one turn, a control frame from the client read in another
while it is handled (a turn that never joins and stays held), the response in a turn of
writes only. The kernel side and the ring buffer reader are measured by
bench/ebpf_overhead.py; this is the user-space joiner alone.

    .venv/bin/python bench/wire_join.py [--rate 300] [--seconds 120] [--connections 16] [--batch 100] [--grpc 0.5]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.stages import COLUMN, PROTOCOLS, anatomy  # noqa: E402
from exporter.wire import live  # noqa: E402
from exporter.wire.live import TurnWindow  # noqa: E402
from exporter.wire.turns import Turn, records_of  # noqa: E402

PORTS = {"http": frozenset({8000}), "grpc": frozenset({8001})}


def workload(rate: float, seconds: float, connections: int, grpc: float = 0.0,
             seed: int = 1) -> tuple[list[Turn], np.ndarray, np.ndarray]:
    """The turns in the order the kernel sends them (as requests finish), the traces' stamps and
    their protocol codes."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    arrivals = np.sort(rng.uniform(0, seconds * 1e9, n)).astype(np.int64) + 10**12
    turns: list[Turn] = []
    stamps = np.full((n, len(COLUMN)), -1, dtype=np.int64)
    codes = np.where(rng.random(n) < grpc, PROTOCOLS.index("grpc"), PROTOCOLS.index("http")).astype(np.int8)
    next_turn = [0] * connections
    for i, a in enumerate(arrivals.tolist()):
        c = i % connections
        service = int(rng.exponential(2e6)) + 200_000
        end = a + service
        if codes[i] == PROTOCOLS.index("grpc"):
            sock, t = 1000 + c, next_turn[c]
            next_turn[c] += 3
            turns += [Turn(sock, 1, a - 40_000, a - 10_000, a - 9_000, 0, 0, 0, 0, t + 1, 400, 0, 2, 8001,
                           40000 + c, 0, "", ""),
                      Turn(sock, 1, a + 150_000, a + 160_000, a + 160_000, 0, 0, 0, 0, t + 2, 30, 0, 2, 8001,
                           40000 + c, 0, "", ""),
                      Turn(sock, 1, 0, 0, 0, end - 1000, end - 900, end + 400_000, 0, t + 3, 0, 200, 2, 8001,
                           40000 + c, 0, "", "")]
            for name, ns in {"GRPC_WAITREAD_START": a - 5000, "GRPC_WAITREAD_END": a, "REQUEST_START": a + 2000,
                             "QUEUE_START": a + 3000, "COMPUTE_START": a + 4000, "COMPUTE_END": end - 5000,
                             "REQUEST_END": end - 4000, "GRPC_SEND_START": end - 2000, "GRPC_SEND_END": end,
                             "GRPC_SEND_START#count": 1, "GRPC_SEND_END#count": 1}.items():
                stamps[i, COLUMN[name]] = ns
            continue
        next_turn[c] += 1
        turns.append(Turn(c + 1, 1, a - 40_000, a - 10_000, a - 9_000, end + 100_000, end + 100_000, end + 600_000,
                          0, next_turn[c], 400, 200, 2, 8000, 40000 + c, 0, "127.0.0.1", "127.0.0.1"))
        for name, ns in {"HTTP_RECV_START": a, "HTTP_RECV_END": a + 1000, "REQUEST_START": a + 2000,
                         "QUEUE_START": a + 3000, "COMPUTE_START": a + 4000, "COMPUTE_END": end - 5000,
                         "REQUEST_END": end - 4000, "HTTP_SEND_START": end - 2000, "HTTP_SEND_END": end,
                         "HTTP_SEND_START#count": 1, "HTTP_SEND_END#count": 1}.items():
            stamps[i, COLUMN[name]] = ns
    order = sorted(range(len(turns)), key=lambda k: turns[k].acked_ns or turns[k].first_read_ns)
    return [turns[k] for k in order], stamps, codes


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=300.0, help="traced requests per second")
    ap.add_argument("--seconds", type=float, default=120.0, help="of traffic")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--batch", type=int, default=100, help="traces per batch (Triton's log-frequency)")
    ap.add_argument("--grpc", type=float, default=0.0, help="share of the requests over gRPC (0 to 1)")
    ap.add_argument("--read-every", type=float, default=0.0,
                    help="seconds between reads of the ring buffer (default: the daemon's)")
    args = ap.parse_args()
    turns, stamps, codes = workload(args.rate, args.seconds, args.connections, args.grpc)
    records = records_of(turns)
    # the records one read of the ring buffer takes: the daemon reads it at least this often (and
    # before every join, i.e. at each batch here); READ_EVERY where it read on a timer alone
    read_every = args.read_every or getattr(live, "READ_AT_LEAST", live.READ_EVERY)
    per_read = max(1, round(args.rate * read_every))

    n_req = len(stamps)

    def replay() -> tuple[int, float, float, float, int]:
        """(joined, CPU s adding, CPU s joining, CPU s of the batches' anatomy, most turns held)
        over the whole workload."""
        window = TurnWindow(PORTS)
        joined, add_s, join_s, anatomy_s, peak_turns = 0, 0.0, 0.0, 0.0, 0
        # turns arrive as requests finish; a batch of traces after `batch` more requests (a file roll)
        per_request = len(turns) / n_req
        for lo in range(0, n_req, args.batch):
            t0 = time.process_time()
            first, last = round(lo * per_request), round(min(lo + args.batch, n_req) * per_request)
            for at in range(first, last, per_read):  # as the daemon reads the ring
                window.add_records(records[at:min(at + per_read, last)])
            t1 = time.process_time()
            add_s += t1 - t0
            peak_turns = max(peak_turns, len(window))
            if lo >= args.batch:  # traces one file behind their turns
                part = stamps[lo - args.batch:lo]
                an = anatomy(part, lambda _i: {})  # the daemon computes it for Triton's stages, join or not
                t2 = time.process_time()
                obs = window.observe(part, codes[lo - args.batch:lo], an)
                joined += obs.results["joined"]
                anatomy_s += t2 - t1
                join_s += time.process_time() - t2
        return joined, add_s, join_s, anatomy_s, peak_turns

    joined, add_s, join_s, anatomy_s, peak_turns = replay()  # timed without tracemalloc: it slows allocations
    tracemalloc.start()
    replay()
    _, peak = tracemalloc.get_traced_memory()
    n = n_req - args.batch
    print(f"{n_req:,} requests ({args.grpc:.0%} gRPC, {len(turns):,} turns) at {args.rate:g}/s over {args.seconds:g} s, "
          f"{args.connections} connections, batches of {args.batch}: {joined:,} of {n:,} joined")
    print(f"  window: up to {peak_turns:,} turns held, peak Python heap {peak / 2**20:.1f} MiB, "
          f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"  CPU: {add_s / len(turns) * 1e6:.1f} us per turn added (reads every {read_every:g} s), "
          f"{join_s / n * 1e6:.1f} us per trace joined: {(add_s + join_s) / args.seconds:.2%} of one core at "
          f"{args.rate:g} traced req/s (the batches' anatomy, which the daemon computes without the join too: "
          f"{anatomy_s / n * 1e6:.1f} us per trace more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
