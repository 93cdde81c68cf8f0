"""The wire join as a source of `serve`: the socket_turns recorder feeding a TurnWindow that
the trace aggregator joins each batch against.

It serves no family of its own: the joined stages, segments and join results are counted
by the trace aggregator with the rest of each batch, so they are committed with it and a
restart counts nothing twice. Where the join's program cannot load, every traced request is
counted `unsupported`, so the join results still add up to the traces; the daemon goes on
(also with `--ebpf on`: the join is no reason to stop it), the error logged and counted as
errors_total{source="wire", reason="load_failed"}. Records the kernel could not send count
errors_total{source="wire"} by the program's reason: ring_full, rate, sockets_full.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from prometheus_client.registry import Collector

from ..config import Config
from ..source import ErrorCounts
from ..traces.aggregator import TraceAggregator
from .held import Joiner
from .join import Request, Wire
from .live import TurnFeed, TurnWindow

log = logging.getLogger("wire")


def join_runs(cfg: Config) -> bool:
    """Whether `serve`, reading traces, joins them to socket turns: `--wire-join on` where eBPF is
    not off; `auto` where, besides, eBPF watches one of the join's ports
    (--wire-http-port, --wire-grpc-port among --ebpf-port) and the kernel lets it run here (the
    check `--ebpf auto` makes); where not, it says why in one line and the join stays off."""
    if cfg.ebpf == "off" or cfg.wire_join == "off":
        return False
    if cfg.wire_join == "on":
        return True
    ports = sorted(set(cfg.wire_http_port) | set(cfg.wire_grpc_port))
    if not set(ports) & set(cfg.ebpf_port):
        log.info("socket join off (--wire-join auto): eBPF watches ports %s, the join ports %s (set "
                 "--wire-http-port/--wire-grpc-port to Triton's)", ",".join(map(str, cfg.ebpf_port)),
                 ",".join(map(str, ports)))
        return False
    from ..ebpf import handoff
    from ..ebpf.loader import environment_problem

    problem = environment_problem(bcc=not handoff.available())
    if problem:
        log.info("socket join off (--wire-join auto): %s", problem)
        return False
    return True


class WireSource:
    name = "wire"

    def __init__(self, cfg: Config, errors: ErrorCounts, aggregator: TraceAggregator) -> None:
        self.cfg = cfg
        self.errors = errors
        self._lock = threading.Lock()
        self._stopped = False
        self._starting: threading.Thread | None = None
        self.aggregator = aggregator
        self.ports = sorted(set(cfg.wire_http_port) | set(cfg.wire_grpc_port))
        self.window = TurnWindow({"http": frozenset(cfg.wire_http_port), "grpc": frozenset(cfg.wire_grpc_port)})
        self.feed: TurnFeed | None = None
        self.joiner = Joiner(self._join)
        aggregator.wire = self.joiner  # before the producers start: their first batch joins
        self._tick = threading.Thread(target=self._settle, name="wire-settle", daemon=True)
        self._stop = threading.Event()

    def _join(self, requests: Sequence[Request]) -> list[tuple[str, Wire | None]]:
        """Requests joined against the turns held, after those the kernel sent meanwhile."""
        feed = self.feed
        if feed is not None:
            feed.drain()
        return self.window.join(requests)

    def collectors(self) -> list[Collector]:
        return []

    def start(self) -> None:
        """Compiles the program in the background: the daemon serves (and the other sources run)
        meanwhile; requests traced before the feed runs count no_socket_event."""
        self._starting = threading.Thread(target=self._start, name="wire-start", daemon=True)
        self._starting.start()
        self._tick.start()

    def _settle(self) -> None:
        """Once a second: requests held from earlier batches that are now joined or due are counted
        (a commit of their own), so they are not kept waiting when no trace batch comes."""
        while not self._stop.wait(1.0):
            try:
                self.aggregator.settle_wire()
            except Exception as e:  # a failed state write is logged and counted by the aggregator
                log.debug("settling held requests: %s", e)

    def _start(self) -> None:
        try:
            feed = TurnFeed(self.window, self.ports, lambda reason, n: self.errors.inc("wire", reason, n))
        except Exception as e:  # BCC missing, the kernel refuses the program, no privileges
            level = logging.ERROR if self.cfg.ebpf == "on" else logging.WARNING
            log.log(level, "socket join off: %s; traced requests are counted unsupported", e)
            self.errors.inc("wire", "load_failed")
            self.joiner.join = None
            return
        with self._lock:
            if self._stopped:
                feed.stop()
                return
            self.feed = feed.start()
        log.info("socket join on: HTTP ports %s, gRPC ports %s", ",".join(map(str, self.cfg.wire_http_port)),
                 ",".join(map(str, self.cfg.wire_grpc_port)))

    def stop(self) -> None:
        self._stop.set()
        if self._tick.is_alive():
            self._tick.join(timeout=30)
        if self._starting is not None:  # a compile under way ends first: nothing of it outlives the stop
            self._starting.join(timeout=60)
        with self._lock:
            self._stopped = True
            feed, self.feed = self.feed, None
        if feed is not None:
            feed.stop()

    def ready(self) -> bool:
        return True
