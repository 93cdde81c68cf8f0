"""One Triton instance, fetched at scrape time: /metrics, statistics, and model configs.

A fetch runs on the target's own worker thread (tritonclient's HTTP client is
gevent-based and must stay on the thread that made it); a scrape waits for it at
most until its deadline, so a hung Triton never makes a scrape slower than the
timeout. A snapshot younger than `cache_seconds` is reused, and concurrent scrapes
share one fetch in flight.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .metrics_text import MetricsTextError, ModelKey, TritonMetricsText, parse_metrics_text
from .statistics import (
    ApiShapeError,
    ModelConfigInfo,
    ModelStats,
    parse_model_config,
    parse_repository_index,
    parse_statistics,
)

log = logging.getLogger("triton")

OnError = Callable[[str], None]
# configs are re-read when the repository index changes, and at least this often (a reload
# with a new config.pbtxt leaves the index as it was)
CONFIG_REFRESH_SECONDS = 300.0


def target_name(url: str) -> str:
    """The `target` label: host:port of the HTTP endpoint."""
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return f"{u.hostname}:{port}"


def default_metrics_url(url: str) -> str:
    """Triton's metrics port 8002 on the host of the HTTP endpoint."""
    u = urlsplit(url)
    host = f"[{u.hostname}]" if u.hostname and ":" in u.hostname else u.hostname
    return f"{u.scheme}://{host}:8002/metrics"


@dataclass(frozen=True)
class TritonSnapshot:
    target: str
    up: bool
    duration: float
    metrics: TritonMetricsText | None = None
    stats: dict[ModelKey, ModelStats] | None = None
    configs: dict[ModelKey, ModelConfigInfo] = field(default_factory=dict)


class FetchError(Exception):
    """One part of a fetch failed; `reason` is the errors_total reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _classify(e: BaseException) -> str:
    if isinstance(e, FetchError):
        return e.reason
    if isinstance(e, TimeoutError) or "timed out" in str(e).lower():
        return "timeout"
    if isinstance(e, (ConnectionError, urllib.error.URLError, OSError)):
        return "unreachable"
    if isinstance(e, (ApiShapeError, MetricsTextError, ValueError, KeyError)):
        return "bad_response"
    return "request_failed"  # tritonclient's InferenceServerException and the like


class TritonTarget:
    def __init__(self, url: str, metrics_url: str, timeout: float, cache_seconds: float,
                 on_error: OnError = lambda reason: None) -> None:
        self.url = url.rstrip("/")
        self.metrics_url = metrics_url
        self.name = target_name(url)
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.on_error = on_error
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"triton-{self.name}")
        self._inflight: Future[TritonSnapshot] | None = None
        self._cached: TritonSnapshot | None = None
        self._cached_at = 0.0
        self._was_up: bool | None = None
        # worker-thread state: the client, and configs kept until the repository index changes
        self._client: Any = None
        self._index: frozenset[ModelKey] | None = None
        self._configs: dict[ModelKey, ModelConfigInfo] = {}
        self._configs_at = 0.0

    # --- scrape side -----------------------------------------------------------------

    def begin(self) -> Future[TritonSnapshot] | TritonSnapshot:
        """The cached snapshot if fresh, else the fetch in flight (started if none is)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached_at < self.cache_seconds:
                return self._cached
            if self._inflight is None:
                self._inflight = self._pool.submit(self._fetch)
                self._inflight.add_done_callback(self._done)
            return self._inflight

    def _done(self, fut: Future[TritonSnapshot]) -> None:
        with self._lock:
            if self._inflight is fut:
                self._inflight = None
            if not fut.cancelled() and fut.exception() is None:
                self._cached = fut.result()
                self._cached_at = time.monotonic()

    def wait(self, pending: Future[TritonSnapshot] | TritonSnapshot, deadline: float) -> TritonSnapshot:
        if isinstance(pending, TritonSnapshot):
            return pending
        try:
            return pending.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            self._report("scrape_timeout", f"no answer within {self.timeout:g}s")
            return TritonSnapshot(self.name, False, self.timeout)
        except Exception as e:  # a bug in a fetch must cost this target's series, not the scrape
            log.exception("triton %s: fetch failed", self.name)
            self._report("request_failed", f"fetch failed: {e}")
            return TritonSnapshot(self.name, False, 0.0)

    def snapshot(self) -> TritonSnapshot:
        return self.wait(self.begin(), time.monotonic() + self.timeout)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already closed
            self._pool.submit(self._drop_client)  # on the worker: the client belongs to its thread
        self._pool.shutdown(wait=False, cancel_futures=False)

    def _report(self, reason: str, detail: str) -> None:
        self.on_error(reason)
        with self._lock:
            was_up, self._was_up = self._was_up, False
        if was_up is not False:  # one line per outage, not one per scrape
            log.warning("triton %s: %s (%s); counting further failures silently", self.name, detail, reason)

    # --- worker side -----------------------------------------------------------------

    def _fetch(self) -> TritonSnapshot:
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        metrics: TritonMetricsText | None = None
        stats: dict[ModelKey, ModelStats] | None = None
        up = True
        try:
            metrics = parse_metrics_text(self._get_metrics_text(deadline))
        except Exception as e:
            up = False
            self._report(_classify(e), f"GET {self.metrics_url} failed: {e}")
        try:
            stats, configs = self._api(deadline)
        except Exception as e:
            up = False
            self._drop_client()  # reconnect next time: the server may have restarted
            self._index = None
            self._report(_classify(e), f"statistics/config API at {self.url} failed: {e}")
            configs = {}
        if up:
            with self._lock:
                was_up, self._was_up = self._was_up, True
            if was_up is False:
                log.info("triton %s: reachable again", self.name)
        return TritonSnapshot(self.name, up, time.monotonic() - t0, metrics, stats, configs)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as e:  # best effort: the connection may already be gone
                log.debug("triton %s: closing client: %s", self.name, e)

    def _get_metrics_text(self, deadline: float) -> str:
        left = max(0.05, deadline - time.monotonic())
        with urllib.request.urlopen(self.metrics_url, timeout=left) as r:
            body: bytes = r.read()
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise FetchError("bad_response", "/metrics answer is not UTF-8") from None

    def _api(self, deadline: float) -> tuple[dict[ModelKey, ModelStats], dict[ModelKey, ModelConfigInfo]]:
        import tritonclient.http as triton_http

        if self._client is None:
            u = urlsplit(self.url)
            t = max(0.05, self.timeout)
            self._client = triton_http.InferenceServerClient(
                u.netloc, connection_timeout=t, network_timeout=t, ssl=u.scheme == "https"
            )
        c = self._client
        stats = parse_statistics(c.get_inference_statistics())
        index = parse_repository_index(c.get_model_repository_index())
        if index != self._index or time.monotonic() - self._configs_at > CONFIG_REFRESH_SECONDS:
            configs: dict[ModelKey, ModelConfigInfo] = {}
            for model, version in sorted(index):
                if time.monotonic() > deadline:
                    raise FetchError("timeout", "model configs not read within the timeout")
                configs[(model, version)] = parse_model_config(c.get_model_config(model, version))
            self._configs, self._index, self._configs_at = configs, index, time.monotonic()
        return stats, dict(self._configs)
