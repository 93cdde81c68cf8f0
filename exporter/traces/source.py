"""The trace source: a tailer thread over trace files, the OTLP receiver if asked for,
and their collectors; both feed the tailer's one aggregate."""

from __future__ import annotations

import logging
import time

from prometheus_client.registry import Collector

from ..config import Config, ConfigError
from ..listen import parse_listen
from ..polling import PolledSource, PollThread
from ..source import ErrorCounts
from .checkpoint import StateWriteError
from .collector import TraceCollector
from .tailer import TailerSettings, TraceTailer

log = logging.getLogger("traces")


def bounds_ns(buckets_seconds: list[float]) -> tuple[int, ...]:
    return tuple(round(b * 1e9) for b in buckets_seconds)


class TraceSource(PolledSource):
    name = "traces"
    stop_timeout = 30.0  # a poll may be in the middle of a large file

    def __init__(self, cfg: Config, errors: ErrorCounts) -> None:
        settings = TailerSettings(
            patterns=list(cfg.trace_file),
            state_dir=cfg.state_dir,
            bounds_ns=bounds_ns(cfg.stage_buckets),
            max_models=cfg.max_models,
            settle_seconds=cfg.trace_settle_seconds,
            delete_ingested=cfg.trace_delete_ingested,
            keep_bytes=cfg.trace_keep_bytes,
            window=cfg.trace_open_traces,
            child_hold_seconds=cfg.trace_child_hold_seconds,
        )
        self.tailer = TraceTailer(settings, on_error=lambda reason: errors.inc("traces", reason))
        self.native_schema, self.stages = cfg.native_schema, cfg.trace_stage
        self._backoff = 0.0
        self._retry_at = 0.0
        self.thread = PollThread("trace-tailer", self._poll, cfg.trace_poll_seconds, self.tailer.on_error, log)
        self.otlp = OtlpFeed(cfg, self.tailer) if cfg.otlp_listen else None

    def collectors(self) -> list[Collector]:
        return [TraceCollector(self.tailer, self.native_schema, self.stages), *(self.otlp.collectors() if self.otlp else [])]

    def _poll(self) -> None:
        if self.tailer.state_error is not None and time.monotonic() < self._retry_at:
            return  # a failing state write re-reads every file each poll: back off up to a minute
        try:
            self.tailer.poll()
        except StateWriteError:
            self._backoff = min(max(self._backoff * 2, 1.0), 60.0)
            self._retry_at = time.monotonic() + self._backoff
            return  # logged and counted by the tailer; /readyz fails until a write succeeds
        self._backoff = 0.0

    def start(self) -> None:
        from .scanner import scanner_name

        log.info("trace scanner: %s", scanner_name(), extra={"fields": {"scanner": scanner_name()}})
        super().start()
        if self.otlp is not None:
            self.otlp.start()

    def stop(self) -> None:
        if self.otlp is not None:
            self.otlp.stop()
        super().stop()
        self.tailer.close()

    def ready(self) -> bool:
        # not ready while the state cannot be written: nothing ingested would be kept
        return super().ready() and self.tailer.state_error is None


class OtlpFeed:
    """The OTLP receiver, its forwarder and the timer that counts requests whose root never came."""

    def __init__(self, cfg: Config, tailer: TraceTailer) -> None:
        from ..otlp.forward import Forwarder
        from ..otlp.receiver import OtlpCollector, OtlpIngest, OtlpServer

        self.ingest = OtlpIngest(tailer, cfg.max_models, cfg.otlp_hold_seconds)
        self.forwarder = Forwarder(cfg.otlp_forward) if cfg.otlp_forward else None
        ssl_context, auth = None, None
        if cfg.web_config_file:
            from ..webconfig import load_web_config

            ssl_context, auth = load_web_config(cfg.web_config_file)
        host, port = parse_listen(cfg.otlp_listen)
        try:
            self.server = OtlpServer(self.ingest, host, port, self.forwarder, ssl_context, auth)
        except OSError as e:
            raise ConfigError(f"cannot listen on {cfg.otlp_listen}: {e.strerror}; pick another --otlp-listen") from None
        self.collector = OtlpCollector(self.ingest, self.forwarder)
        # counts the requests whose root span never came, once they waited --otlp-hold-seconds
        self.timer = PollThread("otlp-expire", self.ingest.expire, 1.0, tailer.on_error, log)

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
