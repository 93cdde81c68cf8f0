"""The Triton collector: fetches every target in parallel at scrape time and yields fresh families."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..source import PREFIX
from .metrics_text import STAGES
from .statistics import BATCH_STAGES
from .target import TritonSnapshot, TritonTarget

P = PREFIX + "triton_"
MODEL = ["target", "model", "version"]
CONFIG_LABELS = [*MODEL, "platform", "max_batch_size", "dynamic_batching", "max_queue_delay_seconds",
                 "instance_count"]


class TritonCollector(Collector):
    def __init__(self, targets: Sequence[TritonTarget], passthrough: bool = False) -> None:
        self.targets = list(targets)
        self.passthrough = passthrough

    def snapshots(self) -> list[TritonSnapshot]:
        """One snapshot per target; all fetched in parallel under one deadline."""
        pending = [t.begin() for t in self.targets]
        deadline = time.monotonic() + max((t.timeout for t in self.targets), default=0.0)
        return [t.wait(p, deadline) for t, p in zip(self.targets, pending, strict=True)]

    def describe(self) -> Iterator[Metric]:
        return families([])  # the passthrough nv_* families are Triton's, not described

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshots(), self.passthrough)


def families(snaps: Iterable[TritonSnapshot], passthrough: bool = False) -> Iterator[Metric]:
    """The Triton families of docs/metrics.md from snapshots (pure: the scrape path only reads them)."""
    snaps = list(snaps)
    up = GaugeMetricFamily(P + "up", "1 when the last fetch of Triton's /metrics and APIs succeeded.",
                           labels=["target"])
    dur = GaugeMetricFamily(P + "scrape_duration_seconds", "Time the last fetch from Triton took.",
                            labels=["target"])
    stage = CounterMetricFamily(P + "stage_seconds", "Triton's cumulative time per stage "
                                "(nv_inference_*_duration_us in seconds).", labels=[*MODEL, "stage"])
    req = CounterMetricFamily(P + "requests", "Inference requests by outcome; failures keep Triton's reason "
                              "(REJECTED: refused by the queue policy, CANCELED, BACKEND, OTHER).",
                              labels=[*MODEL, "outcome", "reason"])
    inf = CounterMetricFamily(P + "inferences", "Inferences performed (batch items).", labels=MODEL)
    exe = CounterMetricFamily(P + "executions", "Model executions (batches run).", labels=MODEL)
    pend = GaugeMetricFamily(P + "pending_requests", "Requests waiting to execute.", labels=MODEL)
    bexe = CounterMetricFamily(P + "batch_executions", "Executions per batch size (statistics API).",
                               labels=[*MODEL, "batch_size"])
    bstage = CounterMetricFamily(P + "batch_stage_seconds", "Compute time per batch size and stage "
                                 "(statistics API).", labels=[*MODEL, "batch_size", "stage"])
    info = GaugeMetricFamily(P + "model_config_info", "Model configuration of each ready model version.",
                             labels=CONFIG_LABELS)
    raw: dict[str, Metric] = {}
    for s in snaps:
        t = s.target
        up.add_metric([t], 1.0 if s.up else 0.0)
        dur.add_metric([t], s.duration)
        if s.metrics is not None:
            for (model, version), c in sorted(s.metrics.models.items()):
                lab = [t, model, version]
                for st in STAGES:
                    if st in c.stage_us:
                        stage.add_metric([*lab, st], float(c.stage_us[st]) / 1e6)
                if c.success is not None:
                    req.add_metric([*lab, "success", ""], float(c.success))
                for reason, n in sorted(c.failures.items()):
                    req.add_metric([*lab, "failure", reason], float(n))
                if c.inferences is not None:
                    inf.add_metric(lab, float(c.inferences))
                if c.executions is not None:
                    exe.add_metric(lab, float(c.executions))
                if c.pending is not None:
                    pend.add_metric(lab, float(c.pending))
            if passthrough:
                _passthrough(raw, t, s.metrics.raw)
        if s.stats is not None:
            for (model, version), ms in sorted(s.stats.items()):
                for size, b in sorted(ms.batches.items()):
                    lab = [t, model, version, str(size)]
                    bexe.add_metric(lab, float(b.executions))
                    for st in BATCH_STAGES:
                        bstage.add_metric([*lab, st], b.stage_ns.get(st, 0) / 1e9)
        for (model, version), ci in sorted(s.configs.items()):
            info.add_metric([t, model, version, ci.platform, str(ci.max_batch_size),
                             "true" if ci.dynamic_batching else "false", f"{ci.max_queue_delay_seconds:g}",
                             str(ci.instance_count)], 1.0)
    yield from (up, dur, stage, req, inf, exe, pend, bexe, bstage, info)
    yield from raw.values()


def _passthrough(out: dict[str, Metric], target: str, fams: Iterable[Metric]) -> None:
    """Triton's nv_* families under their own names, plus a `target` label."""
    for f in fams:
        # counters go out untyped so their samples keep Triton's names (no _total added)
        typ = "unknown" if f.type == "counter" else f.type
        m = out.get(f.name)
        if m is None:
            m = out[f.name] = Metric(f.name, f.documentation, typ, f.unit)
        for smp in f.samples:
            name = f.name if f.type == "counter" and smp.name == f.name + "_total" else smp.name
            m.add_sample(name, {"target": target, **smp.labels}, smp.value, smp.timestamp, smp.exemplar)
