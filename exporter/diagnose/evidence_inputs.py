"""The evidence inputs: three ways to fill the Evidence: trace files (summary's collect()), a running exporter's
/metrics (two scrapes, the difference), and Prometheus (increase() over a range).

The /metrics and Prometheus adapters both reduce to one list of samples that hold what
happened in the window (counters as increases, the config info as it is), read by
`evidence_from_samples`; only fetching differs.
"""

from __future__ import annotations

import math
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from ..histogram import QuantileSketch
from ..stages import SEGMENTS
from ..summary import Group, GroupKey
from ..triton.statistics import parse_model_config
from .evidence import Evidence, ModelConfig
from .fetch import SourceError, fetch, fetch_json, printable, prometheus_rows

__all__ = ["SourceError"]

P = "inference_profiler_"
Sample = tuple[str, dict[str, str], float]
ModelKey = tuple[str, str]


# --- trace files -------------------------------------------------------------------------

def _merged(sketches: Iterable[QuantileSketch]) -> QuantileSketch | None:
    out: QuantileSketch | None = None
    for sk in sketches:
        if out is None:
            out = QuantileSketch()
        out.buckets += sk.buckets
        out.count += sk.count
        out.total += sk.total
    return out if out is not None and out.count else None


def evidence_from_groups(groups: dict[GroupKey, Group], configs: dict[ModelKey, ModelConfig]) -> list[Evidence]:
    """One Evidence per (model, version), over every protocol it came through."""
    by_model: dict[ModelKey, list[Group]] = defaultdict(list)
    for (model, version, _protocol), g in groups.items():
        by_model[(model, version)].append(g)
    out: dict[ModelKey, Evidence] = {}
    for key, gs in by_model.items():
        timed = sum(g.timed for g in gs)
        segs = [sum(col) for col in zip(*(g.segments for g in gs), strict=True)]
        e = Evidence(key[0], key[1], requests=float(sum(g.traces for g in gs)), config=configs.get(key))
        if timed:
            e.segments = {s: segs[i] / timed / 1e9 for i, s in enumerate(SEGMENTS)}
        starts = [g.first_arrival_ns for g in gs if g.first_arrival_ns >= 0]
        n = sum(g.traces for g in gs)
        if starts and n > 1:
            span = (max(g.last_arrival_ns for g in gs) - min(starts)) / 1e9
            e.window_seconds = span * n / (n - 1)  # so that window / requests is the mean arrival gap
        queue = _merged(g.stages["queue"] for g in gs if "queue" in g.stages)
        if queue is not None:
            e.queue_p95 = queue.quantile(0.95) / 1e9
        first = _merged(g.stages["first_response"] for g in gs if "first_response" in g.stages)
        if first is not None:
            e.first_response_mean = first.mean / 1e9
        responses = _merged(g.responses for g in gs)
        if responses is not None:
            e.responses_mean = responses.mean
        sizes: Counter[int] = Counter()
        for g in gs:
            sizes.update(g.batches.values())
        e.batch_executions = {b: float(c) for b, c in sorted(sizes.items())}
        out[key] = e
    for key, gs in by_model.items():  # ensemble steps: a child's time per request of its parent
        for g in gs:
            child = out[key]
            for parent, n_children in g.parents.items():
                pe = next((e for k, e in out.items() if k[0] == parent), None)
                if pe is None or not pe.requests or not child.requests:
                    continue
                pe.steps[key[0]] = pe.steps.get(key[0], 0.0) + child.end_to_end_mean * n_children / pe.requests
    return [out[k] for k in sorted(out)]


def triton_configs(triton_url: str, models: Iterable[ModelKey]) -> dict[ModelKey, ModelConfig]:
    """Model configs from Triton's HTTP API (GET /v2/models/<m>[/versions/<v>]/config)."""
    out: dict[ModelKey, ModelConfig] = {}
    base = triton_url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    for model, version in models:
        path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
        if version:
            path += f"/versions/{urllib.parse.quote(version, safe='')}"
        try:
            info = parse_model_config(fetch_json(base + path + "/config"))
        except ValueError as e:
            raise SourceError(f"{base}{path}/config: {e}") from None
        out[(model, version)] = ModelConfig(info.platform, info.max_batch_size, info.dynamic_batching,
                                            info.max_queue_delay_seconds, info.instance_count)
    return out


# --- samples: /metrics and Prometheus --------------------------------------------------------

def parse_samples(text: str) -> list[Sample]:
    """The samples of a /metrics page, label values printable (they reach the terminal)."""
    try:
        return [(s.name, {k: printable(v, 1000) for k, v in s.labels.items()}, float(s.value))
                for fam in text_string_to_metric_families(text) for s in fam.samples]
    except (ValueError, TypeError, IndexError, KeyError, RecursionError) as e:
        raise SourceError(f"not Prometheus text: {printable(str(e))}") from None


def _is_counter(name: str) -> bool:
    return name.endswith(("_total", "_bucket", "_sum", "_count"))


def sample_delta(before: list[Sample], after: list[Sample]) -> list[Sample]:
    """What happened between two scrapes: counters' increases (a reset counts from zero), the rest as now."""
    old = {(n, tuple(sorted(lab.items()))): v for n, lab, v in before}
    out: list[Sample] = []
    for name, labels, v in after:
        if _is_counter(name):
            prev = old.get((name, tuple(sorted(labels.items()))), 0.0)
            v = v - prev if v >= prev else v
        out.append((name, labels, v))
    return out


def scrape(url: str) -> list[Sample]:
    return parse_samples(fetch(url).decode("utf-8", "replace"))


def metrics_window(url: str, window: float) -> tuple[list[Sample], float | None]:
    """Two scrapes `window` seconds apart, and the time between them; window 0: one scrape,
    the totals since the exporter started (no arrival gap)."""
    if window <= 0:
        return scrape(url), None
    t0 = time.monotonic()
    before = scrape(url)
    time.sleep(window)
    after = scrape(url)
    return sample_delta(before, after), time.monotonic() - t0


# (sample name, grouping labels, extra selector) the Prometheus adapter asks for
PROMETHEUS_QUERIES: tuple[tuple[str, str, str], ...] = (
    (P + "timeline_seconds_total", "model, version, segment", ""),
    (P + "traces_total", "model, version", ""),
    (P + "stage_duration_seconds_bucket", "model, version, stage, le", 'stage="queue"'),
    (P + "stage_duration_seconds_sum", "model, version, stage", 'stage=~"queue|first_response"'),
    (P + "stage_duration_seconds_count", "model, version, stage", 'stage=~"queue|first_response"'),
    (P + "responses_per_request_sum", "model, version", ""),
    (P + "responses_per_request_count", "model, version", ""),
    (P + "triton_batch_executions_total", "model, version, batch_size", ""),
    (P + "tcp_message_bytes_sum", "role, direction", 'role="server"'),
    (P + "tcp_message_bytes_count", "role, direction", 'role="server"'),
    (P + "tcp_socket_queue_seconds_sum", "", ""),
    (P + "tcp_socket_queue_seconds_count", "", ""),
)
CONFIG_LABELS = "model, version, platform, max_batch_size, dynamic_batching, max_queue_delay_seconds, instance_count"


def prometheus_queries(range_seconds: float) -> list[tuple[str, str]]:
    """(sample name, PromQL) pairs: increases over the range, the latest config info."""
    r = f"{max(1, round(range_seconds))}s"
    out = [(name, f"sum by ({by}) (increase({name}{{{sel}}}[{r}]))") for name, by, sel in PROMETHEUS_QUERIES]
    out.append((P + "triton_model_config_info",
                f"max by ({CONFIG_LABELS}) (last_over_time({P}triton_model_config_info[{r}]))"))
    return out


def prometheus_window(url: str, range_seconds: float, end: float | None = None) -> tuple[list[Sample], float]:
    """The samples of the range ending at `end` (unix seconds; now) from Prometheus' query API."""
    base = url.rstrip("/")
    out: list[Sample] = []
    for name, query in prometheus_queries(range_seconds):
        params = {"query": query}
        if end is not None:
            params["time"] = f"{end:.3f}"
        for labels, value in prometheus_rows(f"{base}/api/v1/query?{urllib.parse.urlencode(params)}"):
            out.append((name, labels, value))
    return out, range_seconds


def _histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets {le: count}."""
    les = sorted(buckets)
    if not les or buckets[les[-1]] <= 0:
        return None
    rank = q * buckets[les[-1]]
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c) if c > prev_c else le
        prev_le, prev_c = le, c
    return None


def evidence_from_samples(samples: list[Sample], window: float | None) -> list[Evidence]:
    """Evidence per (model, version) from the window's samples (other labels summed over)."""
    ev: dict[ModelKey, Evidence] = {}

    def get(labels: dict[str, str]) -> Evidence | None:
        model = labels.get("model")
        if model is None:
            return None
        key = (model, labels.get("version", ""))
        if key not in ev:
            ev[key] = Evidence(key[0], key[1], window_seconds=window)
        return ev[key]

    seg_total: dict[ModelKey, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    queue_buckets: dict[ModelKey, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[tuple[ModelKey, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    node: dict[str, float] = defaultdict(float)
    for name, labels, v in samples:
        part = _part(name)
        if name == P + "traces_total" and (e := get(labels)):
            e.requests += v
        elif name == P + "timeline_seconds_total" and (e := get(labels)):
            seg_total[(e.model, e.version)][labels.get("segment", "")] += v
        elif name == P + "stage_duration_seconds_bucket" and labels.get("stage") == "queue" and (e := get(labels)):
            queue_buckets[(e.model, e.version)][float(labels["le"])] += v
        elif name.startswith(P + "stage_duration_seconds_") and part and (e := get(labels)):
            sums[((e.model, e.version), labels.get("stage", ""))][part == "count"] += v
        elif name.startswith(P + "responses_per_request_") and part and (e := get(labels)):
            sums[((e.model, e.version), "responses")][part == "count"] += v
        elif name == P + "triton_batch_executions_total" and (e := get(labels)):
            size = int(float(labels.get("batch_size", "0")))
            e.batch_executions[size] = e.batch_executions.get(size, 0.0) + v
        elif name == P + "triton_model_config_info" and v > 0 and (e := get(labels)):
            e.config = _config(labels)
        elif name.startswith(P + "tcp_message_bytes_") and labels.get("role") == "server":
            node[f"{labels.get('direction')}_{part}"] += v
        elif name.startswith(P + "tcp_socket_queue_seconds_") and part:
            node[f"socket_{part}"] += v
    for key, e in ev.items():
        if e.requests > 0 and seg_total.get(key):
            e.segments = {s: total / e.requests for s, total in seg_total[key].items()}
        if key in queue_buckets:
            e.queue_p95 = _histogram_quantile(0.95, queue_buckets[key])
        s, n = sums.get((key, "first_response"), (0.0, 0.0))
        e.first_response_mean = s / n if n else None
        s, n = sums.get((key, "responses"), (0.0, 0.0))
        e.responses_mean = s / n if n else None
        e.request_bytes_mean = _ratio(node["recv_sum"], node["recv_count"])
        e.response_bytes_mean = _ratio(node["send_sum"], node["send_count"])
        e.socket_queue_mean = _ratio(node["socket_sum"], node["socket_count"])
    return [ev[k] for k in sorted(ev)]


def _part(name: str) -> str:
    """'sum' or 'count' for a histogram's _sum/_count sample, else ''."""
    return name.rsplit("_", 1)[-1] if name.endswith(("_sum", "_count")) else ""


def _ratio(total: float, n: float) -> float | None:
    return total / n if n else None


def _config(labels: dict[str, str]) -> ModelConfig | None:
    try:
        return ModelConfig(
            platform=labels.get("platform", ""),
            max_batch_size=int(float(labels.get("max_batch_size", "0"))),
            dynamic_batching=labels.get("dynamic_batching") == "true",
            max_queue_delay_seconds=float(labels.get("max_queue_delay_seconds", "0")),
            instance_count=int(float(labels.get("instance_count", "1"))),
        )
    except ValueError:
        return None
