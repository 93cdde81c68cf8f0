"""The trace source: the aggregator and its state store, the tailer thread over trace files,
and their collector. Other producers (the OTLP receiver) are peer sources handed
`aggregator`; this package imports none of them."""

from __future__ import annotations

import logging
import time

from prometheus_client.registry import Collector

from ..config import Config
from ..polling import PolledSource, PollThread
from ..source import ErrorCounts
from .aggregator import TraceAggregator
from .checkpoint import StateWriteError
from .collector import TraceCollector
from .discovery import TracePattern, label_names
from .store import StateStore
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
        on_error = lambda reason: errors.inc("traces", reason)  # noqa: E731
        store = StateStore(settings.state_dir, settings.bounds_ns, on_error)
        names = label_names([TracePattern(p) for p in settings.patterns])
        self.aggregator = TraceAggregator(store, names, settings.max_models, on_error)
        self.tailer = TraceTailer(settings, on_error, self.aggregator)
        self.native_schema, self.stages = cfg.native_schema, cfg.trace_stage
        self._backoff = 0.0
        self._retry_at = 0.0
        self.thread = PollThread("trace-tailer", self._poll, cfg.trace_poll_seconds, on_error, log)

    def collectors(self) -> list[Collector]:
        return [TraceCollector(self.tailer, self.native_schema, self.stages)]

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

    def stop(self) -> None:
        super().stop()
        self.aggregator.close()

    def ready(self) -> bool:
        # not ready while the state cannot be written: nothing ingested would be kept
        return super().ready() and self.tailer.state_error is None
