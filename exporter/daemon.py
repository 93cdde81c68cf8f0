"""`serve`: builds every configured source, serves /metrics, stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import threading
from types import FrameType

from prometheus_client import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from .config import Config, ConfigError
from .server import MetricsServer
from .source import ErrorCounts, SelfCollector, Source
from .startup import check_files

log = logging.getLogger("daemon")


def build_sources(cfg: Config, errors: ErrorCounts) -> list[Source]:
    """Every source the config turns on. Sources never import each other."""
    from .traces.source import TraceSource

    sources: list[Source] = []
    if cfg.trace_file or cfg.otlp_listen:
        traces = TraceSource(cfg, errors)
        sources.append(traces)
        if cfg.otlp_listen:  # a peer producer: it hands its batches to the trace aggregator
            from .otlp.source import OtlpSource

            sources.append(OtlpSource(cfg, errors, traces.aggregator))
        if cfg.ebpf != "off" and cfg.wire_join != "off":
            from .wire.source import WireSource, join_runs

            if join_runs(cfg):
                sources.append(WireSource(cfg, errors, traces.aggregator))
    if cfg.triton:
        from .triton.source import TritonSource

        sources.append(TritonSource(cfg, errors))
    if cfg.perf_analyzer_csv:
        from .triton.perf_source import PerfAnalyzerSource

        sources.append(PerfAnalyzerSource(cfg, errors))
    if cfg.ebpf != "off":
        from .ebpf.source import EbpfSource

        sources.append(EbpfSource(cfg, errors))
    return sources


def release_freed_heap() -> None:
    """Hand the heap freed since start back to the kernel (glibc keeps it): the state load's
    temporaries, and where BCC compiled in this process (no handoff), about 90 MB of its heap."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        check_files(cfg)  # what the config names on this machine: once, at start-up
        self.errors = ErrorCounts()
        # our collectors describe() themselves; ProcessCollector is described by one cheap collect()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ProcessCollector(registry=None))  # the shared process_* names
        self.sources = build_sources(cfg, self.errors)
        if cfg.ebpf != "off":
            release_freed_heap()
        owners: list[tuple[str, Collector]] = [(s.name, c) for s in self.sources for c in s.collectors()]
        # last: errors a scrape-time fetch counts show in the same scrape as its triton_up
        owners.append(("self", SelfCollector(self.errors)))
        for i, (owner, c) in enumerate(owners):
            try:
                self.registry.register(c)
            except ValueError as e:  # client_python's DuplicateTimeseries: one family, two sources
                names = _family_names(c)
                other = next((o for o, d in owners[:i] if names & _family_names(d)), "self")
                culprit = owner if owner != "self" else other
                raise ConfigError(f"source {culprit} would serve a family another source serves ({e}); "
                                  "rename it (eBPF families are named in bpf/*.yaml)") from None
        host, port = cfg.listen_host_port
        ssl_context, auth = None, None
        if cfg.web_config_file:
            from .webconfig import load_web_config

            ssl_context, auth = load_web_config(cfg.web_config_file)
        try:
            self.server = MetricsServer(self.registry, host, port, self.ready, ssl_context, auth)
        except OSError as e:  # only the bind: other OSErrors keep their own message
            raise ConfigError(f"cannot listen on {cfg.listen}: {e.strerror}; pick another --listen") from None
        self._stop = threading.Event()

    def ready(self) -> bool:
        return all(s.ready() for s in self.sources)

    def start(self) -> None:
        for s in self.sources:
            s.start()
        self.server.start()
        names = ", ".join(s.name for s in self.sources) or "none"
        log.info("serving /metrics on %s (sources: %s)", self.cfg.listen, names,
                 extra={"fields": {"listen": self.cfg.listen, "sources": [s.name for s in self.sources]}})

    def stop(self) -> None:
        self._stop.set()
        self.server.stop()
        for s in reversed(self.sources):
            try:
                s.stop()
            except Exception:
                log.exception("stopping source %s failed", s.name)

    def run_forever(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()
            log.info("stopped")


def _family_names(c: Collector) -> set[str]:
    describe = getattr(c, "describe", None)
    return {m.name for m in describe()} if describe is not None else set()
