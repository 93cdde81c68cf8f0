"""The OTLP source: the receiver, its forwarder and the timer that counts requests whose root
never came. A peer of the trace file tailer: both hand their batches to the trace aggregator."""

from __future__ import annotations

import logging

from prometheus_client.registry import Collector

from ..config import Config, ConfigError
from ..listen import parse_listen
from ..polling import PollThread
from ..source import ErrorCounts
from ..traces.aggregator import TraceAggregator
from .forward import Forwarder
from .receiver import OtlpCollector, OtlpIngest, OtlpServer

log = logging.getLogger("otlp")


class OtlpSource:
    name = "otlp"

    def __init__(self, cfg: Config, errors: ErrorCounts, aggregator: TraceAggregator) -> None:
        self.aggregator = aggregator
        self.ingest = OtlpIngest(aggregator, cfg.otlp_hold_seconds)
        self.forwarder = Forwarder(cfg.otlp_forward) if cfg.otlp_forward else None
        ssl_context, auth = None, None
        if cfg.web_config_file:
            from ..webconfig import load_web_config

            ssl_context, auth = load_web_config(cfg.web_config_file)
        host, port = parse_listen(cfg.otlp_listen)
        try:
            self.server = OtlpServer(self.ingest, host, port, self.forwarder, ssl_context, auth,
                                     pace=cfg.otlp_pace_seconds)
        except OSError as e:
            raise ConfigError(f"cannot listen on {cfg.otlp_listen}: {e.strerror}; pick another --otlp-listen") from None
        self.collector = OtlpCollector(self.ingest, self.forwarder)
        # counts the requests whose root span never came, once they waited --otlp-hold-seconds
        self.timer = PollThread("otlp-expire", self.ingest.expire, 1.0, lambda r: errors.inc("traces", r), log)

    def collectors(self) -> list[Collector]:
        return [self.collector]

    def start(self) -> None:
        if self.forwarder is not None:
            self.forwarder.start()
        self.server.start()
        self.timer.start()
        log.info("receiving OTLP traces on port %d (POST /v1/traces)", self.server.port)

    def stop(self) -> None:
        self.timer.stop(10.0)
        self.server.stop()
        if self.forwarder is not None:
            self.forwarder.stop()

    def ready(self) -> bool:
        # what is acknowledged must be durable: not ready while the state cannot be written
        return self.aggregator.state_error is None
