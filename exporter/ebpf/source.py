"""The eBPF source: loads the declared programs when built, attaches them at start, polls their
error counters, unloads on stop."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence

from prometheus_client.registry import Collector

from ..config import Config, ConfigError
from ..polling import PollThread
from ..source import ErrorCounts
from . import handoff
from .collector import EbpfCollector, ProgramState
from .declaration import DeclarationError, metric_key, metric_programs
from .loader import LoadError, Program, SeriesKey, environment_problem, load_programs
from .pods import NO_POD, PodResolver, pod_resolver

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


def program_defines(cfg: Config, pod_labels: bool) -> list[str]:
    """What the programs are compiled with beyond their declaration: serve and check alike."""
    return [f"MAX_SOCKETS={cfg.ebpf_max_sockets}", *(["POD_LABELS"] if pod_labels else [])]


class GonePods:
    """Deletes the series of cgroups gone for `forget_seconds` from the kernel maps (polled).

    A gone cgroup whose labels a live cgroup still has (a restarted container of a pod, or
    NO_POD: every socket outside a pod) hands its counts to user space under those labels, so
    no exposed series goes backwards: into one anchor cgroup per pod (the first of it to go),
    into cgroup 0 outside pods, so restarts do not grow them. Once no live cgroup has a pod's
    labels (the pod is gone) its series go, kernel and user space.
    """

    def __init__(self, programs: list[ProgramState], pods: PodResolver, lock: threading.Lock,
                 forget_seconds: float) -> None:
        self.programs = programs
        self.pods = pods
        self.lock = lock
        self.forget_seconds = forget_seconds
        self._anchors: dict[tuple[str, str, str], int] = {}  # pod labels -> cgroup its retired series use

    def sweep(self) -> None:
        with self.lock:
            kernel: dict[int, list[tuple[ProgramState, SeriesKey]]] = defaultdict(list)
            cgroups: set[int] = set()
            for p in self.programs:
                at = self._at(p)
                if at < 0:
                    continue
                cgroups |= {k[at] for k in p.retired}
                if p.loaded is not None:
                    for k in p.loaded.read_series():
                        kernel[k[at]].append((p, k))
            cgroups |= set(kernel)
            cgroups.discard(0)
            now = self.pods.clock()
            gone = {c: since for c in cgroups if (since := self.pods.gone_since(c)) is not None}
            live = {self.pods.labels(c) for c in cgroups if c not in gone}
            for c, since in gone.items():
                if now - since < self.forget_seconds:
                    continue
                labels = self.pods.labels(c)
                anchor: int | None = None  # None: the pod is gone, its series with it
                if labels == NO_POD:
                    anchor = 0
                elif labels in live:
                    anchor = self._anchors.setdefault(labels, c)
                self._move(kernel.get(c, []), anchor)
                if anchor is None:
                    self._drop_retired(c)
                if anchor != c:
                    self.pods.forget(c)
            for labels, c in list(self._anchors.items()):
                if labels not in live:
                    self._drop_retired(c)
                    self.pods.forget(c)
                    del self._anchors[labels]

    def _at(self, p: ProgramState) -> int:
        return metric_key(p.decl.source.parent).pod_at

    def _drop_retired(self, cgroup: int) -> None:
        for p in self.programs:
            at = self._at(p)
            p.retired = {k: v for k, v in p.retired.items() if k[at] != cgroup}

    def _move(self, series: list[tuple[ProgramState, SeriesKey]], anchor: int | None) -> None:
        """Delete these kernel series, their counts added to user space under `anchor` (unless None)."""
        by_program: dict[int, list[SeriesKey]] = defaultdict(list)
        for p, k in series:
            by_program[id(p)].append(k)
        for p in self.programs:
            keys = by_program.get(id(p))
            if not keys or p.loaded is None:
                continue
            if anchor is not None:
                values = p.loaded.read_series()
                at = self._at(p)
                for k in keys:
                    n, total = values.get(k, (0, 0))
                    kept = (*k[:at], anchor, *k[at + 1:])
                    n0, total0 = p.retired.get(kept, (0, 0))
                    p.retired[kept] = (n0 + n, total0 + total)
            p.loaded.delete_series(keys)


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
        self._sweeper: PollThread | None = None
        self.pods = pod_resolver(cfg)
        self._load()
        self.kernel_errors = KernelErrors(self.programs, self.errors, self.lock)

    def _load(self) -> None:
        try:
            declared = metric_programs()
        except DeclarationError as e:
            self._refuse(str(e))
            return
        selected = self.cfg.ebpf_metric
        decls = [d for d in declared if d.wanted(selected)]  # only what the config needs is compiled
        for d in declared:
            if d not in decls:
                log.info("eBPF program %s not compiled: no --ebpf-metric needs it", d.program)
        defines = program_defines(self.cfg, self.pods is not None)
        results: Sequence[Program | LoadError]
        # compiled in a child that hands the loaded programs over, BCC never enters this process
        # (where the daemon cannot read maps by itself, it loads them here)
        by_child = handoff.available()
        problem = environment_problem(bcc=not by_child)
        if problem is None and by_child:
            problem, results = handoff.load_in_child(decls, self.cfg.ebpf_port, self.cfg.ebpf_attach, defines,
                                                     selected)
        elif problem is None:
            results = load_programs(decls, self.cfg.ebpf_port, self.cfg.ebpf_attach, defines, selected)
        if problem:
            # the same reason for every program: one line, not one per program
            self._refuse(problem)
            self.programs = [ProgramState(d, None, problem) for d in decls]
            return
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
        return [EbpfCollector(self.programs, self.lock, self.errors, self.cfg.ebpf_port,
                              self.pods.labels if self.pods else None, self.cfg.ebpf_metric,
                              self.cfg.ebpf_buckets, self.cfg.native_schema)]

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
            if self.pods is not None:
                log.info("eBPF series labelled with pods: cgroups under %s, containers from %s",
                         self.pods.mount, self.pods.log_dir)
                gone = GonePods(self.programs, self.pods, self.lock, self.cfg.kubernetes_forget_seconds)
                self._sweeper = PollThread("ebpf-pods", gone.sweep, max(self.cfg.kubernetes_refresh_seconds, 0.1),
                                           lambda reason: self.errors.inc("ebpf", reason), log)
                self._sweeper.start()

    def stop(self) -> None:
        for t in (self._thread, self._sweeper):
            if t is not None:
                t.stop(timeout=5)
        with self.lock:
            for p in self.programs:
                if p.loaded is not None:
                    p.loaded.close()
                    p.loaded = None

    def ready(self) -> bool:
        return True
