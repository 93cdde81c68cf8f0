"""The eBPF programs in the real kernel: bucket function, exact counts on loopback, tcp-events.

All load real BPF programs (marked `ebpf`: CI runs them as root). One module-scoped
load of the metric programs serves the loopback tests, which keeps the module fast.
"""

from __future__ import annotations

import ctypes as ct
import dataclasses
import os
import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.config import Config
from exporter.ebpf import bpfsys, handoff
from exporter.ebpf.collector import EbpfCollector, ProgramState
from exporter.ebpf.declaration import bpf_dir, metric_programs
from exporter.ebpf.handoff import HandedProgram
from exporter.ebpf.kernel import tracefs
from exporter.ebpf.loader import LoadedProgram, LoadError, load_programs, program_text
from exporter.ebpf.source import EbpfSource, KernelErrors
from exporter.histogram import log_linear_bound, log_linear_index
from exporter.source import ErrorCounts
from tests.triton_harness import EXPORTER, Scrape

pytestmark = pytest.mark.ebpf

EXCHANGES = 1000
DELAY_S = 0.005
REQUEST, RESPONSE = 100, 1000


def clean_env() -> dict[str, str]:
    """The environment for the CLI: INFPROF_REQUIRE is a test variable, not a config key."""
    return {k: v for k, v in os.environ.items() if k != "INFPROF_REQUIRE"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the bucket function, in the kernel -------------------------------------------

INDEX_PROGRAM = r'''
#include "HISTOGRAM_H"
BPF_ARRAY(inputs, u64, BATCH);
BPF_ARRAY(outputs, u32, BATCH);
BPF_ARRAY(caller, u32, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    u32 zero = 0;
    u32 *pid = caller.lookup(&zero);
    if (!pid || *pid != bpf_get_current_pid_tgid() >> 32)
        return 0;
    for (u32 i = 0; i < BATCH; i++) {
        u32 j = i;
        u64 *v = inputs.lookup(&j);
        if (!v)
            break;
        u32 idx = log_linear_index(*v);
        outputs.update(&j, &idx);
    }
    return 0;
}
'''


def test_kernel_log_linear_index_equals_python(tmp_path: Path) -> None:
    from bcc import BPF

    batch = 1024
    src = tmp_path / "index.c"
    src.write_text(INDEX_PROGRAM.replace("HISTOGRAM_H", str(bpf_dir() / "histogram.h")))
    b = BPF(text=program_text(src).encode(), cflags=[f"-DBATCH={batch}"])
    try:
        b[b"caller"][ct.c_int(0)] = ct.c_uint32(os.getpid())
        u64_max = 2**64 - 1
        values = set(range(0, 5000))
        for i in range(253):  # every bound, and its neighbours
            bound = log_linear_bound(i)
            values |= {v for v in (bound - 1, bound, bound + 1) if 0 <= v <= u64_max}
        rng = random.Random(3)
        values |= {rng.getrandbits(rng.randint(1, 64)) for _ in range(3000)}
        values |= {u64_max, 2**63, 2**63 - 1, 2**32, 2**32 - 1}
        ordered = sorted(values)
        got: list[int] = []
        for start in range(0, len(ordered), batch):
            chunk = ordered[start:start + batch] + [0] * (batch - len(ordered[start:start + batch]))
            for j, v in enumerate(chunk):
                b[b"inputs"][ct.c_int(j)] = ct.c_uint64(v)
            os.getppid()  # runs the program once, in this process
            got.extend(int(b[b"outputs"][ct.c_int(j)].value) for j in range(batch))
        got = got[:len(ordered)]
        mismatches = [(v, k, log_linear_index(v)) for v, k in zip(ordered, got, strict=True)
                      if k != log_linear_index(v)]
        assert mismatches == []
        # and the ceil property the buckets promise: bound(index(v)) >= v > bound(index(v) - 1)
        for v, k in zip(ordered, got, strict=True):
            assert log_linear_bound(k) >= v and (k == 0 or log_linear_bound(k - 1) < v)
    finally:
        b.cleanup()


CODES_PROGRAM = r'''
#include "BPF_DIR/histogram.h"
#include "BPF_DIR/socket_role.h"
BPF_ARRAY(codes, u64, N_CODES);
BPF_ARRAY(caller, u32, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    u32 zero = 0;
    u32 *pid = caller.lookup(&zero);
    if (!pid || *pid != bpf_get_current_pid_tgid() >> 32)
        return 0;
    u32 i;
    u64 v;
STORES
    return 0;
}
'''


def test_codes_compiled_into_the_programs_equal_the_declaration(tmp_path: Path) -> None:
    """What the C of bpf/ compiles ROLE_*, DIRECTION_*, ERR_* to, read back from the kernel, against
    what Python decodes with (histogram.yaml); and the metrics map's key fields, by name and order."""
    from bcc import BPF

    from exporter.ebpf.declaration import metric_key

    key = metric_key()
    codes = key.c_defines()
    stores = "\n".join(f"    i = {i}; v = {name}; codes.update(&i, &v);" for i, name in enumerate(codes))
    src = tmp_path / "codes.c"
    src.write_text(CODES_PROGRAM.replace("BPF_DIR", str(bpf_dir())).replace("STORES", stores))
    b = BPF(text=program_text(src).encode(), cflags=[f"-DN_CODES={len(codes)}"])
    try:
        b[b"caller"][ct.c_int(0)] = ct.c_uint32(os.getpid())
        os.getppid()
        compiled = {name: int(b[b"codes"][ct.c_int(i)].value) for i, name in enumerate(codes)}
        assert compiled == codes
        fields = [f[0] for f in b[b"metrics"].Key._fields_ if not f[0].startswith("_pad")]
        assert fields == list(key.names)
        assert len(b[b"errors"]) == len(key.errors)
    finally:
        b.cleanup()


def test_tracepoint_struct_matches_the_kernel_format() -> None:
    """bpf/tcp_hooks.h spells out sock_{send,recv}_length's layout: check it against tracefs."""
    hooks = (bpf_dir() / "tcp_hooks.h").read_text()
    struct = hooks[hooks.index("struct sock_length_args {"):]
    struct = struct[:struct.index("};")]
    declared = {name: int(off) for name, off in re.findall(r"\*?(\w+);\s*/\* offset (\d+)", struct)}
    root = tracefs()
    assert root is not None
    for event in ("sock_send_length", "sock_recv_length"):
        fmt = (root / "events" / "sock" / event / "format").read_text()
        actual = {m[0]: int(m[1]) for m in re.findall(r"field:[^;]*?(\w+);\s*offset:(\d+);", fmt)}
        assert {k: actual[k] for k in declared if k != "common"} == {k: v for k, v in declared.items()
                                                                     if k != "common"}


@pytest.mark.parametrize("method", ["fentry", "kprobe"])
def test_other_attach_variants_compile(method: str) -> None:
    """The fentry and kprobe variants compile here; this kernel refuses or lacks them, so a
    load or attach error (not a compile error) is the expected outcome where it does."""
    from bcc import BPF

    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    defines = [*d.metric_defines(), f"ATTACH_{method.upper()}"]
    try:
        b = BPF(text=program_text(d.source).encode(), cflags=[f"-D{x}" for x in defines])
    except Exception as e:
        assert "Failed to compile" not in str(e), e
        if method == "kprobe":  # kprobes load (the verifier accepts them) before the attach fails
            assert "Failed to attach" in str(e), e
    else:
        b.cleanup()


# --- exact counts on loopback --------------------------------------------------------

@pytest.fixture(scope="module")
def loopback_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def programs(loopback_port: int) -> Iterator[list[ProgramState]]:
    decls = metric_programs()
    results = load_programs(decls, [loopback_port])
    states = [ProgramState(d, r if isinstance(r, LoadedProgram) else None, str(r))
              for d, r in zip(decls, results, strict=True)]
    try:
        failed = [r for r in results if isinstance(r, LoadError)]
        assert not failed, failed
        for s in states:
            assert s.loaded is not None
            s.loaded.attach()
        yield states
    finally:
        for s in states:
            if s.loaded:
                s.loaded.close()


def scrape(states: list[ProgramState]) -> Scrape:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EbpfCollector(states, threading.Lock(), ErrorCounts()))
    return Scrape(generate_latest(reg).decode())


def precise_sleep(seconds: float) -> None:
    """Sleep, then spin the last stretch: a plain sleep often oversleeps on a busy machine."""
    deadline = time.perf_counter() + seconds
    time.sleep(max(0.0, seconds - 0.0015))
    while time.perf_counter() < deadline:
        pass


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "peer closed"
        buf += chunk
    return buf


def run_exchanges(port: int, n: int, delay: float) -> tuple[list[int], list[int]]:
    """n request/response exchanges on one loopback connection, the server answering after
    `delay`; returns the latencies user space saw (ns), server and client side."""
    server_ns: list[int] = []
    client_ns: list[int] = []
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        # one thread drives both ends, so thread scheduling stays out of the measured delay
        for _ in range(n):
            client.sendall(b"q" * REQUEST)
            c0 = time.monotonic_ns()
            recv_exactly(server, REQUEST)
            s0 = time.monotonic_ns()
            precise_sleep(delay)
            server.sendall(b"r" * RESPONSE)
            server_ns.append(time.monotonic_ns() - s0)
            recv_exactly(client, RESPONSE)
            client_ns.append(time.monotonic_ns() - c0)
        client.close()
        server.close()
    return server_ns, client_ns


def bucket_counts(s: Scrape, name: str, **labels: str) -> dict[float, float]:
    return {float(lab["le"]): v for lab, v in s.select(name + "_bucket", **labels)}


def in_range(buckets: dict[float, float], lo: float, hi: float) -> float:
    """Observations in (lo, hi], lo and hi being bucket bounds."""
    return buckets[hi] - buckets[lo]


@pytest.fixture(scope="module")
def exchanges(programs: list[ProgramState], loopback_port: int) -> tuple[Scrape, dict[str, list[int]]]:
    """The scrape after EXCHANGES exchanges, and what user space measured of each."""
    server_ns, client_ns = run_exchanges(loopback_port, EXCHANGES, DELAY_S)
    # the last response message is observed when the socket reaches TCP_CLOSE
    deadline = time.monotonic() + 5
    while True:
        s = scrape(programs)
        if s.total("inference_profiler_tcp_message_bytes_count") >= 4 * EXCHANGES or time.monotonic() > deadline:
            return s, {"server": server_ns, "client": client_ns}
        time.sleep(0.05)


@pytest.fixture(scope="module")
def after_exchanges(exchanges: tuple[Scrape, dict[str, list[int]]]) -> Scrape:
    return exchanges[0]


@pytest.mark.parametrize("role", ["server", "client"])
def test_latency_counts_every_exchange_around_the_delay(exchanges: tuple[Scrape, dict[str, list[int]]],
                                                        loopback_port: int, role: str) -> None:
    s, seen = exchanges[0], exchanges[1][role]
    port = str(loopback_port)
    name = "inference_profiler_tcp_latency_seconds"
    assert s.total(name + "_count", port=port, role=role) == EXCHANGES
    b = bucket_counts(s, name, port=port, role=role)
    les = sorted(b)
    kernel = {le: b[le] - (b[les[k - 1]] if k else 0) for k, le in enumerate(les)}
    i = log_linear_index(int(DELAY_S * 1e9))
    lo, at, hi = (log_linear_bound(k) / 1e9 for k in (i - 1, i, i + 1))
    assert lo < DELAY_S <= at
    assert b[lo] == 0, "nothing can answer faster than the server's delay"
    # the kernel's buckets against what user space timed around the same calls: the
    # syscalls' own few microseconds can move an exchange across a bound, nothing more
    user: dict[float, int] = {}
    for ns in seen:
        le = min(x for x in les if x >= ns / 1e9) if ns / 1e9 <= les[-2] else les[-1]
        user[le] = user.get(le, 0) + 1
    same = sum(min(kernel.get(le, 0), n) for le, n in user.items())
    assert same >= 0.95 * EXCHANGES, (sorted(kernel.items()), sorted(user.items()))
    # >= 95% around the delay, as far as this machine delivered the delay (it is shared)
    delivered = sum(1 for ns in seen if ns / 1e9 <= hi) / EXCHANGES
    assert in_range(b, lo, hi) >= min(0.95, delivered - 0.02) * EXCHANGES, (delivered, sorted(kernel.items()))
    mean = s.total(name + "_sum", port=port, role=role) / EXCHANGES
    assert abs(mean - sum(seen) / len(seen) / 1e9) < 500e-6  # preemption between the two clocks, averaged


def test_bytes_totals_equal_bytes_sent(after_exchanges: Scrape, loopback_port: int) -> None:
    s, port = after_exchanges, str(loopback_port)
    got = {(lab["role"], lab["direction"]): v for lab, v in s.select("inference_profiler_tcp_bytes_total", port=port)}
    assert got == {
        ("client", "send"): EXCHANGES * REQUEST, ("server", "recv"): EXCHANGES * REQUEST,
        ("server", "send"): EXCHANGES * RESPONSE, ("client", "recv"): EXCHANGES * RESPONSE,
    }


def test_message_sizes(after_exchanges: Scrape, loopback_port: int) -> None:
    s, port = after_exchanges, str(loopback_port)
    name = "inference_profiler_tcp_message_bytes"
    for role, direction, size in [("client", "send", REQUEST), ("server", "recv", REQUEST),
                                  ("server", "send", RESPONSE), ("client", "recv", RESPONSE)]:
        labels = {"port": port, "role": role, "direction": direction}
        assert s.total(name + "_count", **labels) == EXCHANGES, labels
        assert s.total(name + "_sum", **labels) == EXCHANGES * size, labels
        b = bucket_counts(s, name, **labels)
        i = log_linear_index(size)
        assert b[log_linear_bound(i)] - b[log_linear_bound(i - 1)] == EXCHANGES, labels


def test_socket_queue_srtt_and_self_cost(after_exchanges: Scrape, programs: list[ProgramState],
                                         loopback_port: int) -> None:
    s, port = after_exchanges, str(loopback_port)
    # every request and every response waited in a receive queue once before being read
    assert s.total("inference_profiler_tcp_socket_queue_seconds_count", port=port) == 2 * EXCHANGES
    queued = s.total("inference_profiler_tcp_socket_queue_seconds_sum", port=port)
    assert 0 < queued < 2 * EXCHANGES * DELAY_S
    srtt_n = s.total("inference_profiler_tcp_srtt_seconds_count", port=port)
    assert srtt_n >= 2 * EXCHANGES  # one sample per incoming data segment at least
    assert 0 < s.total("inference_profiler_tcp_srtt_seconds_sum", port=port) / srtt_n < 0.01
    assert s.total("inference_profiler_tcp_retransmits_total", port=port) == 0
    assert s.total("inference_profiler_ebpf_up", program="tcp_messages") == 1
    assert s.select("inference_profiler_ebpf_attach_info", program="tcp_messages", method="tracepoint")
    assert s.total("inference_profiler_ebpf_run_count_total", program="tcp_messages") >= 4 * EXCHANGES
    assert s.total("inference_profiler_ebpf_run_seconds_total", program="tcp_messages") > 0
    for st in programs:
        assert st.loaded is not None and st.loaded.read_errors() == [0, 0], st.decl.program


def test_unwatched_ports_are_not_counted(programs: list[ProgramState], loopback_port: int) -> None:
    before = scrape(programs).total("inference_profiler_tcp_bytes_total")
    other = free_port()
    assert other != loopback_port
    run_exchanges(other, 20, 0.0)
    s = scrape(programs)
    assert s.total("inference_profiler_tcp_bytes_total") == before
    assert not s.select("inference_profiler_tcp_bytes_total", port=str(other))


# --- the source under serve's config: auto / on -------------------------------------

def test_forced_unavailable_attach_method_auto_runs_without_and_on_fails() -> None:
    errors = ErrorCounts()
    src = EbpfSource(Config(ebpf="auto", ebpf_attach="kprobe", ebpf_port=[free_port()]), errors)
    try:
        by_name = {p.decl.program: p for p in src.programs}
        assert by_name["tcp_messages"].loaded is None
        assert "kprobe" in by_name["tcp_messages"].reason
        assert errors.get("ebpf", "load_failed") >= 1
    finally:
        src.stop()
    from exporter.config import ConfigError

    with pytest.raises(ConfigError, match=r"^--ebpf on: tcp_messages: no attach method available"):
        EbpfSource(Config(ebpf="on", ebpf_attach="kprobe", ebpf_port=[free_port()]), ErrorCounts())


# --- tcp-events -----------------------------------------------------------------------

def test_tcp_events_prints_each_call_while_it_runs(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "events.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen([*EXPORTER, "tcp-events", "--port", str(port), "--count", "8"],
                                stdout=f, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env())
    try:
        deadline = time.monotonic() + 60
        while b"TIME" not in out.read_bytes():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "tcp-events did not start"
            time.sleep(0.1)
        run_exchanges(port, 2, 0.0)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.read_text().splitlines()[1:]
    assert len(lines) == 8
    fields = [ln.split() for ln in lines]
    pid = str(os.getpid())
    assert all(f[1] == pid and f[-1] in ("SEND", "RECV") for f in fields), lines
    first = fields[0]
    assert first[-1] == "SEND" and first[-2] == str(REQUEST) and first[4] == f"127.0.0.1:{port}"
    assert [f[-2] for f in fields[:4]] == [str(REQUEST), str(REQUEST), str(RESPONSE), str(RESPONSE)]
    assert [f[-1] for f in fields[:4]] == ["SEND", "RECV", "SEND", "RECV"]


def _as_nobody() -> list[str]:
    """No capabilities at all (uid stays 0, so a checkout only root can read still works)."""
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]


def test_tcp_events_without_privileges_is_one_line_error() -> None:
    r = subprocess.run([*_as_nobody(), *EXPORTER, "tcp-events", "--count", "1"], capture_output=True,
                       text=True, timeout=60, cwd="/", env=clean_env())
    assert r.returncode != 0
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "CAP_BPF" in r.stderr and r.stderr.startswith("inference-profiler: error:")


def test_serve_ebpf_on_without_privileges_fails_at_start_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)
    r = subprocess.run([*_as_nobody(), *EXPORTER, "serve", "--ebpf", "on", "--triton", "none",
                        "--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(state)],
                       capture_output=True, text=True, timeout=60, cwd="/", env=clean_env())
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--ebpf on:" in r.stderr and "CAP_BPF" in r.stderr


def test_check_reports_attach_method() -> None:
    r = subprocess.run([*EXPORTER, "check", "--triton", "none", "--ebpf", "on"], capture_output=True,
                       text=True, timeout=120, env=clean_env())
    lines = [ln for ln in r.stdout.splitlines() if "ebpf" in ln]
    assert any(ln.startswith("PASS") and "tcp_messages" in ln and "attach method tracepoint" in ln
               for ln in lines), r.stdout
    assert not [ln for ln in lines if ln.startswith("FAIL")], r.stdout



def test_full_metric_map_is_counted_never_fatal() -> None:
    """With room for 3 series only, updates past them are refused, counted, and the rest goes on."""
    port = free_port()
    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    (res,) = load_programs([d], [port], extra_defines=["METRIC_SERIES=3"])
    assert isinstance(res, LoadedProgram), res
    try:
        res.attach()
        run_exchanges(port, 20, 0.0)
        map_full, read_failed = res.read_errors()
        assert map_full > 0 and read_failed == 0
        assert len(res.read_series()) == 3
        errors = ErrorCounts()
        counter = KernelErrors([ProgramState(d, res)], errors, threading.Lock())
        counter.count()
        counter.count()  # counts deltas: nothing twice
        assert errors.get("ebpf", "map_full") == map_full
    finally:
        res.close()


# --- socket state: sockets closed before their last read, reuse, a full map ------------

TCP_CLOSE = 7  # include/net/tcp_states.h
CONNECTIONS = 150


def tcp_state(s: socket.socket) -> int:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]  # tcpi_state


def wait_closed(s: socket.socket) -> None:
    """Until the kernel has taken s to TCP_CLOSE: the application's last read comes after."""
    deadline = time.monotonic() + 5
    while tcp_state(s) != TCP_CLOSE:
        assert time.monotonic() < deadline, tcp_state(s)
        time.sleep(0.0005)


def half_close_exchange(listener: socket.socket, port: int) -> None:
    """The client sends its request and shuts its side; the server answers and closes, so the
    client socket is in TIME_WAIT (TCP_CLOSE) before the client reads the answer."""
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    client.sendall(b"q" * REQUEST)
    client.shutdown(socket.SHUT_WR)
    recv_exactly(server, REQUEST)
    assert server.recv(1) == b""
    server.sendall(b"r" * RESPONSE)
    server.close()
    wait_closed(client)
    recv_exactly(client, RESPONSE)
    client.close()


def reset_after_answer_exchange(listener: socket.socket, port: int) -> None:
    """The server answers, then resets the connection: the client reads the answer after TCP_CLOSE."""
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    client.sendall(b"q" * REQUEST)
    recv_exactly(server, REQUEST)
    server.sendall(b"r" * RESPONSE)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # linger 0: RST instead of FIN
    wait_closed(client)
    recv_exactly(client, RESPONSE)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    client.close()


def short_connections(port: int, n: int, exchange: Callable[[socket.socket, int], None]) -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        for _ in range(n):
            exchange(listener, port)


def one_exchange(listener: socket.socket, port: int) -> None:
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    client.sendall(b"q" * REQUEST)
    recv_exactly(server, REQUEST)
    server.sendall(b"r" * RESPONSE)
    recv_exactly(client, RESPONSE)
    client.close()
    server.close()


def socket_entries(programs: list[ProgramState]) -> int:
    """Entries of tcp_messages' own per-socket map."""
    tm = next(p for p in programs if p.decl.program == "tcp_messages")
    assert tm.loaded is not None
    return len(list(tm.loaded.bpf[b"sockets"].keys()))


def wait_entries(programs: list[ProgramState], n: int) -> int:
    deadline = time.monotonic() + 5
    while (left := socket_entries(programs)) != n and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def port_counts(s: Scrape, port: int) -> dict[str, float]:
    p = str(port)
    out = {f"bytes {lab['role']} {lab['direction']}": v
           for lab, v in s.select("inference_profiler_tcp_bytes_total", port=p)}
    for role in ("server", "client"):
        out[f"latency {role}"] = s.total("inference_profiler_tcp_latency_seconds_count", port=p, role=role)
        for direction in ("send", "recv"):
            out[f"messages {role} {direction}"] = s.total("inference_profiler_tcp_message_bytes_count",
                                                          port=p, role=role, direction=direction)
    return out


def count_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}


def exact(n: int) -> dict[str, float]:
    """What n request/response exchanges must add on the watched port, nothing more or less."""
    out: dict[str, float] = {}
    for role, request_dir, response_dir in (("server", "recv", "send"), ("client", "send", "recv")):
        out[f"bytes {role} {request_dir}"] = n * REQUEST
        out[f"bytes {role} {response_dir}"] = n * RESPONSE
        out[f"latency {role}"] = n
        out[f"messages {role} {request_dir}"] = n
        out[f"messages {role} {response_dir}"] = n
    return dict(sorted(out.items()))


@pytest.mark.parametrize("exchange", [half_close_exchange, reset_after_answer_exchange],
                         ids=["half-close", "reset-after-answer"])
def test_sockets_closed_before_their_last_read_are_counted_exactly_and_leave_no_entry(
        programs: list[ProgramState], loopback_port: int, exchange: Callable[[socket.socket, int], None]) -> None:
    assert wait_entries(programs, 0) == 0
    before = port_counts(scrape(programs), loopback_port)
    short_connections(loopback_port, CONNECTIONS, exchange)
    assert wait_entries(programs, 0) == 0, "entries left in the sockets map"
    assert count_delta(before, port_counts(scrape(programs), loopback_port)) == exact(CONNECTIONS)


def test_unwatched_sockets_reusing_closed_sockets_memory_count_nothing(
        programs: list[ProgramState], loopback_port: int) -> None:
    """Closed watched sockets first, then many short unwatched connections: the kernel reuses
    the freed struct socks, and not one byte of theirs may land under the watched port."""
    short_connections(loopback_port, CONNECTIONS, half_close_exchange)
    short_connections(loopback_port, CONNECTIONS, reset_after_answer_exchange)
    before = scrape(programs)
    unwatched = free_port()
    short_connections(unwatched, 1000, one_exchange)
    after = scrape(programs)
    assert after.total("inference_profiler_tcp_bytes_total") == before.total("inference_profiler_tcp_bytes_total")
    assert port_counts(after, loopback_port) == port_counts(before, loopback_port)
    assert not after.select("inference_profiler_tcp_bytes_total", port=str(unwatched))
    assert wait_entries(programs, 0) == 0


def test_full_socket_map_loses_socket_state_not_bytes() -> None:
    """Room for 4 sockets and 6 connections held open: the first two connections are followed,
    the others count their bytes only (and map_full); once they close, new ones are followed again."""
    port, per_connection = free_port(), 3
    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    (res,) = load_programs([d], [port], extra_defines=["MAX_SOCKETS=4"])
    assert isinstance(res, LoadedProgram), res
    states = [ProgramState(d, res)]
    try:
        res.attach()
        assert res.bpf[b"sockets"].max_entries == 4
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))
            listener.listen(16)
            pairs = []
            for _ in range(6):
                client = socket.create_connection(("127.0.0.1", port))
                pairs.append((client, listener.accept()[0]))
            for client, server in pairs:
                for _ in range(per_connection):
                    client.sendall(b"q" * REQUEST)
                    recv_exactly(server, REQUEST)
                    server.sendall(b"r" * RESPONSE)
                    recv_exactly(client, RESPONSE)
            assert socket_entries(states) == 4
            s = scrape(states)
            assert port_counts(s, port)["latency client"] == 2 * per_connection
            assert port_counts(s, port)["latency server"] == 2 * per_connection
            exchanges = 6 * per_connection
            assert {k: v for k, v in port_counts(s, port).items() if k.startswith("bytes")} == {
                k: v for k, v in exact(exchanges).items() if k.startswith("bytes")}
            map_full, read_failed = res.read_errors()
            assert map_full > 0 and read_failed == 0
            for client, server in pairs:
                client.close()
                server.close()
            assert wait_entries(states, 0) == 0
            before = port_counts(scrape(states), port)
            one_exchange(listener, port)
        assert count_delta(before, port_counts(scrape(states), port)) == exact(1)
    finally:
        res.close()


def prog_alive(prog_id: int) -> bool:
    """Whether the kernel still has this program (BPF_PROG_GET_FD_BY_ID, as root)."""
    attr = bytearray(struct.pack("<I", prog_id) + bytes(12))
    try:
        fd = bpfsys.bpf(13, attr)
    except OSError:
        return False
    os.close(fd)
    return True


def test_source_gets_programs_from_the_compile_child_and_unloads_them_at_stop() -> None:
    """serve compiles in a child (exporter/ebpf/handoff.py): the daemon holds the attached
    programs by their fds alone, counts exactly with plain bpf(2) reads, and its stop is the end
    of them in the kernel (the child left nothing behind)."""
    port = free_port()
    src = EbpfSource(Config(ebpf="on", ebpf_port=[port], ebpf_max_sockets=16), ErrorCounts())
    try:
        tm = next(p.loaded for p in src.programs if p.decl.program == "tcp_messages")
        assert isinstance(tm, HandedProgram)
        assert tm.maps["sockets"].info.max_entries == 16  # --ebpf-max-sockets reached the child's compile
        assert tm.attached and tm.links, "the child attached them: the links are what this process holds"
        ids = [int(line.split()[1]) for fd in tm.progs for line in Path(f"/proc/self/fdinfo/{fd}").read_text()
               .splitlines() if line.startswith("prog_id:")]
        assert len(ids) == len(tm.progs) and all(map(prog_alive, ids))
        src.start()
        run_exchanges(port, 5, 0.0)
        s = scrape(src.programs)
        assert port_counts(s, port)["latency server"] == port_counts(s, port)["latency client"] == 5
        assert tm.read_errors() == [0, 0]
    finally:
        src.stop()
    assert not any(map(prog_alive, ids)), "stop closed the last references: the programs are gone"


def test_a_compile_child_that_fails_says_why_in_one_line(tmp_path: Path) -> None:
    decl = metric_programs()[0]
    broken = tmp_path / "bpf"
    broken.mkdir()
    (broken / "histogram.yaml").write_text("key: nonsense\n")
    (broken / "tcp_messages.yaml").write_text((bpf_dir() / "tcp_messages.yaml").read_text())
    moved = dataclasses.replace(decl, source=broken / decl.source.name)
    problem, results = handoff.load_in_child([moved], [free_port()])
    assert results == [] and problem is not None and "\n" not in problem
    assert problem.startswith("the BPF compile child failed: DeclarationError"), problem


def test_only_the_hooks_the_selected_metrics_need_are_compiled_and_attached() -> None:
    """--ebpf-metric: families no one asked for cost nothing, not even a hook in the kernel."""
    port = free_port()
    every = EbpfSource(Config(ebpf="on", ebpf_port=[port]), ErrorCounts())
    try:
        full = next(p.loaded for p in every.programs)
        assert isinstance(full, HandedProgram)
        full_links, full_defines = len(full.links), set(full.defines)
    finally:
        every.stop()
    chosen = ["tcp_latency_seconds", "tcp_bytes_total"]
    src = EbpfSource(Config(ebpf="on", ebpf_port=[port], ebpf_metric=chosen), ErrorCounts())
    try:
        tm = next(p.loaded for p in src.programs)
        assert isinstance(tm, HandedProgram)
        assert tm.defines == () and {"HAVE_TCP_PROBE", "HAVE_TCP_RETRANSMIT"} <= full_defines
        assert len(tm.links) == full_links - len(full_defines), "one hook less per optional part left out"
        src.start()
        run_exchanges(port, 7, 0.0)
        reg = CollectorRegistry(auto_describe=False)
        for c in src.collectors():
            reg.register(c)
        s = Scrape(generate_latest(reg).decode())
        families = re.findall(r"^# TYPE inference_profiler_(tcp_\w+) ", s.text, re.M)
        assert sorted(families) == ["tcp_bytes_total", "tcp_latency_seconds"], families
        assert port_counts(s, port)["latency server"] == port_counts(s, port)["latency client"] == 7
    finally:
        src.stop()


def test_a_compile_child_that_dies_without_a_word_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff.sys, "executable", "/bin/false")
    problem, results = handoff.load_in_child(metric_programs(), [free_port()])
    assert results == [] and problem == "the BPF compile child ended without handing programs over: exit status 1"
