"""Native histogram logic without I/O: bucket indexes against exact arithmetic, coarsening,
the span/delta encoding, the protobuf body of every family type through the protobuf
library's own parser, content negotiation, and the eBPF classic subset and native mapping."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from exporter import exposition, exposition_protobuf
from exporter.exposition import _canary_families, _Families
from exporter.histogram import (
    DEFAULT_STAGE_BUCKETS,
    STORE_SCHEMA,
    NativeBuckets,
    NativeHistogramFamily,
    add_histogram,
    coarser,
    log_linear_bound,
    log_linear_index,
    log_linear_subset,
    log_linear_to_native,
    native_index,
    native_width,
    spans_and_deltas,
    subset_cumulative,
)
from exporter.vendor.client_model import metrics_pb2
from tests import tracegen
from tests.test_native_histograms import PROTOBUF_ACCEPT, parse_delimited


def exact_index(ns: int, schema: int) -> int:
    """The k with 2**((k-1)/2**s) < ns/1e9 <= 2**(k/2**s), by exact rational arithmetic: compare
    (ns/1e9)**(2**s) with powers of two (schema >= 0)."""
    x = Fraction(ns, 10**9) ** (1 << schema)
    k = math.floor(math.log2(x))  # a first guess, corrected exactly below
    while Fraction(2) ** k < x:
        k += 1
    while Fraction(2) ** (k - 1) >= x:
        k -= 1
    return k


@given(st.lists(st.integers(1, 10**13), min_size=1, max_size=50), st.integers(0, 4))
def test_native_index_is_the_exact_bucket_of_the_duration(ns: list[int], schema: int) -> None:
    got = native_index(np.asarray(ns) / 1e9, schema).tolist()
    for v, k in zip(ns, got, strict=True):
        want = exact_index(v, schema)
        # float64 can differ from exact arithmetic only within one ulp of an irrational bound
        if k != want:
            bound = 2.0 ** (want / (1 << schema))
            assert abs(v / 1e9 - bound) / bound < 1e-15, (v, schema, k, want)


def test_powers_of_two_are_upper_bounds_at_every_schema() -> None:
    for schema in range(-4, STORE_SCHEMA + 1):
        for e in (-30, -1, 0, 1, 5):
            k = int(native_index([2.0**e], schema)[0])
            base = 2.0 ** (2.0**-schema)
            assert base ** (k - 1) < 2.0**e <= base**k * (1 + 1e-12), (schema, e, k)


@given(st.dictionaries(st.integers(-400, 400), st.integers(1, 1000), max_size=40), st.integers(1, 8))
def test_coarsening_keeps_every_observation_under_the_same_upper_bound(buckets: dict[int, int], by: int) -> None:
    out = coarser(buckets, by)
    assert sum(out.values()) == sum(buckets.values())
    for k, c in buckets.items():
        j = -(-k // (1 << by))
        # old bucket k ends at 2**(k/n), inside new bucket j: ((j-1)*2**by, j*2**by]
        assert (j - 1) * (1 << by) < k <= j * (1 << by)
        assert out[j] >= c


@given(st.dictionaries(st.integers(-300, 300), st.integers(0, 50), max_size=40))
def test_spans_and_deltas_decode_to_the_buckets(buckets: dict[int, int]) -> None:
    spans, deltas = spans_and_deltas(buckets)
    assert sum(length for _, length in spans) == len(deltas)
    decoded: dict[int, int] = {}
    index, count, d = 0, 0, iter(deltas)
    for n, (offset, length) in enumerate(spans):
        index = offset if n == 0 else index + offset
        for _ in range(length):
            count += next(d)
            assert count >= 0
            if count:
                decoded[index] = count
            index += 1
    assert decoded == {k: c for k, c in buckets.items() if c}


def test_native_width_is_the_bucket_ratio() -> None:
    assert native_width(4) == pytest.approx(0.0443, abs=1e-4)
    assert native_width(3) == pytest.approx(0.0905, abs=1e-4)
    assert native_width(0) == 1.0


def test_protobuf_negotiation_follows_the_first_format_asked_for() -> None:
    assert exposition.choose_encoder(PROTOBUF_ACCEPT)[1] == exposition_protobuf.CONTENT_TYPE
    # Prometheus 3 with scrape_native_histograms, spaces and case as some scrapers write them
    assert exposition_protobuf.asks_for_protobuf(
        "Application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited")
    for accept in ("", "text/plain;version=0.0.4", "application/openmetrics-text;version=1.0.0,"
                   + PROTOBUF_ACCEPT, "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
                   "encoding=text", "application/vnd.google.protobuf"):
        assert not exposition_protobuf.asks_for_protobuf(accept), accept
        assert not exposition.choose_encoder(accept)[1].startswith("application/vnd.google"), accept


def test_every_family_type_round_trips_through_the_protobuf_parser() -> None:
    families = list(_canary_families())
    nh = NativeHistogramFamily("canary_native_seconds", "n", ["m"], 2)
    nh.add({"m": "x"}, ["0.5", "+Inf"], [1.0, 4.0], 3.5, None, NativeBuckets(4, 1, {-16: 1, 3: 2}))
    nh.add({"m": "empty"}, ["0.5", "+Inf"], [0.0, 0.0], 0.0, None, NativeBuckets(4, 0, {}))
    body = exposition_protobuf.render(_Families([*families, nh]))
    got = {f.name: f for f in parse_delimited(body)}
    assert set(got) == {"canary_requests_total", "canary_temperature_celsius", "canary_seconds", "canary_queue",
                        "canary_size", "canary_build_info", "canary_state", "canary_other", "canary:ratio",
                        "canary_native_seconds"}
    c = got["canary_requests_total"]
    assert c.type == metrics_pb2.COUNTER and len(c.metric) == 2
    assert c.metric[0].counter.value == 1e21 and c.metric[0].counter.created_timestamp.seconds == 1
    assert {lp.name: lp.value for lp in c.metric[1].counter.exemplar.label} == {"trace_id": 'x"y'}
    h = got["canary_seconds"].metric[0].histogram
    assert (h.sample_count, h.sample_sum) == (3, 1234567.5)
    assert [(b.upper_bound, b.cumulative_count) for b in h.bucket] == [(0.5, 1)]
    assert not h.positive_span and h.zero_threshold == 0  # no native part: a classic histogram
    assert got["canary_queue"].type == metrics_pb2.GAUGE_HISTOGRAM
    s = got["canary_size"].metric[0].summary
    assert (s.sample_count, s.sample_sum) == (3, 1e-300)
    assert got["canary_build_info"].metric[0].gauge.value == 1
    assert got["canary_temperature_celsius"].unit == "celsius"
    assert got["canary_other"].type == metrics_pb2.UNTYPED
    n = {lp.value: m.histogram for m in got["canary_native_seconds"].metric for lp in m.label}
    x = n["x"]
    # stored at schema 4, served at the family's schema 2: -16 -> -4, 3 -> 1
    assert (x.schema, x.zero_count, x.zero_threshold > 0) == (2, 1, True)
    assert [(sp.offset, sp.length) for sp in x.positive_span] == [(-4, 1), (4, 1)]
    assert list(x.positive_delta) == [1, 1]
    e = n["empty"]  # still a native histogram with nothing in it, as client_golang sends one
    assert [(sp.offset, sp.length) for sp in e.positive_span] == [(0, 0)] and e.sample_count == 0


def test_text_formats_are_unchanged_by_native_buckets() -> None:
    plain = HistogramMetricFamily("t_seconds", "t", labels=["m"])
    nh = NativeHistogramFamily("t_seconds", "t", ["m"], 3)
    add_histogram(plain, {"m": "x"}, ["0.5", "+Inf"], [1.0, 2.0], 0.75)
    nh.add({"m": "x"}, ["0.5", "+Inf"], [1.0, 2.0], 0.75, None, NativeBuckets(4, 0, {0: 2}))
    c = CounterMetricFamily("t_requests", "r")
    c.add_metric([], 2)
    for accept in ("text/plain", "application/openmetrics-text;version=1.0.0"):
        encoder = exposition.choose_encoder(accept)[0]
        assert encoder(_Families([plain, c])) == encoder(_Families([nh, c]))


def test_ebpf_classic_subset_is_evenly_spread_and_exact() -> None:
    first, last = log_linear_index(1000), log_linear_index(64_000_000_000)
    chosen = log_linear_subset(first, last, 20)
    assert len(chosen) == 20 and chosen[0] == first and chosen[-1] == last
    assert log_linear_subset(first, last, 0) == tuple(range(first, last + 1))
    counts = {0: 1, first - 3: 2, chosen[3]: 4, chosen[3] + 1: 8, last + 7: 16}
    cum = subset_cumulative(counts, chosen)
    assert cum[0] == 3 and cum[3] == 7 and cum[4] == 15 and cum[-2] == 15 and cum[-1] == 31


def test_ebpf_native_buckets_hold_each_kernel_bucket_below_its_native_upper_bound() -> None:
    counts = {0: 3, 1: 1, 7: 2, 40: 5, 97: 1}
    nb = log_linear_to_native(counts, 1e9, STORE_SCHEMA)
    assert nb.schema == 2 and nb.zero == 3 and sum(nb.positive.values()) == 9
    for i in (1, 7, 40, 97):
        k = int(native_index([log_linear_bound(i) / 1e9], 2)[0])
        upper = 2.0 ** (k / 4)
        lower = 2.0 ** ((k - 1) / 4)
        # the kernel bucket's bound is inside the native bucket its count goes to
        assert lower < log_linear_bound(i) / 1e9 <= upper * (1 + 1e-12)


def test_trace_state_keeps_native_buckets_beside_the_classic_ones(tmp_path: Path) -> None:
    from exporter.traces.aggregate import TraceAggregate
    from exporter.traces.source import bounds_ns
    from exporter.traces.tailer import TailerSettings, TraceTailer

    trace = tmp_path / "trace.json"
    tracegen.write_file(str(trace), tracegen.traces(400, seed=3, streaming_every=7))
    bounds = bounds_ns(list(DEFAULT_STAGE_BUCKETS))
    tailer = TraceTailer(TailerSettings(patterns=[str(trace)], state_dir=None, bounds_ns=bounds, settle_seconds=0))
    tailer.poll()
    agg = tailer.live
    assert agg.histograms and agg.responses
    for h in [*agg.histograms.values(), *agg.responses.values()]:
        assert h.native is not None and sum(h.native.values()) + h.zero == h.count
    for again in (TraceAggregate.from_json(agg.to_json(), bounds),
                  TraceAggregate.from_delta_json(agg.to_delta_json(), bounds, same_buckets=True)):
        for mine, theirs in ((agg.histograms, again.histograms), (agg.responses, again.responses)):
            assert {k: (h.native, h.zero) for k, h in mine.items()} == {k: (h.native, h.zero) for k, h in theirs.items()}
    # a state written before native buckets existed: its series stay classic (native unknown) after merges
    old = agg.to_json()
    for entry in old["histograms"]:
        del entry[4:]
    loaded = TraceAggregate.from_json(old, bounds)
    merged = loaded.merged(agg)
    assert all(h.native is None for h in merged.histograms.values())


def test_series_caps_and_stage_choice_hold_in_protobuf_as_in_text(tmp_path: Path) -> None:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from exporter.traces.collector import TraceCollector
    from exporter.traces.source import bounds_ns
    from exporter.traces.tailer import TailerSettings, TraceTailer

    trace = tmp_path / "trace.json"
    tracegen.write_file(str(trace), tracegen.traces(300, seed=5, models=("m1", "m2", "m3", "m4", "m5")))
    tailer = TraceTailer(TailerSettings(patterns=[str(trace)], state_dir=None, max_models=3, settle_seconds=0,
                                        bounds_ns=bounds_ns(list(DEFAULT_STAGE_BUCKETS))))
    tailer.poll()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TraceCollector(tailer, native_schema=3, stages=["queue", "end_to_end"]))
    text = generate_latest(reg).decode()
    fams = {f.name: f for f in parse_delimited(exposition_protobuf.render(reg))}
    stage = fams["inference_profiler_stage_duration_seconds"]
    in_proto = {tuple(sorted((p.name, p.value) for p in m.label)) for m in stage.metric}
    models = {dict(k)["model"] for k in in_proto}
    assert len(models) == 3 and {dict(k)["stage"] for k in in_proto} == {"queue", "end_to_end"}
    assert len(in_proto) == text.count("inference_profiler_stage_duration_seconds_count{")
    assert all(m.histogram.schema == 3 for m in stage.metric)


def test_trace_families_are_rendered_once_per_commit(tmp_path: Path) -> None:
    from prometheus_client.registry import CollectorRegistry

    from exporter.traces.collector import TraceCollector
    from exporter.traces.source import bounds_ns
    from exporter.traces.tailer import TailerSettings, TraceTailer

    trace = tmp_path / "trace.json"
    tracegen.write_file(str(trace), tracegen.traces(100, seed=9))
    tailer = TraceTailer(TailerSettings(patterns=[str(tmp_path / "trace.json*")], state_dir=None, settle_seconds=0,
                                        bounds_ns=bounds_ns(list(DEFAULT_STAGE_BUCKETS))))
    tailer.poll()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TraceCollector(tailer))
    encoders = [exposition.choose_encoder(a)[0] for a in ("", "application/openmetrics-text;version=1.0.0",
                                                           PROTOBUF_ACCEPT)]
    first = [e(reg) for e in encoders]
    assert [e(reg) for e in encoders] == first  # reused: the same bytes
    fresh = CollectorRegistry(auto_describe=False)
    fresh.register(TraceCollector(tailer))
    assert [e(fresh) for e in encoders] == first  # and the same as a collector that never rendered
    # the next commit is seen at once
    tracegen.write_file(str(tmp_path / "trace.json.1"), tracegen.traces(50, seed=10, start_id=1000))
    tailer.poll()
    after = [e(reg) for e in encoders]
    assert all(a != b for a, b in zip(after, first, strict=True))
    assert b"inference_profiler_traces_total" in after[0] and after == [e(fresh) for e in encoders]


def test_zero_durations_go_to_the_zero_bucket() -> None:
    from exporter.traces.binning import native_counts as _native_counts

    got = _native_counts(np.asarray([0, 0, 1, 1]), np.asarray([0, 1_000_000, 0, 0]), 1e9)
    assert got == {0: (1, {int(native_index([1e-3], STORE_SCHEMA)[0]): 1}), 1: (2, {})}
