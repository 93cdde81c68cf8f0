"""The Triton endpoint source: one TritonTarget per --triton URL, fetched at scrape time."""

from __future__ import annotations

from prometheus_client.registry import Collector

from ..config import Config
from ..source import ErrorCounts
from .collector import TritonCollector
from .target import TritonTarget, default_metrics_url


class TritonSource:
    name = "triton"

    def __init__(self, cfg: Config, errors: ErrorCounts) -> None:
        metrics_urls = cfg.triton_metrics_url or [default_metrics_url(u) for u in cfg.triton]
        self.targets = [
            TritonTarget(url, murl, cfg.triton_timeout_seconds, cfg.triton_cache_seconds,
                         on_error=lambda reason: errors.inc("triton", reason),
                         max_bytes=cfg.triton_max_response_bytes, max_series=cfg.triton_max_series,
                         max_models=cfg.max_models, keep_raw=cfg.triton_passthrough)
            for url, murl in zip(cfg.triton, metrics_urls, strict=True)
        ]
        self.collector = TritonCollector(self.targets, cfg.triton_passthrough)

    def collectors(self) -> list[Collector]:
        return [self.collector]

    def start(self) -> None:
        """Nothing runs in the background: Triton is asked at scrape time."""

    def stop(self) -> None:
        for t in self.targets:
            t.close()

    def ready(self) -> bool:
        return True
