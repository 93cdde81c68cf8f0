"""The trace collector: reads the tailer's committed aggregate at scrape time."""

from __future__ import annotations

from collections.abc import Collection, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as PromExemplar

from ..exposition import reusable
from ..histogram import STORE_SCHEMA, NativeHistogramFamily, cumulative, format_le
from ..source import PREFIX
from ..stages import ALL_STAGES, OUTCOMES
from .aggregate import RESPONSE_BOUNDS, TraceAggregate
from .tailer import TraceTailer

# Counted apart from rejections: Triton's tensor dumps at trace level TENSORS are healthy input.
TENSOR_RECORD = "tensor_record"
REJECT_REASONS = (
    "malformed_json", "not_utf8", "wrong_type", "missing_field", "unknown_timestamp", "bad_label",
    "missing_header", "incomplete_trace", "negative_span", "implausible_span", "model_cap",
    "custom_activity_cap", "truncated_file", "empty_file", "oversized_object",
)


class TraceCollector(Collector):
    def __init__(self, tailer: TraceTailer, native_schema: int = STORE_SCHEMA, stages: Collection[str] = ()) -> None:
        self.tailer = tailer
        self.native_schema = native_schema  # of the native histograms in the protobuf format
        # built-in stages left out of stage_duration_seconds (--trace-stage picks the rest); none: all exposed
        self.hidden = frozenset(ALL_STAGES) - frozenset(stages) if stages else frozenset()
        self._committed: tuple[TraceAggregate, list[Metric]] | None = None

    def describe(self) -> Iterator[Metric]:
        return self.collect()  # reads the committed snapshot only: cheap at registration

    def collect(self) -> Iterator[Metric]:
        agg = self.tailer.live  # one committed snapshot; never mutated after commit
        cached = self._committed
        if cached is None or cached[0] is not agg:
            # the families of a commit, built and rendered once: scrapes until the next commit reuse them
            cached = self._committed = (agg, [reusable(m) for m in self._families_of(agg)])
        yield from cached[1]
        yield from self._live_families()

    def _families_of(self, agg: TraceAggregate) -> Iterator[Metric]:
        names = self.tailer.label_names
        les = [format_le(b / 1e9) for b in agg.bounds_ns] + ["+Inf"]
        label_names = [*names, "model", "version", "protocol", "stage"]
        h = NativeHistogramFamily(
            PREFIX + "stage_duration_seconds",
            "Time per Triton request stage, from trace files (stages: docs/metrics.md).",
            label_names, self.native_schema)
        hidden = self.hidden
        for key in sorted(agg.histograms):
            if hidden and key[-1] in hidden:
                continue
            hist = agg.histograms[key]
            ex = agg.exemplars.get(key)
            exemplars: dict[int, PromExemplar] = {}
            for i, e in (ex or {}).items():
                lab = {"trace_id": e.trace_id}
                if e.request_id:
                    lab["request_id"] = e.request_id[:64]
                exemplars[i] = PromExemplar(lab, e.value, e.timestamp)
            h.add(dict(zip(label_names, key, strict=False)), les, [float(c) for c in cumulative(hist.counts)],
                  hist.total / 1e9, exemplars, hist.native_buckets())
        yield h
        t = CounterMetricFamily(PREFIX + "traces", "Traces counted from trace files.",
                                labels=[*names, "model", "version", "protocol"])
        for key, n in sorted(agg.traces.items()):
            t.add_metric(list(key), float(n))
        yield t
        o = CounterMetricFamily(
            PREFIX + "requests",
            "Traced requests by outcome: answered, cancelled (the client gave up or its deadline passed: no "
            "response went out), cache_hit (answered from the response cache), failed (where the source says so).",
            labels=[*names, "model", "version", "protocol", "outcome"])
        for key, n in sorted(agg.outcomes.items(), key=lambda kv: (kv[0][:-1], OUTCOMES.index(kv[0][-1])
                                                                   if kv[0][-1] in OUTCOMES else len(OUTCOMES))):
            o.add_metric(list(key), float(n))
        yield o
        r_les = [format_le(float(b)) for b in RESPONSE_BOUNDS] + ["+Inf"]
        r_names = [*names, "model", "version", "protocol"]
        rh = NativeHistogramFamily(PREFIX + "responses_per_request",
                                   "Responses sent per request (several for decoupled, streaming models).",
                                   r_names, self.native_schema)
        for key in sorted(agg.responses):
            hist = agg.responses[key]
            rh.add(dict(zip(r_names, key, strict=False)), r_les, [float(c) for c in cumulative(hist.counts)],
                   float(hist.total), None, hist.native_buckets())
        yield rh
        tl = CounterMetricFamily(
            PREFIX + "timeline_seconds",
            "Time of end_to_end per exclusive segment: the segments of a trace add up to its end_to_end, so "
            "the sum over segments of the rate, divided by the rate of the end_to_end count (cancelled requests have "
            "no timeline), is the mean end_to_end.",
            labels=[*names, "model", "version", "protocol", "segment"])
        for key, ns in sorted(agg.timeline.items()):
            tl.add_metric(list(key), ns / 1e9)
        yield tl
        j = CounterMetricFamily(
            PREFIX + "socket_joins",
            "Traced requests by the result of their join to a socket turn (eBPF): joined, ambiguous (several "
            "candidates, as on a busy gRPC connection), no_socket_event (no turn recorded), unsupported (no "
            "frontend, or eBPF unavailable). Counted only where the join runs (--wire-join).",
            labels=[*names, "model", "version", "protocol", "result"])
        for key, n in sorted(agg.joins.items()):
            j.add_metric(list(key), float(n))
        yield j
        f = CounterMetricFamily(PREFIX + "trace_files", "Trace files ingested, by result.", labels=["result"])
        for result in ("parsed", "failed"):
            f.add_metric([result], float(agg.files.get(result, 0)))
        yield f
        r = CounterMetricFamily(PREFIX + "trace_records_rejected",
                                "Trace records or spans not counted, by reason.", labels=["reason"])
        for reason in sorted((set(REJECT_REASONS) | set(agg.rejected)) - {TENSOR_RECORD}):
            r.add_metric([reason], float(agg.rejected.get(reason, 0)))
        yield r
        tr = CounterMetricFamily(PREFIX + "trace_tensor_records",
                                 "Tensor records of trace level TENSORS read and skipped: not timing data, not "
                                 "rejections (Triton writes UINT8 and BYTES data unescaped).")
        tr.add_metric([], float(agg.rejected.get(TENSOR_RECORD, 0)))
        yield tr
        g = GaugeMetricFamily(PREFIX + "trace_last_ingest_timestamp_seconds",
                              "Unix time of the last trace file ingested (0: none yet).")
        g.add_metric([], agg.last_ingest)
        yield g

    def _live_families(self) -> Iterator[Metric]:
        """What changes between commits: the files on disk and the state writes."""
        names = self.tailer.label_names
        d = GaugeMetricFamily(PREFIX + "trace_files_bytes",
                              "Bytes of trace files on disk under --trace-file, ingested or not.", labels=names)
        for key, size in sorted(self.tailer.disk_bytes.items()):
            d.add_metric(list(key), float(size))
        yield d
        w = CounterMetricFamily(PREFIX + "state_writes",
                                "Durable writes of the trace state under --state-dir, by kind: journal (one "
                                "commit's change appended) or snapshot (the whole state file).", labels=["kind"])
        b = CounterMetricFamily(PREFIX + "state_written_bytes", "Bytes of those writes, by kind.", labels=["kind"])
        for kind in ("journal", "snapshot"):
            w.add_metric([kind], float(self.tailer.state_writes[kind]))
            b.add_metric([kind], float(self.tailer.state_written_bytes[kind]))
        yield w
        yield b
