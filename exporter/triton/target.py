"""One Triton instance, fetched at scrape time: /metrics, statistics, and model configs.

A fetch reads /metrics and the statistics API side by side, each on a worker of its
own, within hard bounds (exporter/triton/http_fetch.py): a deadline for the whole fetch
a little inside the scrape's timeout, a byte cap per answer, no redirects, at most
`max_series` series from /metrics and `max_models` models. A scrape waits for the fetch
at most until its deadline, so neither a hung nor a hostile Triton makes a scrape
slower than the timeout, and the fetch is over by then too. A snapshot younger than
`cache_seconds` is reused, and concurrent scrapes share one fetch in flight.

Model configs change rarely: they are kept across fetches, read for models new to the
repository index and refreshed when older than CONFIG_REFRESH_SECONDS, at most
CONFIG_READS_PER_FETCH per fetch, so a large repository comes up at once and fills its
configs in over a few scrapes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from .http_fetch import FetchError, HttpSession
from .metrics_text import (
    MetricsTextError,
    ModelKey,
    Problems,
    SeriesId,
    TritonMetricsText,
    parse_metrics_chunks,
)
from .statistics import (
    ApiShapeError,
    BadValue,
    ModelConfigInfo,
    ModelStats,
    parse_model_config,
    parse_repository_index,
    parse_statistics,
)

log = logging.getLogger("triton")

OnError = Callable[[str], None]
# a config is read again when older than this (a reload with a new config.pbtxt leaves the
# repository index as it was)
CONFIG_REFRESH_SECONDS = 300.0
CONFIG_READS_PER_FETCH = 50
# the fetch ends this share of the timeout before the scrape stops waiting, so that its
# own, more precise reason is counted rather than scrape_timeout
FETCH_SHARE = 0.9
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_SERIES = 20_000
DEFAULT_MAX_MODELS = 100


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


class ModelCap:
    """At most `limit` (model, version) pairs per target, as for trace files: the first seen are
    admitted and stay while Triton has them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._admitted: set[ModelKey] = set()
        self._seen: set[ModelKey] = set()
        self._refused: set[ModelKey] = set()

    def admit(self, model: str, version: str) -> bool:
        key = (model, version)
        with self._lock:
            self._seen.add(key)
            if key in self._admitted:
                return True
            if len(self._admitted) < self.limit:
                self._admitted.add(key)
                return True
            self._refused.add(key)
            return False

    def end_fetch(self, complete: bool) -> int:
        """Models refused in this fetch; after a complete one, models Triton no longer has go."""
        with self._lock:
            refused = len(self._refused)
            if complete:
                self._admitted &= self._seen
            self._seen, self._refused = set(), set()
            return refused


@dataclass
class _Part:
    """What one half of a fetch (/metrics, or the API) brought back."""

    failure: FetchError | None = None
    problems: Problems = field(default_factory=Problems)


class TritonTarget:
    def __init__(self, url: str, metrics_url: str, timeout: float, cache_seconds: float,
                 on_error: OnError = lambda reason: None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_series: int = DEFAULT_MAX_SERIES, max_models: int = DEFAULT_MAX_MODELS,
                 keep_raw: bool = True) -> None:
        self.url = url.rstrip("/")
        self.metrics_url = metrics_url
        self.name = target_name(url)
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.on_error = on_error
        self.max_bytes = max_bytes
        self.max_series = max_series
        self.keep_raw = keep_raw  # every nv_* family, for the passthrough
        self.models = ModelCap(max_models)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"triton-{self.name}")
        self._metrics_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"triton-{self.name}-metrics")
        self._inflight: Future[TritonSnapshot] | None = None
        self._cached: TritonSnapshot | None = None
        self._cached_at = 0.0
        self._was_up: bool | None = None
        self._logged: set[str] = set()  # reasons of partial refusals already logged once
        # worker-thread state: configs with the time each was read, and last counter values
        self._configs: dict[ModelKey, tuple[ModelConfigInfo, float]] = {}
        self._counters: dict[SeriesId, float] = {}
        self._stats_counters: dict[tuple[str, str, int, str], int] = {}

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
            self._report("fetch_failed", f"fetch failed: {e}")
            return TritonSnapshot(self.name, False, 0.0)

    def snapshot(self) -> TritonSnapshot:
        return self.wait(self.begin(), time.monotonic() + self.timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)
        self._metrics_pool.shutdown(wait=False, cancel_futures=False)

    def _report(self, reason: str, detail: str) -> None:
        """A failure that makes the target down: counted; logged once per outage."""
        self.on_error(reason)
        with self._lock:
            was_up, self._was_up = self._was_up, False
        if was_up is not False:  # one line per outage, not one per scrape
            log.warning("triton %s: %s (%s); counting further failures silently", self.name, detail, reason)

    def _refused(self, problems: Problems) -> None:
        """Parts of an answer left out (the rest is kept): each reason counted once per fetch."""
        for reason in sorted(problems.counts):
            self.on_error(reason)
            if reason not in self._logged:
                self._logged.add(reason)
                log.warning("triton %s: %s (%s; counted once per fetch from now on)", self.name,
                            problems.details.get(reason, reason), reason)

    # --- worker side -----------------------------------------------------------------

    def _fetch(self) -> TritonSnapshot:
        t0 = time.monotonic()
        deadline = t0 + FETCH_SHARE * self.timeout
        metrics_part = _Part()
        future = self._metrics_pool.submit(self._fetch_metrics, deadline, metrics_part)
        api_part = _Part()
        stats, configs = self._fetch_api(deadline, api_part)
        metrics: TritonMetricsText | None = None
        try:  # the session's deadline ends it; the extra second is for a bug that would not
            metrics = future.result(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        except FutureTimeout:
            metrics_part.failure = FetchError("timeout", f"GET {self.metrics_url} did not end in time")
        except Exception as e:  # a bug in the parse must cost this target's /metrics, not the fetch
            log.error("triton %s: reading /metrics failed", self.name, exc_info=e)
            metrics_part.failure = FetchError("fetch_failed", f"GET {self.metrics_url}: {e}")
        problems = Problems()
        for part in (metrics_part, api_part):
            problems.merge(part.problems)
            if part.failure is not None:
                self._report(part.failure.reason, str(part.failure))
        up = metrics_part.failure is None and api_part.failure is None
        refused = self.models.end_fetch(up)
        if refused:
            problems.add("model_cap", f"{refused} (model, version) pair(s) past --max-models {self.models.limit} "
                         "left out")
        self._check_resets(metrics, stats, problems)
        self._refused(problems)
        if up:
            with self._lock:
                was_up, self._was_up = self._was_up, True
            if was_up is False:
                log.info("triton %s: reachable again", self.name)
        return TritonSnapshot(self.name, up, time.monotonic() - t0, metrics, stats, configs)

    def _fetch_metrics(self, deadline: float, part: _Part) -> TritonMetricsText | None:
        with HttpSession(deadline, self.max_bytes) as session:
            try:
                text = parse_metrics_chunks(session.stream(self.metrics_url), self.models.admit,
                                            self.max_series, self.keep_raw)
            except FetchError as e:
                part.failure = e
                return None
            except MetricsTextError as e:
                part.failure = FetchError("bad_response", str(e))
                return None
        part.problems = text.problems
        return text

    def _fetch_api(self, deadline: float, part: _Part
                   ) -> tuple[dict[ModelKey, ModelStats] | None, dict[ModelKey, ModelConfigInfo]]:
        with HttpSession(deadline, self.max_bytes) as session:
            try:
                stats = parse_statistics(session.read_json(f"{self.url}/v2/models/stats"), self.models.admit,
                                         part.problems)
                index = parse_repository_index(session.read_json(f"{self.url}/v2/repository/index", "POST", b""))
            except FetchError as e:
                part.failure = e
            except ApiShapeError as e:
                part.failure = FetchError("bad_response", str(e))
            if part.failure is not None:
                # read every config again, a few per fetch: the server may have restarted
                self._configs = {k: (c, 0.0) for k, (c, _) in self._configs.items()}
                return None, {k: c for k, (c, _) in self._configs.items()}
            self._read_configs(session, index, part.problems)
        return stats, {k: c for k, (c, _) in sorted(self._configs.items())}

    def _read_configs(self, session: HttpSession, index: frozenset[ModelKey], problems: Problems) -> None:
        """Configs of ready, admitted models: new ones first, then the oldest past the refresh age."""
        ready = {k for k in index if self.models.admit(*k)}
        self._configs = {k: v for k, v in self._configs.items() if k in ready}
        now = time.monotonic()
        missing = sorted(k for k in ready if k not in self._configs)
        stale = sorted((at, k) for k, (_, at) in self._configs.items() if now - at > CONFIG_REFRESH_SECONDS)
        for model, version in [*missing, *(k for _, k in stale)][:CONFIG_READS_PER_FETCH]:
            path = f"/v2/models/{quote(model, safe='')}" + (f"/versions/{quote(version, safe='')}" if version else "")
            try:
                config = parse_model_config(session.read_json(f"{self.url}{path}/config"))
            except FetchError as e:
                if e.reason == "timeout":
                    return  # this fetch's time is up: the next one goes on from here
                problems.add(e.reason, f"config of {model}/{version}: {e}")
                continue
            except BadValue as e:
                problems.add("bad_value", f"config of {model}/{version}: {e}")
                continue
            except ApiShapeError as e:
                problems.add("bad_model", f"config of {model}/{version}: {e}")
                continue
            self._configs[(model, version)] = (config, time.monotonic())

    def _check_resets(self, metrics: TritonMetricsText | None, stats: Mapping[ModelKey, ModelStats] | None,
                      problems: Problems) -> None:
        """A counter lower than on the last fetch means Triton (or a model) restarted: the new value
        is exposed as it is, which Prometheus reads as a reset; counted as counter_reset."""
        back: list[str] = []
        if metrics is not None:
            back += [f"{n}{dict(lab)}" for (n, lab), v in metrics.counters.items() if v < self._counters.get((n, lab), v)]
            self._counters = metrics.counters
        if stats is not None:
            now = {(m, ver, size, f): v for (m, ver), s in stats.items() for size, b in s.batches.items()
                   for f, v in (("executions", b.executions), *b.stage_ns.items())}
            back += [f"{k[0]}/{k[1]} batch {k[2]} {k[3]}" for k, v in now.items() if v < self._stats_counters.get(k, v)]
            self._stats_counters = now
        if back:
            problems.add("counter_reset", f"{len(back)} counter(s) went back, e.g. {back[0]}: Triton or the "
                         "model restarted; exposed as a reset")
