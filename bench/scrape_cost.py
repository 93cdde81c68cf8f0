"""Cost of answering /metrics: our collectors vs a bare prometheus_client registry, same series;
then our renderer (exporter/exposition.py) vs prometheus_client's encoders on our registry.

State: 100 models x every trace stage x 20 buckets in the trace histograms (built with
the real TraceCollector over a TraceAggregate, an exemplar on every bucket as a busy
exporter has), plus the Triton collector fed 100 models (a snapshot parsed from synthetic
Triton /metrics text and statistics, held in its cache so no network is involved).
Baseline: prometheus_client Histogram/Counter/Gauge objects holding exactly the same
series (an exemplar on every bucket too). Both are timed in turn with prometheus_client's
encoders and through our HTTP server (our renderer for both), and the ratio ours/baseline
printed (target <= 2). Ours is timed as the first scrape after a commit (nothing reused).

Renderer: the same scrape of our registry rendered by prometheus_client and by us, in turn,
for text 0.0.4 and OpenMetrics 1.0.0 (the Accept headers Prometheus sends), the bodies checked
byte-identical first; "scrape" includes the collectors, "render" renders families collected once.
Then the Prometheus protobuf format (exporter/exposition_protobuf.py: every histogram classic and
native; prometheus_client has no encoder for it), beside our text and OpenMetrics, its body
parsed back by the protobuf library first. Last, scrapes between two commits, which reuse the
trace families' rendering, against the same scrapes with a commit before each.
--models 8 is about the 3,000 samples of the soak.

    .venv/bin/python bench/scrape_cost.py [--models 100] [--rounds 10]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder as library_encoder
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from exporter import exposition_protobuf
from exporter.exposition import RENDERED, choose_encoder
from exporter.histogram import Histogram as BucketCounts
from exporter.histogram import native_index
from exporter.server import MetricsServer
from exporter.stages import STAGES
from exporter.traces.aggregate import Exemplar, TraceAggregate
from exporter.traces.collector import REJECT_REASONS, TraceCollector
from exporter.traces.tailer import TailerSettings, TraceTailer
from exporter.triton.collector import TritonCollector
from exporter.triton.metrics_text import STAGE_FAMILIES, parse_metrics_text
from exporter.triton.statistics import BATCH_STAGES, parse_model_config, parse_statistics
from exporter.triton.target import TritonSnapshot, TritonTarget

BOUNDS_S = tuple(50e-6 * (60.0 / 50e-6) ** (i / 18) for i in range(19))  # 19 bounds + +Inf = 20 buckets
BATCH_SIZES = range(1, 9)
TARGET = "127.0.0.1:8000"
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def models(n: int) -> list[str]:
    return [f"model_{i:03d}" for i in range(n)]


def triton_text(names: list[str]) -> str:
    lines: list[str] = []
    fams = [(f, "counter") for f in STAGE_FAMILIES] + [
        ("nv_inference_request_success", "counter"), ("nv_inference_request_failure", "counter"),
        ("nv_inference_count", "counter"), ("nv_inference_exec_count", "counter"),
        ("nv_inference_pending_request_count", "gauge")]
    for fam, typ in fams:
        lines += [f"# HELP {fam} x", f"# TYPE {fam} {typ}"]
        for m in names:
            reason = ',reason="BACKEND"' if fam.endswith("failure") else ""
            lines.append(f'{fam}{{model="{m}",version="1"{reason}}} {random.randint(0, 10**9)}')
    return "\n".join(lines) + "\n"


def triton_stats(names: list[str]) -> dict[str, Any]:
    def stage() -> dict[str, int]:
        return {"count": random.randint(1, 10**6), "ns": random.randint(1, 10**12)}

    return {"model_stats": [{"name": m, "version": "1", "inference_count": 1, "execution_count": 1,
                             "batch_stats": [{"batch_size": b, **{s: stage() for s in BATCH_STAGES}}
                                             for b in BATCH_SIZES]} for m in names]}


def ours(names: list[str]) -> CollectorRegistry:
    bounds_ns = tuple(round(b * 1e9) for b in BOUNDS_S)
    tailer = TraceTailer(TailerSettings(patterns=[], state_dir=None, bounds_ns=bounds_ns))
    agg = TraceAggregate(bounds_ns)
    for m in names:
        agg.traces[(m, "1", "http")] = random.randint(1, 10**6)
        for st in STAGES:
            h = BucketCounts(bounds_ns)
            h.counts = [random.randint(0, 1000) for _ in h.counts]
            h.count, h.total = sum(h.counts), random.randint(1, 10**12)
            # native buckets as real durations fill them: the same count spread log-normally around ~5 ms
            ks = native_index([random.lognormvariate(-5.3, 1.0) for _ in range(200)], 4).tolist()
            h.native = {k: 0 for k in ks}
            for i in range(h.count):
                h.native[ks[i % len(ks)]] += 1
            agg.histograms[(m, "1", "http", st)] = h
            agg.exemplars[(m, "1", "http", st)] = {
                b: Exemplar(str(random.randint(1, 10**9)), None, random.random(), time.time())
                for b in range(len(h.counts))}
    agg.files["parsed"] = 10
    agg.last_ingest = time.time()
    tailer.live = agg

    target = TritonTarget("http://" + TARGET, "http://127.0.0.1:8002/metrics", 2.0, cache_seconds=1e9)
    cfg = parse_model_config({"backend": "python", "max_batch_size": 8,
                              "dynamic_batching": {"max_queue_delay_microseconds": 500},
                              "instance_group": [{"count": 1}]})
    snap = TritonSnapshot(target.name, True, 0.004, parse_metrics_text(triton_text(names)),
                          parse_statistics(triton_stats(names)), {(m, "1"): cfg for m in names})
    target._cached, target._cached_at = snap, time.monotonic()  # held in the scrape cache: no network
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TraceCollector(tailer))
    reg.register(TritonCollector([target]))
    TAILERS[id(reg)] = tailer
    return reg


TAILERS: dict[int, TraceTailer] = {}  # registry -> the tailer its trace collector reads


def baseline(names: list[str]) -> CollectorRegistry:
    prometheus_client.disable_created_metrics()  # our families carry no _created samples either
    reg = CollectorRegistry(auto_describe=False)
    p = "inference_profiler_"
    h = Histogram(p + "stage_duration_seconds", "x", ["model", "version", "protocol", "stage"],
                  buckets=BOUNDS_S, registry=reg)
    traces = Counter(p + "traces", "x", ["model", "version", "protocol"], registry=reg)
    files = Counter(p + "trace_files", "x", ["result"], registry=reg)
    rej = Counter(p + "trace_records_rejected", "x", ["reason"], registry=reg)
    last = Gauge(p + "trace_last_ingest_timestamp_seconds", "x", registry=reg)
    writes = Counter(p + "state_writes", "x", ["kind"], registry=reg)
    written = Counter(p + "state_written_bytes", "x", ["kind"], registry=reg)
    t = p + "triton_"
    up = Gauge(t + "up", "x", ["target"], registry=reg)
    dur = Gauge(t + "scrape_duration_seconds", "x", ["target"], registry=reg)
    lab = ["target", "model", "version"]
    stage = Counter(t + "stage_seconds", "x", [*lab, "stage"], registry=reg)
    req = Counter(t + "requests", "x", [*lab, "outcome"], registry=reg)
    inf = Counter(t + "inferences", "x", lab, registry=reg)
    exe = Counter(t + "executions", "x", lab, registry=reg)
    pend = Gauge(t + "pending_requests", "x", lab, registry=reg)
    bexe = Counter(t + "batch_executions", "x", [*lab, "batch_size"], registry=reg)
    bst = Counter(t + "batch_stage_seconds", "x", [*lab, "batch_size", "stage"], registry=reg)
    info = Gauge(t + "model_config_info", "x", [*lab, "platform", "max_batch_size", "dynamic_batching",
                                                "max_queue_delay_seconds", "instance_count"], registry=reg)
    for r in ("parsed", "failed"):
        files.labels(r).inc(3)
    for r in REJECT_REASONS:
        rej.labels(r).inc(0)
    for kind in ("journal", "snapshot"):
        writes.labels(kind).inc(0)
        written.labels(kind).inc(0)
    last.set(time.time())
    up.labels(TARGET).set(1)
    dur.labels(TARGET).set(0.004)
    for m in names:
        traces.labels(m, "1", "http").inc(random.randint(1, 10**6))
        for st in STAGES:
            child = h.labels(m, "1", "http", st)
            for b in (*BOUNDS_S, BOUNDS_S[-1] * 2):  # one observation, with its exemplar, per bucket
                child.observe(b * 0.99, {"trace_id": str(random.randint(1, 10**9))})
        for st in STAGE_FAMILIES.values():
            stage.labels(TARGET, m, "1", st).inc(random.random() * 1000)
        for o in ("success", "failure"):
            req.labels(TARGET, m, "1", o).inc(random.randint(0, 10**6))
        inf.labels(TARGET, m, "1").inc(5)
        exe.labels(TARGET, m, "1").inc(5)
        pend.labels(TARGET, m, "1").set(0)
        for b in BATCH_SIZES:
            bexe.labels(TARGET, m, "1", str(b)).inc(7)
            for st in BATCH_STAGES:
                bst.labels(TARGET, m, "1", str(b), st).inc(random.random())
        info.labels(TARGET, m, "1", "python", "8", "true", "0.0005", "1").set(1)
    return reg


def series(text: str) -> int:
    return sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))


class Frozen(Collector):
    """The families of one scrape, rendered afresh each time (no rendering kept between commits)."""

    def __init__(self, registry: Collector) -> None:
        self.families: list[Metric] = [copy.copy(m) for m in registry.collect()]
        for m in self.families:
            if hasattr(m, RENDERED):
                delattr(m, RENDERED)

    def collect(self) -> list[Metric]:
        return self.families


class Recommitting(Collector):
    """Our registry as the first scrape after a commit sees it: the trace aggregate replaced by a
    copy (same content) before each collect, so nothing rendered before is reused."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry, self.tailer = registry, TAILERS[id(registry)]

    def collect(self) -> Any:
        self.tailer.live = copy.copy(self.tailer.live)
        return self.registry.collect()


def paired(a: Callable[[], object], b: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    """Median seconds of a and b run in turn, and the median of the per-pair ratios a/b."""
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(3):  # warm-up
        a()
        b()
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    random.seed(1)
    names = models(args.models)
    reused, b = ours(names), baseline(names)
    a = Recommitting(reused)  # the worst case: a commit before every scrape
    na, nb = series(generate_latest(a).decode()), series(generate_latest(b).decode())
    print(f"series: ours {na}, baseline {nb} ({args.models} models x {len(STAGES)} stages x "
          f"{len(BOUNDS_S) + 1} buckets + Triton families)")
    if na != nb:
        raise SystemExit(f"the two registries do not hold the same number of series ({na} vs {nb})")
    rows: list[tuple[str, float, float, float]] = []
    rows.append(("text encoder", *paired(lambda: generate_latest(a), lambda: generate_latest(b), args.rounds)))
    rows.append(("openmetrics encoder", *paired(lambda: generate_openmetrics(a), lambda: generate_openmetrics(b),
                                                args.rounds)))
    servers = [MetricsServer(r, "127.0.0.1", 0) for r in (a, b)]
    for s in servers:
        s.start()
    try:
        def get(s: MetricsServer) -> Callable[[], bytes]:
            return lambda: urllib.request.urlopen(f"http://127.0.0.1:{s.port}/metrics", timeout=30).read()

        rows.append(("GET /metrics (HTTP)", *paired(get(servers[0]), get(servers[1]), args.rounds)))
    finally:
        for s in servers:
            s.stop()
    print(f"{'path':22} {'ours ms':>9} {'baseline ms':>12} {'ratio':>7}")
    for name, ta, tb, ratio in rows:
        print(f"{name:22} {ta * 1e3:9.1f} {tb * 1e3:12.1f} {ratio:7.2f}")
    worst = max(r[3] for r in rows)
    print(f"worst ratio {worst:.2f} (target <= 2.00): {'OK' if worst <= 2 else 'OVER TARGET'}")

    frozen = Frozen(a)
    print(f"\nrenderer on our registry ({na} samples): prometheus_client vs exporter/exposition.py")
    print(f"{'format':28} {'prometheus_client ms':>21} {'ours ms':>9} {'ours/pc':>8} {'speedup':>8}")
    for fmt, accept in (("text 0.0.4", ""), ("OpenMetrics 1.0.0", PROMETHEUS_ACCEPT)):
        library, fast = library_encoder(accept)[0], choose_encoder(accept)[0]
        if fast(frozen) != library(frozen):
            raise SystemExit(f"{fmt}: our body differs from prometheus_client's")
        for what, reg in (("scrape", a), ("render", frozen)):
            t_ours, t_pc, ratio = paired(lambda r=reg, f=fast: f(r), lambda r=reg, f=library: f(r), args.rounds)
            print(f"{fmt + ' ' + what:28} {t_pc * 1e3:21.1f} {t_ours * 1e3:9.1f} {ratio:8.3f} {1 / ratio:7.1f}x")
    protobuf_row(a, frozen, args.rounds)
    reuse_rows(reused, args.rounds)


def reuse_rows(registry: CollectorRegistry, rounds: int) -> None:
    """Scrapes between two commits reuse the trace families' rendering (issue 25, item 3): against
    the same scrape with a commit before each (the aggregate replaced by a copy: nothing reused)."""
    tailer = TAILERS[id(registry)]
    print("\nscrape of the same registry: no commit since the last scrape vs a commit before each")
    print(f"{'format':20} {'reused ms':>10} {'commit ms':>10} {'reused/commit':>14}")
    for fmt, enc in (("text 0.0.4", choose_encoder("")[0]), ("OpenMetrics 1.0.0", choose_encoder(PROMETHEUS_ACCEPT)[0]),
                     ("protobuf", exposition_protobuf.render)):
        def committed(e: Callable[[Collector], bytes] = enc) -> bytes:
            tailer.live = copy.copy(tailer.live)  # a new committed snapshot, same content
            return e(registry)

        if committed() != enc(registry):
            raise SystemExit(f"{fmt}: the reused body differs from a fresh one")
        t_reused, t_commit, ratio = paired(lambda e=enc: e(registry), committed, rounds)
        print(f"{fmt:20} {t_reused * 1e3:10.1f} {t_commit * 1e3:10.1f} {ratio:14.3f}")


def protobuf_row(registry: Collector, frozen: Frozen, rounds: int) -> None:
    """Our three formats side by side: time per scrape and per render, and body bytes."""
    from google.protobuf.internal.decoder import _DecodeVarint

    from exporter.vendor.client_model import metrics_pb2

    body = exposition_protobuf.render(frozen)
    pos, histograms = 0, 0
    while pos < len(body):  # parsed back by the library first: a body Prometheus can read
        n, pos = _DecodeVarint(body, pos)
        fam = metrics_pb2.MetricFamily.FromString(body[pos:pos + n])
        pos += n
        histograms += sum(1 for m in fam.metric if m.histogram.positive_span)
    text, om = choose_encoder("")[0], choose_encoder(PROMETHEUS_ACCEPT)[0]
    print(f"\nour formats ({histograms} native histograms in protobuf, each beside its classic buckets)")
    print(f"{'format':20} {'scrape ms':>10} {'render ms':>10} {'body KiB':>9}")
    for fmt, enc in (("text 0.0.4", text), ("OpenMetrics 1.0.0", om), ("protobuf", exposition_protobuf.render)):
        t_scrape, t_render, _ = paired(lambda e=enc: e(registry), lambda e=enc: e(frozen), rounds)
        print(f"{fmt:20} {t_scrape * 1e3:10.1f} {t_render * 1e3:10.1f} {len(enc(frozen)) / 1024:9.0f}")


if __name__ == "__main__":
    main()
