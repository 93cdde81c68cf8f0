"""The eBPF source: loads the declared programs when built, attaches them at start, polls their
error counters, unloads on stop."""

from __future__ import annotations

import logging
import threading

from prometheus_client.registry import Collector

from ..config import Config, ConfigError
from ..polling import PollThread
from ..source import ErrorCounts
from .collector import EbpfCollector, ProgramState
from .declaration import DeclarationError, metric_key, metric_programs
from .loader import LoadError, environment_problem, load_programs

log = logging.getLogger("ebpf")


class KernelErrors:
    """Kernel-side failures (map full, failed reads) into errors_total{source="ebpf"}, as deltas."""

    def __init__(self, programs: list[ProgramState], errors: ErrorCounts, lock: threading.Lock) -> None:
        self.programs = programs
        self.errors = errors
        self.lock = lock
        self._seen: dict[tuple[str, int], int] = {}

    def count(self) -> None:
        with self.lock:
            for p in self.programs:
                if p.loaded is None:
                    continue
                reasons = metric_key(p.decl.source.parent).errors
                for slot, n in enumerate(p.loaded.read_errors()):
                    key = (p.decl.program, slot)
                    delta = n - self._seen.get(key, 0)
                    if delta > 0 and slot < len(reasons):
                        self.errors.inc("ebpf", reasons[slot], delta)
                        if key not in self._seen:  # the first time only: the counter says the rest
                            log.warning("eBPF %s: %s in the kernel (counted in errors_total)",
                                        p.decl.program, reasons[slot])
                        self._seen[key] = n


class EbpfSource:
    """`--ebpf auto` runs without the programs the kernel refuses (saying why); `on` fails instead.

    Built, it loads the programs (compiled and verified by the kernel); start() attaches them.
    """

    name = "ebpf"

    def __init__(self, cfg: Config, errors: ErrorCounts) -> None:
        self.cfg = cfg
        self.errors = errors
        self.lock = threading.Lock()
        self.programs: list[ProgramState] = []
        self._thread: PollThread | None = None
        self._load()
        self.kernel_errors = KernelErrors(self.programs, self.errors, self.lock)

    def _load(self) -> None:
        try:
            decls = metric_programs()
        except DeclarationError as e:
            self._refuse(str(e))
            return
        problem = environment_problem()
        if problem:
            # the same reason for every program: one line, not one per program
            self._refuse(problem)
            self.programs = [ProgramState(d, None, problem) for d in decls]
            return
        results = load_programs(decls, self.cfg.ebpf_port, self.cfg.ebpf_attach,
                                [f"MAX_SOCKETS={self.cfg.ebpf_max_sockets}"])
        failed = [r for r in results if isinstance(r, LoadError)]
        if failed and self.cfg.ebpf == "on":
            for r in results:
                if not isinstance(r, LoadError):
                    r.close()
            raise ConfigError(f"--ebpf on: {failed[0]}; fix that or pass --ebpf auto")
        for d, r in zip(decls, results, strict=True):
            if isinstance(r, LoadError):
                log.warning("eBPF program %s not running: %s", d.program, r)
                self.errors.inc("ebpf", "load_failed")
                self.programs.append(ProgramState(d, None, str(r)))
            else:
                self.programs.append(ProgramState(d, r))

    def _refuse(self, reason: str) -> None:
        if self.cfg.ebpf == "on":
            raise ConfigError(f"--ebpf on: {reason}; or pass --ebpf auto/off")
        log.warning("eBPF collection off: %s", reason)
        self.errors.inc("ebpf", "load_failed")

    def collectors(self) -> list[Collector]:
        return [EbpfCollector(self.programs, self.lock, self.errors, self.cfg.ebpf_port)]

    def start(self) -> None:
        refused: list[LoadError] = []
        with self.lock:
            for p in self.programs:
                if p.loaded is None:
                    continue
                try:
                    p.loaded.attach()
                except LoadError as e:
                    p.loaded.close()
                    p.loaded, p.reason = None, str(e)
                    refused.append(e)
                    log.warning("eBPF program %s not running: %s", p.decl.program, e)
                    self.errors.inc("ebpf", "load_failed")
                    continue
                extra = f" (+{', '.join(p.loaded.defines)})" if p.loaded.defines else ""
                log.info("eBPF program %s attached by %s%s, ports %s", p.decl.program, p.loaded.method, extra,
                         ",".join(map(str, self.cfg.ebpf_port)))
        if refused and self.cfg.ebpf == "on":
            self.stop()
            raise ConfigError(f"--ebpf on: {refused[0]}; fix that or pass --ebpf auto")
        if any(p.loaded for p in self.programs):
            self._thread = PollThread("ebpf-errors", self.kernel_errors.count, 1.0,
                                      lambda reason: self.errors.inc("ebpf", reason), log)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop(timeout=5)
        with self.lock:
            for p in self.programs:
                if p.loaded is not None:
                    p.loaded.close()
                    p.loaded = None

    def ready(self) -> bool:
        return True
