"""Starting and stopping a real `tritonserver` from the nvidia-pytriton wheel on loopback.

Used by `demo`, the tests and the benchmarks. The facts it relies on (where the binary
and the python backend live, which environment the stub needs, how rolling traces are
configured and flushed) are noted where they are used below.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger("demo.triton")

MODEL = "add_sub"
ENSEMBLE = "add_sub_ensemble"
# decoupled (streaming) text models: responses sent from execute(), or from a thread after it returned
STREAM = "token_stream"
STREAM_THREAD = "token_stream_thread"
STREAM_ENSEMBLE = "token_stream_ensemble"  # token_stream, then text_upper once per streamed token
TEXT = "text_upper"  # unary text model, for HTTP generate
UNARY_MODELS = (MODEL, ENSEMBLE)
ALL_MODELS = (MODEL, ENSEMBLE, STREAM, STREAM_THREAD, TEXT, STREAM_ENSEMBLE)
LOG_TAIL_LINES = 12


class TritonError(Exception):
    """Triton could not be found, started or stopped; the message is one line plus its log tail."""


@dataclass(frozen=True)
class TritonInstall:
    root: Path  # site-packages/pytriton/tritonserver
    binary: Path
    backends: Path
    libs: Path | None  # the wheel's bundled shared libraries


def triton_install() -> TritonInstall:
    """Where the wheel put tritonserver; the python backend stub is copied beside the backend if needed."""
    spec = importlib.util.find_spec("pytriton")  # located, not imported: only its files are needed
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("the nvidia-pytriton wheel is not installed; run scripts/setup.sh")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    root = pkg / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonError(f"no tritonserver binary at {binary}; reinstall nvidia-pytriton (scripts/setup.sh)")
    backends = root / "backends"
    stub = backends / "python" / "triton_python_backend_stub"
    if not stub.exists():
        ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        src = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
        if not src.exists():
            raise TritonError(f"the wheel has no python backend stub for Python {ver} ({src})")
        try:
            shutil.copy2(src, stub)
        except OSError as e:
            raise TritonError(f"cannot copy the python backend stub to {stub}: {e.strerror}; "
                              "run scripts/setup.sh") from None
    libs = pkg.parent / "nvidia_pytriton.libs"
    return TritonInstall(root, binary, backends, libs if libs.is_dir() else None)


def triton_environment(install: TritonInstall) -> dict[str, str]:
    """The stub finds numpy through `python3` on PATH and needs libpython from LIBDIR."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "/usr/bin:/bin")])
    libdirs = [str(sysconfig.get_config_var("LIBDIR") or "")]
    if install.libs is not None:
        libdirs.append(str(install.libs))
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def copy_model_repository(dest: str | os.PathLike[str], models: Sequence[str] = ALL_MODELS) -> Path:
    """Copy the example models named in `models` (an ensemble needs its steps too) into `dest`/models."""
    src = importlib.resources.files("exporter") / "demo_models"
    out = Path(dest) / "models"
    with importlib.resources.as_file(src) as src_path:
        for name in models:
            if not (src_path / name / "config.pbtxt").is_file():
                raise TritonError(f"no example model {name!r} in {src_path}")
            shutil.copytree(src_path / name, out / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            (out / name / "1").mkdir(exist_ok=True)  # an ensemble needs its (empty) version directory
    return out


# errors Triton logs on every CPU-only machine; they say nothing about a failure
_CPU_NOISE = ("CudaDriverHelper", "CUDA driver", "unable to create stream", "NVML", "DCGM")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Triton's error lines and the end of its log, without its option tables."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    own = text.rsplit("==== start ", 1)[-1].splitlines()[1:]  # this start's lines only
    plain = [ln for ln in own if ln.strip() and not ln.startswith(("+", "|"))]
    errors = [ln for ln in plain if ((ln[:1] == "E" and ln[1:5].isdigit()) or ln.startswith("error"))
              and not any(n in ln for n in _CPU_NOISE)]
    out = errors[-(lines // 2):]
    out += [ln for ln in plain[len(plain) - (lines - len(out)):] if ln not in out]
    return "\n".join(out) or "(empty log)"


def _complete(path: Path) -> bool:
    """Triton writes a file in place and ends it with `]`."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16))
            return f.read().rstrip().endswith(b"]")
    except OSError:
        return False


_running: weakref.WeakSet[TritonServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)


class TritonServer:
    """One tritonserver process on 127.0.0.1 with optional rolling traces.

    Ports not given are picked free; `restart()` keeps ports and trace path, so the
    trace file index starts again at .0 like a real Triton restart.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        *,
        trace_file: str | os.PathLike[str] | None = None,
        log_frequency: int = 100,
        trace_rate: int = 1,
        trace_level: str = "TIMESTAMPS",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 60.0,
        exit_timeout: int = 5,
        host: str = "127.0.0.1",
    ) -> None:
        self.install = triton_install()
        self.model_repository = Path(model_repository)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.trace_file = Path(trace_file) if trace_file is not None else None
        self.log_frequency = log_frequency
        self.trace_rate = trace_rate
        self.trace_level = trace_level
        self._fixed_ports = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._pick_ports()
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.host = host
        self.log_path = self.workdir / "triton.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # --- addresses ---------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def http_address(self) -> str:
        """host:port as tritonclient.http wants it."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _pick_ports(self) -> tuple[int, int, int]:
        picked: list[int] = []
        for p in self._fixed_ports:
            port = p if p is not None else free_port()
            while port in picked:
                port = free_port()
            picked.append(port)
        return picked[0], picked[1], picked[2]

    def command(self) -> list[str]:
        cmd = [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.install.backends}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--log-verbose=0",
            # at shutdown Triton waits this long for clients' idle keep-alive connections
            f"--exit-timeout-secs={self.exit_timeout}",
        ]
        if self.trace_file is not None:
            cmd += [
                "--trace-config", f"triton,file={self.trace_file}",
                "--trace-config", f"triton,log-frequency={self.log_frequency}",
                "--trace-config", f"rate={self.trace_rate}",
                "--trace-config", f"level={self.trace_level}",
            ]
        return cmd + self.extra_args

    # --- life cycle --------------------------------------------------------
    def start(self) -> TritonServer:
        if self.running():
            return self
        for attempt in range(3):
            try:
                self._start_once()
                return self
            except TritonError as e:
                # another process took an auto-picked port between the pick and the bind
                if "already in use" in str(e) and attempt < 2 and None in self._fixed_ports:
                    log.info("a Triton port was taken meanwhile; picking new ports")
                    self.http_port, self.grpc_port, self.metrics_port = self._pick_ports()
                    continue
                # Triton 2.51's python backend can abort while stubs start on a loaded machine
                # (boost::interprocess::lock_exception): a fresh start does not meet it again
                if "lock_exception" in str(e) and attempt < 2:
                    log.warning("tritonserver aborted while its python models started; starting it again")
                    continue
                raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        if self.trace_file is not None:
            self.trace_file.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            logf.write(f"==== start {self.starts}: {' '.join(self.command())}\n".encode())
            logf.flush()
            # own session: a terminal's Ctrl-C reaches us, and we stop Triton in order
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                env=triton_environment(self.install), cwd=self.workdir, start_new_session=True,
            )
        _running.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self._kill()
            raise
        log.info("Triton ready (pid %d): HTTP %s, gRPC %s, metrics %s", self.proc.pid,
                 self.http_url, self.grpc_address, self.metrics_url)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        url = self.http_url + "/v2/health/ready"
        while True:
            code = self.proc.poll()
            if code is not None:
                tail = _tail(self.log_path)
                why = "a port is already in use" if "already in use" in tail.lower() else f"exit code {code}"
                raise TritonError(f"tritonserver exited during startup ({why}); log {self.log_path}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TritonError(f"tritonserver not ready after {self.startup_timeout:.0f}s; "
                                  f"log {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.1)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def flush_traces(self, timeout: float = 5.0) -> None:
        """Any POST to /v2/trace/setting makes Triton write pending traces to the next file index.

        Returns once every trace file is complete (ends with `]`). A trace is pending only
        once Triton released it, a moment after the client got its response, so a caller
        that needs every trace of its requests flushes until it sees them all.
        """
        req = urllib.request.Request(self.http_url + "/v2/trace/setting", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
        deadline = time.monotonic() + timeout
        while not all(_complete(p) for p in self.trace_files()) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (Triton flushes the remaining traces), wait; SIGKILL past `timeout`."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver (pid %d) did not stop within %.0fs; killing it", proc.pid, timeout)
        self._kill()
        _running.discard(self)
        return proc.returncode

    def _kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        # the process group is Triton and its python backend stubs, all started here
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def restart(self) -> TritonServer:
        """Stop and start again on the same ports and trace path (trace index restarts at .0)."""
        self.stop()
        self._start_once()
        return self

    def trace_files(self) -> list[Path]:
        """The rolling files written so far, in index order (plus the single file of log-frequency 0)."""
        if self.trace_file is None:
            return []
        d, name = self.trace_file.parent, self.trace_file.name
        out: list[tuple[int, Path]] = []
        for p in d.glob(name + ".*"):
            suffix = p.name[len(name) + 1:]
            if suffix.isdigit():
                out.append((int(suffix), p))
        files = [p for _, p in sorted(out)]
        if self.trace_file.exists():
            files.append(self.trace_file)
        return files

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
