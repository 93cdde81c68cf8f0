"""The eBPF collector: at scrape time, reads each program's maps into the families its .yaml declares."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..histogram import (
    STORE_SCHEMA,
    NativeHistogramFamily,
    format_le,
    log_linear_bound,
    log_linear_subset,
    log_linear_to_native,
    subset_cumulative,
)
from ..source import PREFIX, ErrorCounts
from .declaration import POD_LABELS, KeyField, MetricDecl, ProgramDecl, metric_key
from .kernel import bpf_stats_enabled
from .loader import Program, SeriesKey

log = logging.getLogger("ebpf")


@dataclass
class ProgramState:
    decl: ProgramDecl
    loaded: Program | None
    reason: str = ""  # why not loaded
    # series of gone cgroups, moved out of the kernel map while their labels are still in use
    retired: dict[SeriesKey, tuple[int, int]] = field(default_factory=dict)


PodLabeller = Callable[[int], tuple[str, str, str]]  # cgroup id -> (namespace, pod, container)


def label_names(decl: MetricDecl, fields: Mapping[str, KeyField], pods: bool) -> list[str]:
    """The metric's label names: a `pod` key field stands for POD_LABELS, or nothing without pods."""
    out: list[str] = []
    for name in decl.labels:
        if not fields[name].pod:
            out.append(name)
        elif pods:
            out.extend(POD_LABELS)
    return out


def metric_families(decl: ProgramDecl, series: Mapping[SeriesKey, tuple[int, int]],
                    ports: Sequence[int] = (), pods: PodLabeller | None = None,
                    active: Sequence[bool] | None = None, classic_buckets: int = 0,
                    native_schema: int = STORE_SCHEMA) -> list[Metric]:
    """One family per declared metric from the program's raw series (pure: no kernel here).

    A metric declared zero_per_port has a series at 0 for every watched port, so a rate
    over it (retransmits) exists before the first event. With `pods`, a `pod` key field
    (the cgroup id) becomes the namespace, pod and container labels `pods` names for it;
    series of cgroups with the same labels add up. `active` (per metric; default all) leaves
    out the families of metrics not collected (not selected, or their optional part not compiled).
    A histogram has at most `classic_buckets` classic buckets (0: every kernel bucket in its declared
    range) and native buckets from every kernel bucket (protobuf only).
    """
    key = metric_key(decl.source.parent)
    fields = [key.field(name) for name in key.names]
    by_name = {f.name: f for f in fields}
    at = {name: i for i, name in enumerate(key.names)}

    def label_values(m: MetricDecl, raw: SeriesKey) -> tuple[str, ...]:
        out: list[str] = []
        for name in m.labels:
            f = by_name[name]
            if not f.pod:
                out.append(f.label(raw[at[name]]))
            elif pods is not None:
                out.extend(pods(raw[at[name]]))
        return tuple(out)

    # metric id -> label values -> bucket index -> (count, sum)
    grouped: dict[int, dict[tuple[str, ...], dict[int, tuple[int, int]]]] = defaultdict(lambda: defaultdict(dict))
    on = list(active) if active is not None else [True] * len(decl.metrics)
    for i, m in enumerate(decl.metrics):
        if m.zero_per_port and on[i]:
            for port in ports:  # outside any pod: the series every node has
                zero = tuple(port if name == "port" else 0 for name in key.names)
                grouped[i][label_values(m, zero)].setdefault(0, (0, 0))
    for raw, (count, total) in series.items():
        metric, bucket = raw[at["metric"]], raw[at["bucket"]]
        if metric >= len(decl.metrics) or not on[metric]:
            continue
        m = decl.metrics[metric]
        labels = label_values(m, raw)
        buckets = grouped[metric][labels]
        c0, s0 = buckets.get(bucket, (0, 0))
        buckets[bucket] = (c0 + count, s0 + total)
    return [_family(m, label_names(m, by_name, pods is not None), grouped.get(i, {}), classic_buckets, native_schema)
            for i, m in enumerate(decl.metrics) if on[i]]


def _family(m: MetricDecl, names: list[str], by_labels: Mapping[tuple[str, ...], dict[int, tuple[int, int]]],
            classic_buckets: int, native_schema: int) -> Metric:
    if m.type == "counter":
        c = CounterMetricFamily(PREFIX + m.name, m.help, labels=names)
        for labels in sorted(by_labels):
            c.add_metric(list(labels), sum(n for n, _ in by_labels[labels].values()) / m.divisor)
        return c
    first, last = m.index_range
    h = NativeHistogramFamily(PREFIX + m.name, m.help, names, native_schema)
    chosen = log_linear_subset(first, last, classic_buckets)
    les = (*(format_le(log_linear_bound(i) / m.divisor) for i in chosen), "+Inf")
    for labels in sorted(by_labels):
        buckets = by_labels[labels]
        counts = {i: n for i, (n, _) in buckets.items()}
        total = sum(x for _, x in buckets.values())
        h.add(dict(zip(names, labels, strict=False)), les, subset_cumulative(counts, chosen), total / m.divisor,
              None, log_linear_to_native(counts, m.divisor, native_schema))
    return h


class EbpfCollector(Collector):
    def __init__(self, programs: Sequence[ProgramState], lock: threading.Lock, errors: ErrorCounts,
                 ports: Sequence[int] = (), pods: PodLabeller | None = None, selected: Sequence[str] = (),
                 classic_buckets: int = 0, native_schema: int = STORE_SCHEMA) -> None:
        self.programs = programs
        self.classic_buckets = classic_buckets  # --ebpf-buckets
        self.native_schema = native_schema
        self.selected = selected  # --ebpf-metric: the families collected (none: every one)
        self.ports = ports
        self.pods = pods
        self.lock = lock  # held while programs are read or closed
        self.errors = errors
        self._logged: set[str] = set()

    def _read_failed(self, program: str, e: Exception) -> None:
        self.errors.inc("ebpf", "map_read_failed")
        if program not in self._logged:  # once per program: the counter says how often
            self._logged.add(program)
            log.warning("eBPF %s: reading its metrics map failed: %s", program, e)

    def describe(self) -> Iterator[Metric]:
        yield from _program_families()
        for p in self.programs:
            described = [not self.selected or m.name in self.selected for m in p.decl.metrics]
            yield from metric_families(p.decl, {}, pods=self.pods, active=described,
                                       classic_buckets=self.classic_buckets)

    def collect(self) -> Iterator[Metric]:
        up, info, run_s, run_n = _program_families()
        stats = bpf_stats_enabled()
        families: list[Metric] = []
        with self.lock:
            for p in self.programs:
                name = p.decl.program
                loaded = p.loaded
                up.add_metric([name], 1.0 if loaded and loaded.attached else 0.0)
                info.add_metric([name, loaded.method if loaded else "none"], 1.0)
                series: dict[SeriesKey, tuple[int, int]] = dict(p.retired)
                if loaded:
                    try:
                        for k, (n, total) in loaded.read_series().items():
                            n0, total0 = series.get(k, (0, 0))
                            series[k] = (n0 + n, total0 + total)
                    except Exception as e:  # a map that cannot be read costs its series, not the scrape
                        self._read_failed(name, e)
                active = p.decl.active(self.selected, loaded.defines if loaded else None)
                families.extend(metric_families(p.decl, series, self.ports, self.pods, active,
                                                self.classic_buckets, self.native_schema))
                if loaded and stats:
                    ns, runs = loaded.run_stats()
                    run_s.add_metric([name], ns / 1e9)
                    run_n.add_metric([name], float(runs))
        yield up
        yield info
        if stats:
            yield run_s
            yield run_n
        yield from families


def _program_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily]:
    """Empty families about the programs themselves: up, attach_info, run seconds, run count."""
    return (
        GaugeMetricFamily(PREFIX + "ebpf_up", "1 when the eBPF program is loaded and attached.",
                          labels=["program"]),
        GaugeMetricFamily(PREFIX + "ebpf_attach_info",
                          "How each eBPF program is attached (method none: not loaded).",
                          labels=["program", "method"]),
        CounterMetricFamily(PREFIX + "ebpf_run_seconds",
                            "Kernel time spent in the program (kernel.bpf_stats_enabled=1).",
                            labels=["program"]),
        CounterMetricFamily(PREFIX + "ebpf_run_count",
                            "Runs of the program (kernel.bpf_stats_enabled=1).", labels=["program"]),
    )
