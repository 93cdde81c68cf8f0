"""The fast /metrics renderer against prometheus_client's own encoders: same Accept, same bytes.

prometheus_client is the oracle: whatever it writes (or raises) for a registry and an Accept
header, exporter.exposition must write (or raise) too.
"""

from __future__ import annotations

import gzip
import json
import random
import urllib.request
from collections.abc import Callable, Iterable
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import choose_encoder as library_choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import BucketSpan, Exemplar, NativeHistogram, Timestamp
from prometheus_client.utils import floatToGoString

from exporter import exposition
from exporter.ebpf.collector import metric_families
from exporter.ebpf.declaration import metric_key, metric_programs
from exporter.exposition import choose_encoder, fast_encoder, go_float, render
from exporter.histogram import DEFAULT_STAGE_BUCKETS
from exporter.server import MetricsServer
from exporter.source import ErrorCounts, SelfCollector
from exporter.traces.collector import TraceCollector
from exporter.traces.source import bounds_ns
from exporter.traces.tailer import TailerSettings, TraceTailer
from exporter.triton.collector import families as triton_families
from exporter.triton.metrics_text import parse_metrics_text
from exporter.triton.statistics import parse_model_config, parse_statistics
from exporter.triton.target import TritonSnapshot
from tests.conftest import ROLLING_TRACES, SAMPLES

PROMETHEUS_2 = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
                "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
# Accept headers we render: Prometheus 2 and 3, plain text, curl's default, a bare OpenMetrics
FAST = ["", "*/*", "text/plain;version=0.0.4", PROMETHEUS_2, PROMETHEUS_3, "application/openmetrics-text",
        "text/plain;version=1.0.0;escaping=allow-utf-8", "text/plain;version=1.0.0;escaping=underscores"]
# ... and those prometheus_client answers alone
LIBRARY_ONLY = ["application/openmetrics-text;version=1.0.0;escaping=dots",
                "application/openmetrics-text;version=1.0.0;escaping=values",
                "text/plain;version=1.0.0;escaping=dots",
                "application/openmetrics-text;version=2.0.0"]


class Frozen(Collector):
    """Families collected once: both encoders see the very same objects (process metrics move)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def ours(encoder: Callable[[Collector], bytes]) -> bool:
    return isinstance(encoder, partial) and encoder.func is render


def outcome(encoder: Callable[[Collector], bytes], registry: Collector) -> bytes | tuple[type, str]:
    try:
        return encoder(registry)
    except UnicodeEncodeError as e:  # a lone surrogate: where it sits depends on who encoded what
        return type(e), e.reason
    except Exception as e:  # the body, or what refused it: both must match
        return type(e), str(e)


def assert_same(registry: Collector, accept: str) -> bytes | tuple[type, str]:
    library, want_type = library_choose_encoder(accept)
    ours, content_type = choose_encoder(accept)
    assert content_type == want_type
    assert ours is not library
    # label values that are not UTF-8 are repaired where they enter the exposition, for both encoders
    want = outcome(library, Frozen([exposition._valid_labels(m) for m in registry.collect()]))
    assert outcome(ours, registry) == want
    return want


def test_choose_encoder_renders_what_prometheus_sends_and_leaves_the_rest() -> None:
    for accept in FAST:
        assert fast_encoder(library_choose_encoder(accept)[0]) is not None, accept
        assert ours(choose_encoder(accept)[0])
    for accept in LIBRARY_ONLY:
        encoder, content_type = choose_encoder(accept)
        assert not ours(encoder) and content_type == library_choose_encoder(accept)[1], accept
    assert exposition._self_check()


@given(st.one_of(st.floats(), st.integers(-(2**100), 2**100),
                 st.sampled_from([-0.0, 1e-300, 5e-324, 1e21, 123456.7, 1234567.0, -1234567.0, 2**53 + 1, 1e16])))
def test_go_float_is_float_to_go_string(v: float) -> None:
    assert go_float(v) == floatToGoString(v)


# --- generated families of every type -------------------------------------------------------

PLAIN_NAMES = ["a", "model", "le_x", "Zone_9", "_under", "stage", "version", "path"]
ODD_NAMES = ["__x", "a:b", "a.b", "é", "9a", "a b"]  # prometheus_client's to escape
label_names = st.sampled_from(PLAIN_NAMES * 6 + ODD_NAMES)
metric_names = st.sampled_from(["requests", "temp_celsius", "Q_9", "_x", "x:y", "ünï", "a.b", "__m"])
label_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "\\", "\n", '"', 'a"b\\c\nd', "ü", "{}", "\\n", "1", "\ud800", "\t\r"]),
)
values = st.one_of(
    st.floats(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e-300, 1e21, 10**20]),
)
timestamps = st.one_of(
    st.none(),
    st.floats(min_value=-1e10, max_value=1e10),
    st.builds(Timestamp, st.integers(0, 2**33), st.integers(0, 999_999_999)),
)
exemplars = st.one_of(
    st.none(),
    st.builds(Exemplar, st.dictionaries(st.sampled_from(["trace_id", "span_id", "request_id"]), label_values,
                                        max_size=2),
              values, st.one_of(st.none(), st.floats(0, 1e10), st.builds(Timestamp, st.integers(0, 2**33),
                                                                         st.integers(0, 999_999_999)))),
)
KINDS = ["counter", "gauge", "summary", "histogram", "gaugehistogram", "info", "stateset", "unknown", "raw"]


@st.composite
def family(draw: st.DrawFn) -> Metric:
    kind = draw(st.sampled_from(KINDS))
    name = draw(metric_names)
    doc = draw(st.sampled_from(["", "plain help", 'with "quotes"', "back\\slash", "new\nline", "ü"]))
    unit = draw(st.sampled_from(["", "", "seconds"]))
    names = draw(st.lists(label_names, max_size=3, unique=True))
    series = draw(st.lists(st.lists(label_values, min_size=len(names), max_size=len(names)), max_size=3))
    ts = draw(timestamps)
    m: Metric
    if kind == "counter":
        m = CounterMetricFamily(name, doc, labels=names, unit=unit)
        for lv in series:
            m.add_metric(lv, draw(values), created=draw(st.none() | values), timestamp=ts, exemplar=draw(exemplars))
    elif kind in ("gauge", "unknown"):
        m = (GaugeMetricFamily if kind == "gauge" else UnknownMetricFamily)(name, doc, labels=names, unit=unit)
        for lv in series:
            m.add_metric(lv, draw(values), timestamp=ts)
    elif kind == "summary":
        m = SummaryMetricFamily(name, doc, labels=names, unit=unit)
        for lv in series:
            m.add_metric(lv, draw(values), draw(values), timestamp=ts)
    elif kind in ("histogram", "gaugehistogram"):
        bounds = sorted(draw(st.lists(st.floats(-1e6, 1e12), max_size=5)))
        les = [floatToGoString(b) for b in bounds] + ["+Inf"]
        if kind == "histogram":
            m = HistogramMetricFamily(name, doc, labels=names, unit=unit)
        else:
            m = GaugeHistogramMetricFamily(name, doc, labels=names, unit=unit)
        for lv in series:
            if kind == "histogram":
                buckets = [(le, draw(values), ex) if (ex := draw(exemplars)) else (le, draw(values)) for le in les]
                m.add_metric(lv, buckets, draw(st.none() | values), timestamp=ts)
            else:  # its add_metric takes no exemplars: put them on the bucket samples
                m.add_metric(lv, [(le, draw(values)) for le in les], draw(values), timestamp=ts)
                m.samples = [s._replace(exemplar=draw(exemplars)) if s.name.endswith("_bucket") else s
                             for s in m.samples]
    elif kind == "info":
        m = InfoMetricFamily(name, doc, labels=names)
        for lv in series:
            m.add_metric(lv, draw(st.dictionaries(st.sampled_from(["commit", "branch"]), label_values)),
                         timestamp=ts)
    elif kind == "stateset":
        m = StateSetMetricFamily(name, doc, labels=names)
        for lv in series:
            m.add_metric(lv, draw(st.dictionaries(st.sampled_from(["on", "off", "idle"]), st.booleans())),
                         timestamp=ts)
    else:  # samples as a collector may add them by hand: any suffix, quantiles, OpenMetrics-only ones
        m = Metric(name, doc, draw(st.sampled_from(["summary", "gaugehistogram", "counter", "unknown"])), unit)
        for lv in series:
            suffix = draw(st.sampled_from(["", "_total", "_created", "_gsum", "_gcount", "_count", "_sum"]))
            labels = dict(zip(names, lv, strict=True))
            if draw(st.booleans()):
                labels["quantile"] = draw(st.sampled_from(["0.5", "0.99", "1"]))
            m.add_sample(m.name + suffix, labels, draw(values), ts)
    return m


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(family(), max_size=5), st.sampled_from(FAST))
def test_generated_families_are_byte_identical(families: list[Metric], accept: str) -> None:
    assert_same(Frozen(families), accept)


# --- the exporter's own registry over the repository's samples -------------------------------

def trace_collector() -> TraceCollector:
    t = TraceTailer(TailerSettings([str(ROLLING_TRACES / "trace.json")], None,
                                   bounds_ns(list(DEFAULT_STAGE_BUCKETS))))
    assert t.poll() > 0
    return TraceCollector(t)


def triton_snapshots() -> list[TritonSnapshot]:
    api = json.loads((SAMPLES / "triton-2.51" / "api-outputs.json").read_text())
    config = parse_model_config(api["http_model_config"])
    return [TritonSnapshot(target, True, 0.004, parse_metrics_text((SAMPLES / "triton-2.51" / text).read_text()),
                           parse_statistics(api["http_stats_all"]), {("add_sub", "1"): config})
            for target, text in (("triton-a:8000", "metrics.txt"), ("triton-b:8000", "metrics-with-summaries.txt"))]


def ebpf_families(seed: int = 3) -> list[Metric]:
    """Every declared eBPF family from map-like series: 100+ log-linear buckets, pod labels."""
    rnd = random.Random(seed)
    names = metric_key().names
    out: list[Metric] = []
    for decl in metric_programs():
        series: dict[tuple[int, ...], tuple[int, int]] = {}
        for metric, m in enumerate(decl.metrics):
            first, last = m.index_range if m.type == "histogram" else (0, 0)
            for _ in range(300):
                raw = {"metric": metric, "role": rnd.randint(0, 1), "port": rnd.choice([8000, 8001, 8002]),
                       "direction": rnd.randint(0, 1), "bucket": rnd.randint(max(first - 3, 0), last + 3),
                       "cgroup": rnd.randint(1, 6)}
                series[tuple(raw[n] for n in names)] = (rnd.randint(1, 10**6), rnd.randint(1, 10**12))
        pods = {cg: ("default", f"triton-{cg}", 'server"\\x') for cg in range(1, 7)}
        pods[0] = ("", "", "")  # outside any pod (the series at 0 per watched port)
        out += metric_families(decl, series, ports=[8000, 8001, 8002], pods=pods.__getitem__)
    assert min(len({s.labels["le"] for s in f.samples if s.name.endswith("_bucket")})
               for f in out if f.type == "histogram") >= 80
    assert max(len({s.labels["le"] for s in f.samples if s.name.endswith("_bucket")})
               for f in out if f.type == "histogram") > 100
    return out


def exporter_families() -> list[Metric]:
    errors = ErrorCounts()
    errors.inc("trace", "read_failed", 3)
    errors.inc("triton", "timeout")
    fams = [*trace_collector().collect(), *triton_families(triton_snapshots(), passthrough=True),
            *ebpf_families(), *SelfCollector(errors).collect(),
            *ProcessCollector(namespace="inference_profiler", registry=None).collect()]
    assert {f.type for f in fams} >= {"counter", "gauge", "histogram", "summary", "unknown"}
    return fams


@pytest.fixture(scope="module")
def real() -> Frozen:
    return Frozen(exporter_families())


@pytest.mark.parametrize("accept", [PROMETHEUS_2, "", PROMETHEUS_3, "text/plain;version=1.0.0;escaping=allow-utf-8"])
def test_exporter_registry_is_byte_identical_and_all_fast(real: Frozen, accept: str) -> None:
    body = assert_same(real, accept)
    assert isinstance(body, bytes) and len(body.splitlines()) > 3000
    if accept in (PROMETHEUS_2, PROMETHEUS_3):
        assert b'trace_id="' in body and b"# EOF\n" in body  # the samples' exemplars are served
    # no family of ours needs prometheus_client's renderer
    library = library_choose_encoder(accept)[0]
    fallbacks: list[Collector] = []

    def counting(registry: Collector) -> bytes:
        fallbacks.append(registry)
        return library(registry)

    assert render(real, counting, openmetrics=accept in (PROMETHEUS_2, PROMETHEUS_3)) == body
    assert fallbacks == []


def test_metrics_endpoint_serves_the_fast_body(real: Frozen) -> None:
    """Through the HTTP server, plain and gzip, as Prometheus 2 and plain curl ask."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(real)
    server = MetricsServer(registry, "127.0.0.1", 0)
    server.start()
    try:
        for accept in (PROMETHEUS_2, ""):
            library, content_type = library_choose_encoder(accept)
            for encoding in ("gzip", "identity"):
                req = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics",
                                             headers={"Accept": accept, "Accept-Encoding": encoding})
                with urllib.request.urlopen(req, timeout=30) as resp:
                    body = resp.read()
                    assert resp.headers["Content-Type"] == content_type
                    if encoding == "gzip":
                        assert resp.headers["Content-Encoding"] == "gzip"
                        body = gzip.decompress(body)
                assert body == library(registry)
    finally:
        server.stop()


# --- what prometheus_client renders itself ---------------------------------------------------

def fallback_families() -> list[Metric]:
    ok = CounterMetricFamily("fine", "rendered by us", labels=["a"])
    ok.add_metric(["1"], 2.0)
    colon = GaugeMetricFamily("recorded:ratio", "a colon: OpenMetrics samples get _", labels=["job"])
    colon.add_metric(["x"], 0.5)
    utf8 = GaugeMetricFamily("température", "non-legacy name", labels=["zône"])
    utf8.add_metric(["é"], 1.0)
    reserved = GaugeMetricFamily("reserved", "label quoted under allow-utf-8", labels=["__meta"])
    reserved.add_metric(["v"], 1.0)
    native = Metric("native_seconds", "a native histogram", "histogram")
    native.add_sample("native_seconds", {"a": "b"}, 0.0, native_histogram=NativeHistogram(
        24, 100, 0, 0.001, 4, (BucketSpan(0, 2), BucketSpan(1, 2)), None, (2, 1, -3, 3)))
    weird = GaugeMetricFamily("weird", "a type prometheus_client does not know")
    weird.add_metric([], 1.0)
    weird.type = "weird"
    return [ok, colon, utf8, reserved, native, weird, ok]


@pytest.mark.parametrize("accept", [PROMETHEUS_2, "", PROMETHEUS_3])
def test_fallback_families_are_prometheus_clients(accept: str) -> None:
    registry = Frozen(fallback_families())
    library = library_choose_encoder(accept)[0]
    fallbacks: list[str] = []

    def counting(r: Collector) -> bytes:
        fallbacks.extend(m.name for m in r.collect())
        return library(r)

    body = assert_same(registry, accept)
    assert render(registry, counting, openmetrics=accept != "") == body
    assert sorted(fallbacks) == sorted(["recorded:ratio", "température", "reserved", "native_seconds", "weird"])
    assert body.count(b"# HELP fine_total rendered by us\n" if accept == "" else b"# HELP fine rendered by us\n") == 2


def test_families_prometheus_client_refuses_raise_the_same() -> None:
    gauge = GaugeMetricFamily("g", "an exemplar where OpenMetrics has none")
    gauge.add_sample("g", {}, 1.0, exemplar=Exemplar({"a": "b"}, 1.0))
    not_str = GaugeMetricFamily("h", "a label value that is not a string", labels=["a"])
    not_str.add_metric([7], 1.0)  # type: ignore[list-item]
    no_value = GaugeMetricFamily("i", "text needs a value")
    no_value.add_sample("i", {}, None)  # type: ignore[arg-type]
    for fams, accept, error in (([gauge], PROMETHEUS_2, ValueError), ([not_str], PROMETHEUS_2, AttributeError),
                                ([not_str], "", AttributeError), ([no_value], "", TypeError)):
        got = assert_same(Frozen(fams), accept)
        assert isinstance(got, tuple) and got[0] is error
    assert isinstance(assert_same(Frozen([no_value]), PROMETHEUS_2), bytes)  # OpenMetrics writes no value


def test_a_library_that_renders_differently_is_left_to_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """The self-check at the first scrape: a prometheus_client whose text differs from ours for
    the canary families keeps rendering every scrape itself."""
    from prometheus_client import exposition as library

    original = library.generate_latest

    def changed(registry: Collector, escaping: str = "underscores") -> bytes:
        return original(registry, escaping).replace(b"# HELP", b"# HELP ")

    monkeypatch.setattr(library, "generate_latest", changed)
    monkeypatch.setattr(exposition, "_checked", None)
    assert not exposition._self_check()
    assert not ours(choose_encoder("")[0])
    monkeypatch.undo()
    exposition._checked = None
    assert exposition._self_check()
