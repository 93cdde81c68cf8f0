"""The trace-file source: a tailer thread and its collector."""

from __future__ import annotations

import logging

from prometheus_client.registry import Collector

from ..config import Config
from ..polling import PolledSource, PollThread
from ..source import ErrorCounts
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
            window=cfg.trace_open_traces,
            child_hold_seconds=cfg.trace_child_hold_seconds,
        )
        self.tailer = TraceTailer(settings, on_error=lambda reason: errors.inc("traces", reason))
        self.thread = PollThread("trace-tailer", self.tailer.poll, cfg.trace_poll_seconds, self.tailer.on_error, log)

    def collectors(self) -> list[Collector]:
        return [TraceCollector(self.tailer)]
