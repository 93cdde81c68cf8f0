"""The wire join as a source of `serve`: the socket_turns recorder feeding a TurnWindow that
the trace aggregator joins each batch against.

It serves no family of its own: the joined stages, segments and join results are counted
by the trace aggregator with the rest of each batch, so they are committed with it and a
restart counts nothing twice. Where eBPF cannot run (`--ebpf auto` on a kernel that refuses),
every traced request is counted `unsupported`, so the join results still add up to the traces.
"""

from __future__ import annotations

import logging

from prometheus_client.registry import Collector

from ..config import Config, ConfigError
from ..traces.aggregator import TraceAggregator
from .live import TurnFeed, TurnWindow, unjoinable

log = logging.getLogger("wire")


class WireSource:
    name = "wire"

    def __init__(self, cfg: Config, aggregator: TraceAggregator) -> None:
        self.cfg = cfg
        self.aggregator = aggregator
        self.ports = sorted(set(cfg.wire_http_port) | set(cfg.wire_grpc_port))
        self.window = TurnWindow({"http": frozenset(cfg.wire_http_port), "grpc": frozenset(cfg.wire_grpc_port)})
        self.feed: TurnFeed | None = None
        aggregator.wire = self.window.observe  # before the producers start: their first batch joins

    def collectors(self) -> list[Collector]:
        return []

    def start(self) -> None:
        try:
            self.feed = TurnFeed(self.window, self.ports).start()
        except Exception as e:  # BCC missing, the kernel refuses the program, no privileges
            if self.cfg.ebpf == "on":
                raise ConfigError(f"--ebpf on: the socket join cannot run: {e}; pass --wire-join off "
                                  "or --ebpf auto") from None
            log.warning("socket join off: %s; traced requests are counted unsupported", e)
            self.aggregator.wire = unjoinable
            return
        log.info("socket join on: HTTP ports %s, gRPC ports %s", ",".join(map(str, self.cfg.wire_http_port)),
                 ",".join(map(str, self.cfg.wire_grpc_port)))

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.stop()
            self.feed = None

    def ready(self) -> bool:
        return True
