"""/metrics in the Prometheus protobuf format: length-delimited io.prometheus.client.MetricFamily
messages, defined by the vendored client data model (exporter/vendor/client_model).

Prometheus asks for it first when native histograms are on (2.40+ with
--enable-feature=native-histograms, 3.x with scrape_native_histograms), and it is the only format
both read native histograms from. Every family goes out; a histogram carries its classic buckets
and, where its collector attached them (NativeHistogramFamily), its native buckets beside them, as
client_golang does, so a Prometheus keeping classic histograms reads the same series as from text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample, Timestamp

from .exposition import RENDERED, valid_text
from .histogram import (
    ZERO_THRESHOLD,
    HistogramSeries,
    NativeBuckets,
    NativeHistogramFamily,
    spans_and_deltas,
)
from .varint import varint

MEDIA_TYPE = "application/vnd.google.protobuf"
PROTO = "io.prometheus.client.MetricFamily"
CONTENT_TYPE = f"{MEDIA_TYPE}; proto={PROTO}; encoding=delimited"

_pb: Any = None  # the generated module, imported on the first protobuf scrape only


def _messages() -> Any:
    global _pb
    if _pb is None:
        from .vendor.client_model import metrics_pb2

        _pb = metrics_pb2
    return _pb


def asks_for_protobuf(accept: str) -> bool:
    """True when the first format of `accept` that we serve is the delimited MetricFamily protobuf
    (prometheus_client takes the first text format it knows in the same way, and ignores q)."""
    for item in (accept or "").split(","):
        media, *params = (p.strip() for p in item.split(";"))
        media = media.lower()
        if media == MEDIA_TYPE:
            kv = dict(p.split("=", 1) for p in params if "=" in p)
            if kv.get("proto") == PROTO and kv.get("encoding") == "delimited":
                return True
        elif media in ("text/plain", "application/openmetrics-text"):
            return False
    return False


def _timestamp(msg: Any, seconds: float) -> None:
    whole = math.floor(seconds)
    msg.seconds = whole
    msg.nanos = min(round((seconds - whole) * 1e9), 999_999_999)


def _set_exemplar(msg: Any, e: Exemplar) -> None:
    add = msg.label.add
    for k, v in sorted(e.labels.items()):
        add(name=k, value=valid_text(v))
    msg.value = e.value
    if e.timestamp is not None:
        ts = e.timestamp
        msg.timestamp.FromNanoseconds(ts.sec * 1_000_000_000 + ts.nsec if isinstance(ts, Timestamp)
                                      else round(float(ts) * 1e9))


def _labels(metric: Any, labels: Mapping[str, str]) -> None:
    add = metric.label.add
    for k, v in sorted(labels.items()):
        add(name=k, value=valid_text(v))  # protobuf refuses what is not UTF-8, as the text formats would


def _timestamp_ms(sample: Sample) -> int | None:
    ts = sample.timestamp
    if ts is None:
        return None
    if isinstance(ts, Timestamp):
        return ts.sec * 1000 + ts.nsec // 1_000_000
    return int(float(ts) * 1000)


def _series(samples: Iterable[Sample], drop: str = "") -> Iterator[tuple[dict[str, str], list[Sample]]]:
    """Samples grouped by their labels less `drop` (le, quantile), in order of first appearance."""
    groups: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[Sample]]] = {}
    for s in samples:
        base = {k: v for k, v in s.labels.items() if k != drop} if drop in s.labels else s.labels
        key = tuple(sorted(base.items()))
        if key not in groups:
            groups[key] = (dict(base), [])
        groups[key][1].append(s)
    yield from groups.values()


def _native(h: Any, nb: NativeBuckets, schema: int) -> None:
    nb = nb.at(schema)
    h.schema = nb.schema
    h.zero_threshold = ZERO_THRESHOLD
    h.zero_count = nb.zero
    spans, deltas = spans_and_deltas(nb.positive)
    if not spans:
        spans = [(0, 0)]  # an empty native histogram still says it is one, as client_golang's does
    for offset, length in spans:
        span = h.positive_span.add()
        span.offset, span.length = offset, length
    h.positive_delta.extend(deltas)


def _native_family_series(m: Any, series: HistogramSeries, schema: int) -> None:
    """One series of a NativeHistogramFamily, from the numbers its collector gave (not the samples)."""
    _labels(m, series.labels)
    h = m.histogram
    cumulative = series.cumulative
    h.sample_count = int(cumulative[-1])
    h.sample_sum = series.total
    add = h.bucket.add
    exemplars = series.exemplars
    if exemplars:
        for i, (bound, c) in enumerate(zip(series.bounds, cumulative, strict=False)):
            b = add(cumulative_count=int(c), upper_bound=bound)
            if (e := exemplars.get(i)) is not None:
                _set_exemplar(b.exemplar, e)
    else:
        for bound, c in zip(series.bounds, cumulative, strict=False):
            add(cumulative_count=int(c), upper_bound=bound)
    if series.native is not None:
        _native(h, series.native, schema)
        if exemplars:  # a native histogram carries its exemplars apart from any bucket
            h.exemplars.extend([b.exemplar for b in h.bucket if b.HasField("exemplar")])
            if (e := exemplars.get(len(series.bounds))) is not None:  # the +Inf bucket's
                _set_exemplar(h.exemplars.add(), e)


def _histogram(fam: Any, metric: Any, samples: list[Sample]) -> None:
    name = metric.name
    h = fam.histogram
    bucket = name + "_bucket"
    for s in samples:
        if s.name == bucket:
            le = float(s.labels["le"])
            if math.isinf(le):  # the +Inf bucket is sample_count
                continue
            b = h.bucket.add(cumulative_count=int(s.value), upper_bound=le)
            if s.exemplar is not None:
                _set_exemplar(b.exemplar, s.exemplar)
        elif s.name in (name + "_count", name + "_gcount"):
            h.sample_count = int(s.value)
        elif s.name in (name + "_sum", name + "_gsum"):
            h.sample_sum = s.value
        elif s.name == name + "_created":
            _timestamp(h.created_timestamp, s.value)


def _family(metric: Any) -> Any:
    """One MetricFamily message for one prometheus_client family (the text format's types)."""
    pb = _messages()
    fam = pb.MetricFamily(help=metric.documentation, unit=metric.unit)
    typ = metric.type
    if typ == "counter":
        fam.name, fam.type = metric.name + "_total", pb.COUNTER
        for labels, samples in _series(metric.samples):
            m = fam.metric.add()
            _labels(m, labels)
            for s in samples:
                if s.name.endswith("_created"):
                    _timestamp(m.counter.created_timestamp, s.value)
                else:
                    m.counter.value = s.value
                    if s.exemplar is not None:
                        _set_exemplar(m.counter.exemplar, s.exemplar)
                    if (ms := _timestamp_ms(s)) is not None:
                        m.timestamp_ms = ms
    elif typ in ("histogram", "gaugehistogram"):
        fam.name, fam.type = metric.name, pb.HISTOGRAM if typ == "histogram" else pb.GAUGE_HISTOGRAM
        if isinstance(metric, NativeHistogramFamily):
            for series in metric.series:
                _native_family_series(fam.metric.add(), series, metric.native_schema)
        else:
            for labels, samples in _series(metric.samples, drop="le"):
                m = fam.metric.add()
                _labels(m, labels)
                _histogram(m, metric, samples)
    elif typ == "summary":
        fam.name, fam.type = metric.name, pb.SUMMARY
        for labels, samples in _series(metric.samples, drop="quantile"):
            m = fam.metric.add()
            _labels(m, labels)
            for s in samples:
                if s.name == metric.name and "quantile" in s.labels:
                    q = m.summary.quantile.add()
                    q.quantile, q.value = float(s.labels["quantile"]), s.value
                elif s.name == metric.name + "_count":
                    m.summary.sample_count = int(s.value)
                elif s.name == metric.name + "_sum":
                    m.summary.sample_sum = s.value
                elif s.name == metric.name + "_created":
                    _timestamp(m.summary.created_timestamp, s.value)
    else:  # gauge, info, stateset (gauges in every format but OpenMetrics), unknown
        untyped = typ == "unknown"
        fam.name = metric.name + "_info" if typ == "info" else metric.name
        fam.type = pb.UNTYPED if untyped else pb.GAUGE
        for s in metric.samples:
            m = fam.metric.add()
            _labels(m, s.labels)
            (m.untyped if untyped else m.gauge).value = s.value
            if (ms := _timestamp_ms(s)) is not None:
                m.timestamp_ms = ms
    return fam


def render(registry: Collector) -> bytes:
    """The delimited protobuf body for every family of `registry`."""
    out: list[bytes] = []
    for metric in registry.collect():
        rendered: dict[object, bytes] | None = getattr(metric, RENDERED, None)
        if rendered is not None and "protobuf" in rendered:
            out.append(rendered["protobuf"])
            continue
        if not metric.samples:  # as client_golang: a family without series is left out
            body = b""
        else:
            message = _family(metric).SerializeToString()
            body = varint(len(message)) + message
        out.append(body)
        if rendered is not None:
            rendered["protobuf"] = body
    return b"".join(out)
