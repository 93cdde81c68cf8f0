"""Triton targets that misbehave: too large, endless, dripping, too many series or models,
bad values, repeats, redirects, error statuses. Each is refused within the timeout and
counted by its own reason, and what else the target answered is kept. The last test runs
the exporter against all of them in turn, beside a healthy target and trace files, and
measures its RSS and the time of its own /metrics."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.source import ErrorCounts
from exporter.triton.collector import families
from exporter.triton.target import (
    CONFIG_READS_PER_FETCH,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MODELS,
    DEFAULT_MAX_SERIES,
    TritonSnapshot,
    TritonTarget,
)
from tests.conftest import ROLLING_TRACES
from tests.hostile_triton import HostileTriton
from tests.triton_harness import ExporterProcess, Scrape

KEY = ("add_sub", "1")


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[HostileTriton]:
    """Another host (127.0.0.2): its data must never show up under the target that redirects to it."""
    f = HostileTriton("127.0.0.2")
    f.metrics = f.metrics.replace(b'model="add_sub"', b'model="intruder"')
    yield f
    f.close()


@pytest.fixture(scope="module")
def module_fake(elsewhere: HostileTriton) -> Iterator[HostileTriton]:
    f = HostileTriton()
    f.redirect_to = f"{elsewhere.url}/metrics"
    yield f
    f.close()


@pytest.fixture
def fake(module_fake: HostileTriton) -> HostileTriton:
    module_fake.metrics_mode = module_fake.api_mode = "normal"
    module_fake.hits.clear()
    return module_fake


def make_target(fake: HostileTriton, errors: ErrorCounts, timeout: float = 1.5, max_bytes: int = DEFAULT_MAX_BYTES,
                max_series: int = DEFAULT_MAX_SERIES, max_models: int = DEFAULT_MAX_MODELS) -> TritonTarget:
    return TritonTarget(fake.url, f"{fake.url}/metrics", timeout, 0.0, on_error=lambda r: errors.inc("triton", r),
                        max_bytes=max_bytes, max_series=max_series, max_models=max_models)


def timed(t: TritonTarget) -> tuple[TritonSnapshot, float]:
    t0 = time.monotonic()
    s = t.snapshot()
    return s, time.monotonic() - t0


def reasons(errors: ErrorCounts) -> dict[str, int]:
    return {reason: n for (_, reason), n in errors.snapshot().items()}


@pytest.mark.parametrize("mode", ["huge", "endless"])
def test_answers_past_the_byte_cap_are_refused(fake: HostileTriton, mode: str) -> None:
    fake.metrics_mode = mode
    errors = ErrorCounts()
    t = make_target(fake, errors, max_bytes=4 * 1024 * 1024)
    try:
        s, took = timed(t)
        assert not s.up and s.metrics is None and took < t.timeout
        assert s.stats is not None and s.configs  # the API part is not touched by it
        assert reasons(errors) == {"too_large": 1}
    finally:
        t.close()


def test_a_dripping_metrics_answer_ends_at_the_deadline_and_blocks_nothing(fake: HostileTriton) -> None:
    fake.metrics_mode = "drip"
    errors = ErrorCounts()
    t = make_target(fake, errors, timeout=1.0)
    try:
        for _ in range(3):  # each fetch starts afresh: no worker is left stuck in the drip
            s, took = timed(t)
            # it ends at the 1 s deadline, plus what a loaded 2-core machine takes to schedule the
            # worker back (11 ms seen in CI); a fetch stuck in the drip would never end (it sends a byte every 0.2 s)
            assert not s.up and s.metrics is None and took < 1.0 + 0.5
            assert s.stats is not None  # the statistics API is still polled
        assert reasons(errors) == {"timeout": 3}
        fake.metrics_mode = "normal"
        assert t.snapshot().up
    finally:
        t.close()


def test_a_million_label_values_stop_at_the_series_cap(fake: HostileTriton) -> None:
    fake.metrics_mode = "labels"
    errors = ErrorCounts()
    t = make_target(fake, errors, timeout=5.0, max_series=20_000)
    try:
        s, took = timed(t)
        assert s.up and s.metrics is not None and took < 5.0
        assert not [f for f in s.metrics.raw if f.name == "nv_x"]
        assert reasons(errors) == {"too_many_series": 1}
    finally:
        t.close()


@pytest.mark.parametrize("mode", ["nan", "negative"])
def test_counters_that_are_not_counts_are_dropped(fake: HostileTriton, mode: str) -> None:
    fake.metrics_mode = mode
    errors = ErrorCounts()
    t = make_target(fake, errors)
    try:
        s = t.snapshot()
        assert s.up and s.metrics is not None
        c = s.metrics.models[KEY]
        assert c.success is None and c.inferences == 1201  # only the bad one goes
        assert reasons(errors) == {"bad_value": 1}
    finally:
        t.close()


def test_a_counter_going_back_is_exposed_as_a_reset_and_counted(fake: HostileTriton) -> None:
    fake.metrics_mode = "backwards"
    errors = ErrorCounts()
    t = make_target(fake, errors)
    try:
        first, second = t.snapshot(), t.snapshot()
        assert first.metrics and second.metrics and first.up and second.up
        a, b = first.metrics.models[KEY].success, second.metrics.models[KEY].success
        assert a is not None and b is not None and b < a  # the new, lower value: a reset to Prometheus
        assert reasons(errors) == {"counter_reset": 1}
    finally:
        t.close()


def test_repeated_families_give_no_duplicate_series(fake: HostileTriton) -> None:
    fake.metrics_mode = "duplicates"
    errors = ErrorCounts()
    t = make_target(fake, errors)
    try:
        s = t.snapshot()
        assert s.up
        samples = [(x.name, tuple(sorted(x.labels.items()))) for f in families([s], True) for x in f.samples]
        assert len(samples) == len(set(samples))
        assert reasons(errors) == {"duplicate_series": 1}
    finally:
        t.close()


def test_a_redirect_is_not_followed(fake: HostileTriton, elsewhere: HostileTriton) -> None:
    fake.metrics_mode = "redirect"
    elsewhere.hits.clear()
    errors = ErrorCounts()
    t = make_target(fake, errors)
    try:
        s = t.snapshot()
        assert not s.up and s.metrics is None
        assert elsewhere.hits["/metrics"] == 0
        assert reasons(errors) == {"redirected": 1}
    finally:
        t.close()


@pytest.mark.parametrize("mode", ["status500", "status404"])
def test_an_error_status_is_its_own_reason(fake: HostileTriton, mode: str) -> None:
    fake.metrics_mode = mode
    errors = ErrorCounts()
    t = make_target(fake, errors)
    try:
        assert not t.snapshot().up
        assert reasons(errors) == {"http_error": 1}
    finally:
        t.close()


def test_a_json_answer_of_too_many_values_is_refused_before_it_is_parsed(fake: HostileTriton) -> None:
    fake.api_mode = "bomb"
    errors = ErrorCounts()
    t = make_target(fake, errors)
    try:
        s = t.snapshot()
        assert not s.up and s.stats is None and s.metrics is not None
        assert reasons(errors) == {"too_large": 1}
    finally:
        t.close()


def test_infinity_in_the_statistics_drops_that_batch_size_only(fake: HostileTriton) -> None:
    fake.api_mode = "infinity"
    errors = ErrorCounts()
    t = make_target(fake, errors)
    try:
        s = t.snapshot()
        assert s.up and s.stats is not None
        assert 6 not in s.stats[KEY].batches and len(s.stats[KEY].batches) == 7
        assert reasons(errors) == {"bad_value": 1}
    finally:
        t.close()


def test_a_malformed_model_config_costs_that_config_only(fake: HostileTriton) -> None:
    fake.api_mode = "bad_config"
    errors = ErrorCounts()
    t = make_target(fake, errors)
    try:
        s = t.snapshot()
        assert s.up and s.stats is not None and KEY in s.stats and s.metrics is not None
        assert s.configs == {}
        assert reasons(errors) == {"bad_model": 1}
    finally:
        t.close()


def test_a_large_repository_is_up_at_once_and_reads_each_config_once(fake: HostileTriton) -> None:
    """With the model cap raised to all 5,000 models (and the timeout with it: every series is
    parsed), the first fetch is up, and configs fill in over fetches, each read once."""
    fake.metrics_mode = "models"
    errors = ErrorCounts()
    t = make_target(fake, errors, timeout=10.0, max_models=5000, max_series=50_000)
    try:
        s, took = timed(t)
        assert s.up and took < 10.0 and s.metrics is not None and s.stats is not None
        assert len(s.metrics.models) == len(s.stats) == 5000
        reads = sum(n for p, n in fake.hits.items() if p.endswith("/config"))
        assert 0 < reads <= CONFIG_READS_PER_FETCH and len(s.configs) == reads
        s = t.snapshot()
        assert s.up
        reads = sum(n for p, n in fake.hits.items() if p.endswith("/config"))
        assert len(s.configs) == reads <= 2 * CONFIG_READS_PER_FETCH and reads > CONFIG_READS_PER_FETCH // 2
        assert max(n for p, n in fake.hits.items() if p.endswith("/config")) == 1  # none read twice
        assert errors.snapshot() == {}
    finally:
        t.close()


def test_models_past_the_cap_are_left_out_of_every_family(fake: HostileTriton) -> None:
    """5,000 models under the default cap of 100 and the default 2 s timeout: up on the first
    fetch, the lines of the other models skipped unparsed."""
    fake.metrics_mode = "models"
    errors = ErrorCounts()
    t = make_target(fake, errors, timeout=2.0, max_models=100)
    try:
        s, took = timed(t)
        assert s.up and took < 2.0 and s.metrics is not None and s.stats is not None
        names = {m for m, _ in s.metrics.models} | {m for m, _ in s.stats} | {m for m, _ in s.configs}
        assert len(names) == 100
        assert reasons(errors) == {"model_cap": 1}
        s2 = t.snapshot()
        assert s2.metrics is not None and {m for m, _ in s2.metrics.models} == {m for m, _ in s.metrics.models}
    finally:
        t.close()


# --- the exporter against all of them ----------------------------------------------------

RSS_BOUND_MB = 200  # docs/triton.md: with one hostile target at the default caps
# an endless answer ends at the byte cap or at the deadline, whichever comes first on the machine
HOSTILE_CASES = [("huge", "normal", "too_large"), ("endless", "normal", "too_large|timeout"),
                 ("drip", "normal", "timeout"), ("labels", "normal", "too_many_series"),
                 ("nan", "normal", "bad_value"), ("negative", "normal", "bad_value"),
                 ("backwards", "normal", "counter_reset"), ("duplicates", "normal", "duplicate_series"),
                 ("redirect", "normal", "redirected"), ("status500", "normal", "http_error"),
                 ("normal", "infinity", "bad_value"), ("normal", "bomb", "too_large"),
                 ("models", "normal", "model_cap"),
                 # configs are kept across fetches: add_sub's is read again once "models" dropped it
                 ("normal", "bad_config", "bad_model")]


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_the_exporter_stays_bounded_and_serves_the_rest(
        tmp_path: Path, fake: HostileTriton, exporter_factory: Callable[..., ExporterProcess]) -> None:
    healthy = HostileTriton()
    traces = tmp_path / "traces"
    traces.mkdir()
    shutil.copy(ROLLING_TRACES / "trace.json.0", traces / "trace.json.0")
    timeout = 1.5
    try:
        e = exporter_factory("--triton", fake.url, "--triton-metrics-url", f"{fake.url}/metrics",
                             "--triton", healthy.url, "--triton-metrics-url", f"{healthy.url}/metrics",
                             "--triton-timeout-seconds", str(timeout), "--triton-cache-seconds", "0",
                             "--triton-passthrough", "--trace-file", str(traces / "trace.json"),
                             "--ebpf", "off")
        base = e.wait_for(lambda m: m.total("inference_profiler_traces_total") > 0)
        traced = base.total("inference_profiler_traces_total")
        start_hwm = vm_hwm_mb(e.proc.pid)
        good = f"127.0.0.1:{healthy.port}"
        slowest = 0.0
        for metrics_mode, api_mode, reason in HOSTILE_CASES:
            fake.metrics_mode, fake.api_mode = metrics_mode, api_mode

            def errors(s: Scrape, reason: str = reason) -> float:
                return sum(s.total("inference_profiler_errors_total", source="triton", reason=r)
                           for r in reason.split("|"))

            before = errors(e.scrape())
            for _ in range(2):
                t0 = time.monotonic()
                s = e.scrape()
                slowest = max(slowest, time.monotonic() - t0)
                # the same scrape that shows the fetch shows its reason
                assert errors(s) > before, (metrics_mode, api_mode, reason)
                assert s.total("inference_profiler_triton_up", target=good) == 1
                assert s.select("nv_inference_request_success", target=good)
                assert s.total("inference_profiler_traces_total") == traced
            fake.metrics_mode = fake.api_mode = "normal"
        hwm = vm_hwm_mb(e.proc.pid)
        print(f"exporter VmHWM {start_hwm:.0f} MB before the hostile cases, {hwm:.0f} MB after them; "
              f"slowest /metrics {slowest:.2f} s")
        assert slowest < timeout + 1.0  # the wait is bounded by the timeout; rendering the rest adds a little
        assert hwm < RSS_BOUND_MB
        assert not e.scrape().select("nv_inference_request_success", model="intruder")
    finally:
        healthy.close()
