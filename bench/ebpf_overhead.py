"""What the eBPF programs cost a loopback request/response workload, against no probes and
against per-event printing (the old bpftrace approach), side by side in one run.

Workload: one TCP connection on 127.0.0.1, a server process answering each 100-byte
request with 1000 bytes, at once (--work-us 0: the worst case, all cost is per
event) or after busy work standing in for inference (500 us: a small model); the
client counts exchanges per second. Each round measures, in rotating order,
  none      no probes attached,
  floor     empty BPF programs on the same tracepoints as ours: what any in-kernel
            approach hooking there pays before doing anything,
  ours      the metric programs of bpf/ (tcp_messages)
            watching the workload's port: in-kernel aggregation only (loaded once,
            their tracepoints attached for this slice and detached after),
  ours+turns  the same plus `tcp-events --record /dev/null` in a process of its own:
            bpf/socket_turns.c (one record per request/response turn to a ring
            buffer, the wire join's input) and its reader (CPU: the tool's),
  bpftrace  a bpftrace script printing one line per send/recv on that port (the
            tracepoint version of the old kprobe:tcp_sendmsg/tcp_recvmsg + printf),
            its output drained through a pipe as a terminal would.
Printed per condition: median exchanges/s and its ratio to `none` (the median of the
per-round ratios, so machine drift between rounds cancels), CPU time per exchange of
the workload's two processes (client and server; kernel time in BPF programs is
charged to them) and of the tool's own processes (bpftrace + the reader), and the
kernel's per-program stats (kernel.bpf_stats_enabled): ns per run ("per event").
Target: ours loses <= 3%. Needs root. On a shared machine, trust the CPU-per-exchange
ratio more than the rate: other load moves the rate, much less the CPU per exchange.

    .venv/bin/python bench/ebpf_overhead.py [--seconds 2] [--rounds 6] [--work-us 0,500]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.ebpf.declaration import metric_programs
from exporter.ebpf.kernel import BPF_STATS_SYSCTL
from exporter.ebpf.loader import LoadedProgram, LoadError, load_programs

ROOT = Path(__file__).resolve().parent.parent
REQUEST, RESPONSE = 100, 1000

SERVER = f"""
import socket, sys, time
work = float(sys.argv[1]) / 1e6  # seconds of busy work per request, standing in for inference
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(); print(ls.getsockname()[1], flush=True)
while True:
    c, _ = ls.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    answer = b"r" * {RESPONSE}
    while True:
        got = 0
        while got < {REQUEST}:
            chunk = c.recv({REQUEST} - got)
            if not chunk:
                break
            got += len(chunk)
        if got < {REQUEST}:
            c.close(); break
        if work:
            until = time.perf_counter() + work
            while time.perf_counter() < until:
                pass
        c.sendall(answer)
"""

# The old per-event script, on the tracepoints this kernel has instead of kprobes.
BPFTRACE = r"""
tracepoint:sock:sock_send_length /args->protocol == 6 && args->ret > 0/
{
  $sk = (struct sock *)args->sk;
  $lport = $sk->__sk_common.skc_num;
  $dport = bswap($sk->__sk_common.skc_dport);
  if ($lport == $1 || $dport == $1) {
    printf("%s %d %s %s:%d %s:%d %d SEND\n", strftime("%H:%M:%S", nsecs), pid, comm,
           ntop($sk->__sk_common.skc_rcv_saddr), $lport, ntop($sk->__sk_common.skc_daddr), $dport, args->ret);
  }
}
tracepoint:sock:sock_recv_length /args->protocol == 6 && args->ret > 0/
{
  $sk = (struct sock *)args->sk;
  $lport = $sk->__sk_common.skc_num;
  $dport = bswap($sk->__sk_common.skc_dport);
  if ($lport == $1 || $dport == $1) {
    printf("%s %d %s %s:%d %s:%d %d RECV\n", strftime("%H:%M:%S", nsecs), pid, comm,
           ntop($sk->__sk_common.skc_rcv_saddr), $lport, ntop($sk->__sk_common.skc_daddr), $dport, args->ret);
  }
}
"""


def exchange_rate(port: int, seconds: float) -> tuple[float, int]:
    """(exchanges per second, exchanges) over one connection for `seconds`."""
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b"q" * REQUEST
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    try:
        while True:
            c.sendall(req)
            got = 0
            while got < RESPONSE:
                chunk = c.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed")
                got += len(chunk)
            n += 1
            if n % 64 == 0 and time.perf_counter() >= deadline:
                break
    finally:
        c.close()
    return n / (time.perf_counter() - start), n


def prog_stats_of_pid(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs a process holds open."""
    ns = runs = 0
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except OSError:
            continue
        if "prog_type:" not in text:
            continue
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k == "run_time_ns":
                ns += int(v)
            elif k == "run_cnt":
                runs += int(v)
    return ns, runs


def other_bpf_holders() -> dict[int, str]:
    """Processes other than this one holding BPF programs: their probes cost every condition."""
    out: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if any("prog_type:" in f.read_text() for f in (d / "fdinfo").iterdir()):
                out[int(d.name)] = (d / "comm").read_text().strip()
        except OSError:
            continue
    return out


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of pid so far (schedstat: ns resolution)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


class Result:
    def __init__(self) -> None:
        self.rates: list[float] = []
        self.exchanges = 0
        self.workload_cpu_ns = 0
        self.tool_cpu_ns = 0
        self.kernel_ns = 0
        self.kernel_runs = 0
        self.per_program: dict[str, list[int]] = {}
        self.notes: list[str] = []


class Probes:
    """BPF programs loaded once; attach() and detach() toggle all their tracepoints."""

    def __init__(self, bpfs: list[Any]) -> None:
        self.bpfs = bpfs
        self.tracepoints = [(b, tp) for b in bpfs for tp in list(b.tracepoint_fds)]
        self.detach()

    def attach(self) -> None:
        for b, tp in self.tracepoints:
            b.attach_tracepoint(tp=tp, fn_name=b"tracepoint__" + tp.replace(b":", b"__"))

    def detach(self) -> None:
        for b, tp in self.tracepoints:
            if tp in b.tracepoint_fds:
                b.detach_tracepoint(tp)

    def close(self) -> None:
        for b in self.bpfs:
            b.cleanup()


class Ours(Probes):
    """Our metric programs, as the daemon loads them."""

    def __init__(self, port: int, pod_labels: bool = False) -> None:
        self.loaded: list[LoadedProgram] = []
        for res in load_programs(metric_programs(), [port], extra_defines=["POD_LABELS"] if pod_labels else []):
            if isinstance(res, LoadError):
                sys.exit(f"cannot load our programs: {res}")
            res.attach()  # as the daemon's start() does; Probes then toggles the tracepoints
            self.loaded.append(res)
        super().__init__([p.bpf for p in self.loaded])


def floor_probes(ours: Ours) -> Probes:
    """Empty programs on the tracepoints ours use: what any BPF hook there costs at least."""
    from bcc import BPF

    text = "".join(f"int tracepoint__{tp.decode().replace(':', '__')}(void *ctx) {{ return 0; }}\n"
                   for _, tp in ours.tracepoints)
    return Probes([BPF(text=text.encode())])


def measure(port: int, seconds: float, r: Result, server_pid: int, tool_pids: tuple[int, ...] = ()) -> None:
    w0 = cpu_ns(os.getpid()) + cpu_ns(server_pid)
    t0 = sum(cpu_ns(p) for p in tool_pids)
    rate, n = exchange_rate(port, seconds)
    r.workload_cpu_ns += cpu_ns(os.getpid()) + cpu_ns(server_pid) - w0
    r.tool_cpu_ns += sum(cpu_ns(p) for p in tool_pids) - t0
    r.rates.append(rate)
    r.exchanges += n


def measure_none(port: int, seconds: float, r: Result, server_pid: int, probes: dict[str, Probes]) -> None:
    measure(port, seconds, r, server_pid)


def measure_floor(port: int, seconds: float, r: Result, server_pid: int, probes: dict[str, Probes]) -> None:
    probes["floor"].attach()
    try:
        measure(port, seconds, r, server_pid)
    finally:
        probes["floor"].detach()


def measure_ours(port: int, seconds: float, r: Result, server_pid: int, probes: dict[str, Probes]) -> None:
    ours = probes["ours"]
    assert isinstance(ours, Ours)
    ours.attach()
    try:
        before = {p.decl.program: p.run_stats() for p in ours.loaded}
        measure(port, seconds, r, server_pid)
        for p in ours.loaded:
            ns0, runs0 = before[p.decl.program]
            ns1, runs1 = p.run_stats()
            acc = r.per_program.setdefault(p.decl.program, [0, 0])
            acc[0] += ns1 - ns0
            acc[1] += runs1 - runs0
            r.kernel_ns += ns1 - ns0
            r.kernel_runs += runs1 - runs0
    finally:
        ours.detach()


def measure_ours_turns(port: int, seconds: float, r: Result, server_pid: int, probes: dict[str, Probes]) -> None:
    """ours, plus `tcp-events --record` (socket_turns.c and its reader) in a process of its own,
    started for this slice: its kernel run time from its program fds, its CPU the tool's."""
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "tcp-events", "--record", os.devnull,
                             "--port", str(port)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if "recording socket turns" not in line:
            sys.exit(f"tcp-events --record failed to start: {line}{proc.stderr.read()}")
        ns0, runs0 = prog_stats_of_pid(proc.pid)
        tool0 = cpu_ns(proc.pid)
        measure_ours(port, seconds, r, server_pid, probes)
        r.tool_cpu_ns += cpu_ns(proc.pid) - tool0
        ns1, runs1 = prog_stats_of_pid(proc.pid)
        acc = r.per_program.setdefault("socket_turns", [0, 0])
        acc[0] += ns1 - ns0
        acc[1] += runs1 - runs0
        r.kernel_ns += ns1 - ns0
        r.kernel_runs += runs1 - runs0
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        r.notes.append(err.strip().splitlines()[-1] if err.strip() else "")


def measure_bpftrace(port: int, seconds: float, r: Result, server_pid: int, probes: dict[str, Probes]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".bt", delete=False) as f:
        f.write(BPFTRACE)
    proc = subprocess.Popen(["bpftrace", f.name, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    drain: subprocess.Popen[bytes] | None = None
    try:
        assert proc.stdout is not None
        while b"Attaching" not in proc.stdout.readline():  # bpftrace says so once attached
            if proc.poll() is not None:
                sys.exit("bpftrace failed to start")
        # a reader like a terminal: drain the lines as they come
        drain = subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
        ns0, runs0 = prog_stats_of_pid(proc.pid)
        measure(port, seconds, r, server_pid, (proc.pid, drain.pid))
        ns1, runs1 = prog_stats_of_pid(proc.pid)
        r.kernel_ns += ns1 - ns0
        r.kernel_runs += runs1 - runs0
    finally:
        proc.terminate()
        proc.wait(10)
        if drain is not None:
            drain.wait(10)
        os.unlink(f.name)


Condition = Callable[[int, float, Result, int, dict[str, Probes]], None]
CONDITIONS: dict[str, Condition] = {
    "none": measure_none, "floor": measure_floor, "ours": measure_ours, "ours+turns": measure_ours_turns,
    "bpftrace": measure_bpftrace}


def run_workload(work_us: float, seconds: float, rounds: int, pod_labels: bool = False) -> dict[str, Result]:
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(work_us)], stdout=subprocess.PIPE, text=True)
    probes: dict[str, Probes] = {}
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        ours = Ours(port, pod_labels)
        probes = {"ours": ours, "floor": floor_probes(ours)}
        exchange_rate(port, 1.0)  # warm-up
        results = {name: Result() for name in CONDITIONS}
        names = list(CONDITIONS)
        for rnd in range(rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                CONDITIONS[name](port, seconds, results[name], server.pid, probes)
            print(f"server work {work_us:g} us, round {rnd + 1}: "
                  + ", ".join(f"{n} {results[n].rates[-1]:,.0f}/s" for n in names), file=sys.stderr)
        return results
    finally:
        for p in probes.values():
            p.close()
        server.kill()
        server.wait()


def report(work_us: float, seconds: float, rounds: int, results: dict[str, Result]) -> None:
    none = results["none"]
    base_cpu = none.workload_cpu_ns / none.exchanges
    print(f"\nloopback request/response, {REQUEST} B -> {RESPONSE} B, one connection, server work "
          f"{work_us:g} us per request, {rounds} x {seconds:g} s per condition")
    print(f"{'condition':11} {'exch/s':>8} {'vs none':>8} {'cpu us/exch':>12} {'vs none':>8} "
          f"{'tool cpu us/exch':>17} {'kernel ns/event':>16} {'kernel ns/exch':>15}")
    for name, r in results.items():
        ratio = statistics.median(a / b for a, b in zip(r.rates, none.rates, strict=True))
        cpu = r.workload_cpu_ns / r.exchanges
        tool = f"{r.tool_cpu_ns / r.exchanges / 1e3:.2f}" if name in ("bpftrace", "ours+turns") else "-"
        per_event = f"{r.kernel_ns / r.kernel_runs:,.0f}" if r.kernel_runs else "-"
        per_exch = f"{r.kernel_ns / r.exchanges:,.0f}" if r.kernel_runs else "-"
        print(f"{name:11} {statistics.median(r.rates):8,.0f} {ratio:8.3f} {cpu / 1e3:12.2f} "
              f"{cpu / base_cpu:8.3f} {tool:>17} {per_event:>16} {per_exch:>15}")
    ours = results["ours"]
    print(f"ours, kernel time / workload CPU without probes: {ours.kernel_ns / ours.exchanges / base_cpu:.1%} "
          "(the loss the programs' own run time explains)")
    for prog, (ns, runs) in results["ours+turns"].per_program.items():
        print(f"  {prog:16} {runs:>10,} runs  {ns / runs if runs else 0:8,.0f} ns/run  "
              f"{ns / results['ours+turns'].exchanges:8,.0f} ns/exch")
    print(f"  tcp-events --record said: {'; '.join(sorted(set(results['ours+turns'].notes)))}")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one measurement")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of all conditions, order rotating")
    ap.add_argument("--pod-labels", action="store_true",
                    help="ours as with --kubernetes: the owner's cgroup id taken per send/recv")
    ap.add_argument("--work-us", default="0,500",
                    help="server busy work per request, comma-separated workloads (0: bare echo)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (loads BPF programs, runs bpftrace)")
    stats_before = BPF_STATS_SYSCTL.read_text().strip()
    BPF_STATS_SYSCTL.write_text("1")  # per-program run time and count, for ns per event
    try:
        runs = [(float(w), run_workload(float(w), args.seconds, args.rounds, args.pod_labels)) for w in args.work_us.split(",")]
        others = other_bpf_holders()
    finally:
        BPF_STATS_SYSCTL.write_text(stats_before)
    for work_us, results in runs:
        report(work_us, args.seconds, args.rounds, results)
    print("\nruns count every TCP socket's events on the machine (filtered in the kernel), so ns/exch is an upper bound")
    if others:
        print(f"note: other processes held BPF programs during the run (their cost is in every "
              f"condition): {', '.join(f'{c}[{p}]' for p, c in sorted(others.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
