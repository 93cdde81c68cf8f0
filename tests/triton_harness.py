"""Real-Triton test harness: fixtures that start `tritonserver` from the nvidia-pytriton
wheel with rolling traces, and the exporter as a subprocess; everything is stopped at
teardown, also when the test fails.

Registered from conftest.py (`pytest_plugins`). Any test using `triton_server` or
`triton_factory` is marked `triton` automatically (skipped only where the wheel is
missing, a failure under INFPROF_REQUIRE=all).

    def test_x(triton_server):                      # shared per module, traces at .trace_file
        send_requests(triton_server.http_address, triton_server.grpc_address, plan_for(5))
        triton_server.flush_traces()

    def test_y(triton_factory, exporter_factory):   # a private Triton and exporter
        t = triton_factory(log_frequency=0)
        e = exporter_factory("--trace-file", str(t.trace_file), "--triton", "none")
        samples = e.wait_for(lambda m: m.total("inference_profiler_traces_total") > 0)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo.launcher import UNARY_MODELS, TritonServer, copy_model_repository, free_port

TRITON_FIXTURES = ("triton_server", "triton_factory")
# the installed console script, as users run it
_SCRIPT = Path(sys.executable).parent / "inference-profiler"
EXPORTER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "exporter.cli"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in TRITON_FIXTURES):
            item.add_marker(pytest.mark.triton)


def start_triton(workdir: Path, **kwargs: Any) -> TritonServer:
    """A started Triton with the example models (`models`, default add_sub and its ensemble);
    rolling traces at workdir/traces/trace.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    repo = copy_model_repository(workdir, kwargs.pop("models", UNARY_MODELS))
    kwargs.setdefault("trace_file", workdir / "traces" / "trace.json")
    kwargs.setdefault("log_frequency", 20)
    kwargs.setdefault("trace_rate", 1)
    return TritonServer(repo, workdir, **kwargs).start()


def read_trace_objects(files: list[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in files:
        data = json.loads(f.read_bytes())
        assert isinstance(data, list), f
        out.extend(data)
    return out


def flush_until_traced(server: TritonServer, top_level: int, timeout: float = 20.0) -> list[Path]:
    """Flush Triton's traces until the files hold `top_level` traces without parent_id
    (Triton releases a trace a moment after the response, so one flush can be early)."""
    deadline = time.monotonic() + timeout
    while True:
        server.flush_traces()
        files = server.trace_files()
        n = sum(1 for o in read_trace_objects(files) if "model_name" in o and "parent_id" not in o)
        if n >= top_level:
            return files
        if time.monotonic() > deadline:
            raise AssertionError(f"Triton wrote {n} top-level traces, expected {top_level}; files {files}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """One Triton per test module: add_sub + add_sub_ensemble, rolling traces (rate 1,
    log-frequency 20). Tests sharing it must not assume the trace files are theirs alone."""
    server = start_triton(tmp_path_factory.mktemp("triton"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def triton_factory(tmp_path: Path) -> Iterator[Callable[..., TritonServer]]:
    """Start private Tritons (keyword arguments as TritonServer); all are stopped at teardown."""
    servers: list[TritonServer] = []

    def make(**kwargs: Any) -> TritonServer:
        s = start_triton(tmp_path / f"triton{len(servers)}", **kwargs)
        servers.append(s)
        return s

    try:
        yield make
    finally:
        for s in servers:
            s.stop()


class Scrape:
    """One /metrics answer, parsed: sample lookups by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                self.samples.append((s.name, dict(s.labels), float(s.value)))

    def select(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for n, lab, v in self.samples
                if n == name and all(lab.get(k) == v_ for k, v_ in labels.items())]

    def total(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.select(name, **labels))


class ExporterProcess:
    """`inference-profiler <command> ...` as a subprocess, output to a log file."""

    def __init__(self, args: list[str], workdir: Path, listen_port: int, command: str = "serve") -> None:
        self.url = f"http://127.0.0.1:{listen_port}"
        self.log_path = workdir / f"exporter-{listen_port}.log"
        self.args = [*EXPORTER, command, *args]
        env = dict(os.environ)
        env.pop("INFPROF_REQUIRE", None)  # a test variable, not a config key
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.args, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=workdir,
                                         start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return str(r.read().decode())

    def scrape(self) -> Scrape:
        return Scrape(self.get("/metrics"))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/readyz", timeout=1)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise AssertionError(f"exporter not ready after {timeout}s:\n{self.log()[-3000:]}")

    def wait_join(self, timeout: float = 120.0) -> None:
        """The socket join's program compiles after the daemon is ready (longer on a busy machine):
        wait for its feed, so that load sent from here on is joined."""
        deadline = time.monotonic() + timeout
        while "socket join on" not in self.log():
            assert "socket join off" not in self.log(), self.log()[-2000:]
            assert time.monotonic() < deadline, f"no socket join after {timeout}s:\n{self.log()[-2000:]}"
            time.sleep(0.2)

    def wait_for(self, cond: Callable[[Scrape], bool], timeout: float = 30.0) -> Scrape:
        """Scrape until `cond` holds; fails with the last scrape's relevant lines otherwise."""
        deadline = time.monotonic() + timeout
        last: Scrape | None = None
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                last = self.scrape()
                if cond(last):
                    return last
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                lines = [ln for ln in (last.text if last else "").splitlines() if "traces_total" in ln]
                raise AssertionError(f"condition not met after {timeout}s; last traces_total lines: "
                                     f"{lines}\nexporter log tail:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


@pytest.fixture
def exporter_factory(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """Start `inference-profiler serve ARGS --listen 127.0.0.1:<free>` (plus a private
    --state-dir unless given) and wait for /readyz; all are stopped at teardown."""
    procs: list[ExporterProcess] = []

    def make(*args: str, ready: bool = True) -> ExporterProcess:
        a = list(args)
        if "--state-dir" not in a:
            a += ["--state-dir", str(tmp_path / f"state{len(procs)}")]
        port = free_port()
        a += ["--listen", f"127.0.0.1:{port}"]
        p = ExporterProcess(a, tmp_path, port)
        procs.append(p)
        if ready:
            p.wait_ready()
        return p

    try:
        yield make
    finally:
        for p in procs:
            p.stop()


@contextmanager
def trace_file_scrape(trace_file: Path, workdir: Path, traces: int) -> Iterator[Scrape]:
    """A trace-file-only exporter (no Triton endpoints, no eBPF) over Triton's rolling files,
    scraped once it has counted `traces` traces; stopped afterwards."""
    port = free_port()
    exporter = ExporterProcess(["--trace-file", str(trace_file), "--state-dir", str(workdir / "state"),
                                "--listen", f"127.0.0.1:{port}", "--triton", "none", "--ebpf", "off",
                                "--trace-poll-seconds", "0.2"], workdir, port)
    try:
        exporter.wait_ready()
        yield exporter.wait_for(lambda m: m.total("inference_profiler_traces_total") >= traces)
    finally:
        exporter.stop()
