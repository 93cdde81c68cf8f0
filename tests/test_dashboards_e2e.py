"""Dashboards and rules against real parts: a real Triton with rolling traces, the exporter
(`inference-profiler serve`), a real perf_analyzer run, and a real Prometheus (Debian
package) loading our rules and a scrape config derived from ours.

After real traffic, every panel query of every dashboard (variables substituted with
values Prometheus really has, repeated panels once per value) must return finite data,
every recording rule must produce series, and TritonDown must fire once Triton stops.
A failing test lists every query that returned nothing.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import daemon
from exporter.demo.launcher import ALL_MODELS, MODEL, STREAM, TritonServer, free_port
from exporter.demo.traffic import STREAM_TRAFFIC, TrafficDriver
from grafana import build
from grafana.selectors import OPTIONAL_VARIABLES
from tests.conftest import ROLLING_TRACES, missing
from tests.test_anatomy_real import plain_traces
from tests.triton_harness import EXPORTER, ExporterProcess, start_triton

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "prometheus"
DASHBOARDS = {name: json.loads((ROOT / "grafana" / "dashboards" / f"{name}.json").read_text())
              for name in build.DASHBOARDS}
TRAFFIC_SECONDS = 12.0
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval is for a 1 s scrape interval and short ranges

pytestmark = [pytest.mark.triton, pytest.mark.prometheus, pytest.mark.timeout(300)]


def ebpf_source_exists() -> bool:
    """The eBPF source is built by the daemon (another engineer's work; it may not be wired yet)."""
    return "ebpf" in inspect.getsource(daemon.build_sources).lower()


def source_of(expr: str) -> str:
    """Which exporter source feeds a query: a query of an absent source is reported as such."""
    if "tuning_finding" in expr:
        return "findings"
    if re.search(r"inference_profiler_(tcp|ebpf)_", expr):
        return "ebpf"
    if re.search(r'(stage|segment)="(socket_wait|ack_wait|wire)"', expr):  # traces joined to eBPF's turns
        return "ebpf"
    if "perf_analyzer_" in expr:
        return "perf_analyzer"
    if "triton_" in expr:
        return "triton"
    return "traces"


class Prometheus:
    """/usr/bin/prometheus on loopback with tmp storage; stopped by stop()."""

    def __init__(self, config: Path, workdir: Path, native: bool = False) -> None:
        """native: with native histograms on (Prometheus 2.42 then asks for protobuf and keeps
        only the native form of a histogram that has one)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        name = "prometheus-native" if native else "prometheus"
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / name / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                 *(["--enable-feature=native-histograms"] if native else [])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log()}")
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=1).read()
                return
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"prometheus not ready: {self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def prometheus_config(workdir: Path, target: str) -> Path:
    """Our prometheus.yml with a 1 s scrape of `target`, and our rules with every `for:`
    cut to 1 s (the durations are what promtool's unit tests check)."""
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "inference-profiler"
    job["scrape_timeout"] = "1s"
    job["static_configs"][0]["targets"] = [target]
    rules = workdir / "rules"
    rules.mkdir()
    for f in (PROM / "rules").glob("*.rules.yml"):
        (rules / f.name).write_text(re.sub(r"(?m)^(\s+for:) \S+$", r"\1 1s", f.read_text()))
    cfg["rule_files"] = [str(rules / "*.rules.yml")]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_perf_analyzer(triton: TritonServer, csv: Path) -> None:
    """A short real perf_analyzer run (two request rates) writing its -f CSV. Rate-limited: Triton
    2.51 traced at rate 1 can crash past ~1,000 inferences/s (docs/triton.md), which an unlimited
    concurrency sweep reaches; the product's launcher retries perf_analyzer's own flaky failures."""
    from exporter.triton.perf_analyzer import run_perf_analyzer as launch

    launch(MODEL, triton.http_address, csv, measurement_ms=300,
           extra=["--request-rate-range", "100:200:100", "--stability-percentage", "100", "-r", "4"], attempts=4)
    assert csv.exists()


@dataclass
class Stack:
    triton: TritonServer
    exporter: ExporterProcess
    prometheus: Prometheus
    instance: str
    ebpf: bool
    native: Prometheus  # a second one, with native histograms on: it stores their native form only
    started: float = field(default_factory=time.monotonic)

    def storages(self) -> list[tuple[str, Prometheus]]:
        return [("classic", self.prometheus), ("native", self.native)]

    def range(self) -> str:
        return f"{int(time.monotonic() - self.started) + 5}s"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("e2e")
    triton = start_triton(work / "triton", log_frequency=20, models=ALL_MODELS)
    procs: list[Any] = [triton]
    try:
        csv = work / "perf" / "add_sub.csv"
        csv.parent.mkdir()
        run_perf_analyzer(triton, csv)
        ebpf = ebpf_source_exists() and missing("ebpf") is None
        port = free_port()
        args = ["--trace-file", str(triton.trace_file), "--state-dir", str(work / "state"),
                "--listen", f"127.0.0.1:{port}", "--triton", triton.http_url,
                "--triton-metrics-url", triton.metrics_url, "--triton-timeout-seconds", "0.5",
                "--perf-analyzer-csv", str(csv), "--perf-analyzer-poll-seconds", "0.5",
                "--trace-poll-seconds", "0.2"]
        if ebpf:
            args += ["--ebpf", "on", "--ebpf-port", str(triton.http_port), "--ebpf-port", str(triton.grpc_port),
                     "--wire-join", "on", "--wire-http-port", str(triton.http_port),
                     "--wire-grpc-port", str(triton.grpc_port)]
        else:
            args += ["--ebpf", "off"]
        exporter = ExporterProcess(args, work, port)
        procs.append(exporter)
        exporter.wait_ready()
        if ebpf:
            exporter.wait_join()  # traffic sent before the join's program runs has no socket turns
        instance = f"127.0.0.1:{port}"
        prom = Prometheus(prometheus_config(work, instance), work)
        procs.append(prom)
        (work / "native").mkdir()
        native = Prometheus(prometheus_config(work / "native", instance), work, native=True)
        procs.append(native)
        s = Stack(triton, exporter, prom, instance, ebpf, native)
        driver = TrafficDriver(triton.http_address, triton.grpc_address, rate=60, concurrency=4,
                               extra=STREAM_TRAFFIC).start()
        time.sleep(TRAFFIC_SECONDS)
        counts = driver.stop()
        assert sum(counts.succeeded.values()) > 100, counts
        triton.flush_traces()
        # Prometheus must have scraped the traces of the whole run, a few times over
        sent = sum(counts.succeeded.values())
        try:
            wait_for_value(prom, "sum(inference_profiler_traces_total)", lambda v: v >= sent)
        except AssertionError as e:
            lines = [ln for ln in exporter.get("/metrics").splitlines() if "trace" in ln and "_bucket" not in ln]
            raise AssertionError(f"{e}; sent {sent}; exporter says:\n" + "\n".join(lines[:40])
                                 + f"\nexporter log:\n{exporter.log()[-2000:]}") from None
        time.sleep(3)
        yield s
    finally:
        for p in reversed(procs):
            p.stop()


def wait_for_value(prom: Prometheus, expr: str, ok: Any, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    v = float("nan")
    while time.monotonic() < deadline:
        res = prom.api("query", query=expr)["result"]
        if res:
            v = float(res[0]["value"][1])
            if ok(v):
                return v
        time.sleep(0.5)
    raise AssertionError(f"{expr} = {v} after {timeout}s")


# --- variables and queries ---------------------------------------------------------

PREFERRED = {"model": MODEL}


def label_values(prom: Prometheus, query: str) -> list[str]:
    m = re.fullmatch(r"label_values\((.*), (\w+)\)", query, re.S)
    assert m, f"not a label_values query: {query}"
    selector, label = m.groups()
    series = prom.api("series", **{"match[]": selector, "start": str(time.time() - 3600)})
    return sorted({s[label] for s in series if label in s})


def substitute(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def resolve_variables(prom: Prometheus, dash: dict[str, Any], range_: str, empty: list[str],
                      preferred: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Values for every variable: single-select ones get a real value (`preferred` where it has
    one), multi-select ones 'All', repeat-only (hidden) ones every value. Empty variable queries
    go to `empty`."""
    values: dict[str, str] = {"__rate_interval": RATE_INTERVAL, "__range": range_, "__interval": "1s"}
    repeats: dict[str, list[str]] = {}
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        query = substitute(v["query"], values)
        found = label_values(prom, query)
        if not found and v["name"] in OPTIONAL_VARIABLES:  # no such label here: Grafana's "All"
            values[v["name"]] = v["allValue"]
            continue
        if not found:
            empty.append(f"{dash['uid']}: variable ${v['name']}: {query} [{source_of(query)}]")
            values[v["name"]] = "__none__"
            continue
        if v.get("hide") == 2:
            repeats[v["name"]] = found
            values[v["name"]] = "|".join(found)
        elif v.get("multi"):
            values[v["name"]] = v["allValue"]
        else:
            pref = preferred.get(v["name"])
            values[v["name"]] = pref if pref in found else found[0]
    return values, repeats


def panels(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """Every panel with the variables it is repeated over (its row's, then its own)."""
    row_repeat: str | None = None
    for p in dash["panels"]:
        if p["type"] == "row":
            row_repeat = p.get("repeat")
            continue
        yield p, [n for n in (row_repeat, p.get("repeat")) if n]


def finite(result: dict[str, Any]) -> bool:
    """Some point is a finite number, or a native histogram (a heatmap's) with a finite count."""
    if result["resultType"] == "matrix":
        points = [v for series in result["result"] for _, v in series.get("values", [])]
        points += [h["count"] for series in result["result"] for _, h in series.get("histograms", [])]
    else:
        points = [series["value"][1] if "value" in series else series["histogram"][1]["count"]
                  for series in result["result"]]
    return any(math.isfinite(float(p)) for p in points)


def run_query(prom: Prometheus, target: dict[str, Any], expr: str) -> bool:
    if target.get("instant"):
        data = prom.api("query", query=expr)
    else:
        now = time.time()
        data = prom.api("query_range", query=expr, start=str(now - 30), end=str(now), step="1")
    return finite(data)


SLO_STAGES = {r["labels"]["stage"] for g in yaml.safe_load((PROM / "rules" / "slo.rules.yml").read_text())["groups"]
              for r in g["rules"] if r.get("labels", {}).get("model") == "*"}


def expectation(prom: Prometheus, panel: dict[str, Any], expr: str) -> str:
    """'data' or 'empty': what a query of the stage timeline must return, variables substituted.

    Streaming-row queries are empty for a model that does not stream (the panel then shows its
    no-streaming text); an SLO line exists only for the stages that have an SLO; a segment's bar
    part only where the exporter exposes that segment for the model."""
    model = re.search(r'model="([^"$*]+)"', expr)
    # inter_response has series only where observed; classic or native, in the last 10 minutes
    streams = model is not None and bool(prom.api("series", **{
        "match[]": f'{{__name__=~"inference_profiler_stage_duration_seconds(_count)?", model="{model.group(1)}", '
                   f'stage="inter_response"}}', "start": str(time.time() - 600)}))
    if panel["fieldConfig"]["defaults"].get("noValue", "").startswith("No streaming") and not streams:
        return "empty"
    if "stage_p99_slo_seconds" in expr:
        stage = re.search(r'stage="(\w+)"', expr)
        return "data" if stage is not None and stage.group(1) in SLO_STAGES else "empty"
    segment = re.search(r'segment="(\w+)"', expr)
    if segment is not None and model is not None:
        exists = prom.api("series", **{"match[]": f'inference_profiler_timeline_seconds_total{{model="{model.group(1)}", '
                                                   f'segment="{segment.group(1)}"}}', "start": str(time.time() - 3600)})
        return "data" if exists else "empty"
    return "data"


def dashboard_gaps(prom: Prometheus, name: str, range_: str,
                   preferred: dict[str, str] = PREFERRED) -> tuple[int, list[str]]:
    """(queries run, queries that returned no finite data where they must, or data where they must
    not, each with its panel and source)."""
    dash = DASHBOARDS[name]
    gaps: list[str] = []
    values, repeats = resolve_variables(prom, dash, range_, gaps, preferred)
    ran = 0
    for panel, names in panels(dash):
        # a repeated panel inside a repeated row is run for every pair of values
        combos: list[dict[str, str]] = [{}]
        for n in names:
            combos = [{**c, n: v} for c in combos for v in repeats.get(n, ["__none__"])]
        for combo in combos:
            vals = {**values, **combo}
            for t in panel["targets"]:
                expr = substitute(t["expr"], vals)
                ran += 1
                want = expectation(prom, panel, expr) if name == "inference-stage-timeline" else "data"
                if run_query(prom, t, expr) != (want == "data"):
                    where = ", ".join(f"{k}={v}" for k, v in combo.items())
                    what = "no data" if want == "data" else "data where it must be empty"
                    gaps.append(f"{name}: panel '{panel['title']}' [{where}] ref {t['refId']} "
                                f"[{source_of(expr)}] {what}: {expr}")
    return ran, gaps


def check_dashboard(s: Stack, name: str, preferred: dict[str, str] = PREFERRED) -> None:
    """Every query against the classic-only and the native-only Prometheus."""
    ran, gaps = 0, []
    for storage, prom in s.storages():
        n, g = dashboard_gaps(prom, name, s.range(), preferred)
        ran += n
        gaps += [f"({storage}) {x}" for x in g]
    assert ran > 0
    # without the eBPF source (not wired into the daemon yet, or no BPF on this machine) its
    # queries cannot have data; they are listed, everything else must have data
    absent = [g for g in gaps if "[ebpf]" in g and not s.ebpf]
    absent += [g for g in gaps if "[findings]" in g]  # a healthy stack may well have no tuning finding
    real = [g for g in gaps if g not in absent]
    if absent:
        print(f"{name}: {len(absent)} queries need the eBPF source, not running here:\n" + "\n".join(absent))
    assert not real, (f"{len(real)} of {ran} queries are wrong:\n" + "\n".join(real) + scrape_health(s.prometheus)
                      + (wire_health(s) if any("[ebpf]" in g for g in real) else ""))


WELL_FILLED = 100  # observations in a 5-minute window for two storages' means to agree within 25 %


def scrape_health(prom: Prometheus) -> str:
    """Failed or slow scrapes of the exporter explain empty instant queries: said with a failure."""
    def value(q: str) -> str:
        res = prom.api("query", query=q)["result"]
        return res[0]["value"][1] if res else "none"

    return (f"\n(exporter scrapes over 10 min: min up {value('min_over_time(up[10m])')}, "
            f"max duration {value('max_over_time(scrape_duration_seconds[10m])')} s)")


def wire_health(s: Stack) -> str:
    """The exporter's own word on the socket join, said with a failure of its panels."""
    lines = [ln for ln in s.exporter.get("/metrics").splitlines()
             if "socket_joins" in ln or 'source="wire"' in ln or ('stage="socket_wait"' in ln and "_count" in ln)]
    wire_log = [ln for ln in s.exporter.log().splitlines() if "wire" in ln.lower() or "join" in ln.lower()]
    return "\nexporter's join series:\n" + "\n".join(lines[:30]) + "\nits log on the join:\n" + "\n".join(wire_log[-10:])


# --- tests --------------------------------------------------------------------------

def test_timeline_dashboard_queries_return_data(stack: Stack) -> None:
    """A unary model: its streaming row must be empty (the panels show their no-streaming text)."""
    check_dashboard(stack, "inference-stage-timeline")


def test_timeline_dashboard_of_a_streaming_model(stack: Stack) -> None:
    check_dashboard(stack, "inference-stage-timeline", {"model": STREAM})


def test_triton_dashboard_queries_return_data(stack: Stack) -> None:
    check_dashboard(stack, "inference-profiler-triton")


def test_perf_analyzer_dashboard_queries_return_data(stack: Stack) -> None:
    check_dashboard(stack, "inference-profiler-perf-analyzer")


@pytest.mark.ebpf
def test_network_dashboard_queries_return_data(stack: Stack) -> None:
    if not stack.ebpf:
        _, gaps = dashboard_gaps(stack.prometheus, "inference-profiler-network", stack.range())
        pytest.skip("the eBPF source is not built by the daemon yet; queries without data:\n" + "\n".join(gaps))
    check_dashboard(stack, "inference-profiler-network")


@pytest.mark.parametrize("storage", ["classic", "native"])
def test_every_recording_rule_produces_series(stack: Stack, storage: str) -> None:
    prom = dict(stack.storages())[storage]
    records = sorted({r["record"] for f in (PROM / "rules").glob("*.rules.yml")
                      for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "record" in r})
    # tuning findings are series only while a rule holds; the bucket rate is the classic form only;
    # the 1m autoscaling signals and GenAI percentiles exist only while a model served requests in
    # the last minute, and the traffic has stopped here (tests/test_autoscaling_rules.py checks them under load)
    native_less = ("tuning_finding", "_bucket:") if storage == "native" else ("tuning_finding",)
    empty = [r for r in records if not finite(prom.api("query", query=r)) and not any(x in r for x in native_less)
             and not r.startswith("namespace_model:") and not r.endswith(":p95_1m")]
    assert not empty, f"recording rules without finite series: {empty}"
    rules = prom.api("rules")["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, unhealthy


def test_recording_rules_agree_on_classic_and_native_storage(stack: Stack) -> None:
    """The same request counts and means from either form (quantiles differ by bucket layout).

    The two Prometheus servers scrape at their own instants, so their 5-minute windows hold
    different observations at the edges. Where a window holds many observations that is a few
    per cent; where it holds a handful (a sparse stage, such as a joined socket stage of a model
    that got little traffic) one slow request more or less moves the mean by half. Those are
    compared for presence only; the well-filled ones must agree."""
    at = str(time.time() - 2)

    def query(prom: Prometheus, record: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
                for r in prom.api("query", query=record, time=at)["result"]}

    rate = "model_version_stage:inference_profiler_stage_duration_seconds_count:rate5m"
    mean = "model_version_stage:inference_profiler_stage_duration_seconds:mean_5m"
    got = {record: {storage: query(prom, record) for storage, prom in stack.storages()} for record in (rate, mean)}
    for record, by_storage in got.items():
        assert by_storage["classic"].keys() == by_storage["native"].keys() and by_storage["classic"], record
    # observations in the 5-minute window, the smaller of the two storages' views
    held = {k: 300 * min(got[rate]["classic"][k], got[rate]["native"][k]) for k in got[rate]["classic"]}
    filled = [k for k, n in held.items() if n >= WELL_FILLED]
    whole = {dict(k)["model"] for k in filled if dict(k)["stage"] == "end_to_end"}
    assert len(filled) >= 10 and len(whole) >= 3, f"too few stages with {WELL_FILLED} observations to compare: {held}"
    for record, by_storage in got.items():
        for k in filled:
            v, w = by_storage["classic"][k], by_storage["native"][k]
            if math.isnan(v):  # a mean is NaN on both where a series did not grow in the window
                assert math.isnan(w), (record, k)
                continue
            assert w == pytest.approx(v, rel=0.25, abs=1e-9), (record, k, held[k])


@pytest.mark.parametrize("storage", ["classic", "native"])
def test_no_alert_fires_on_a_healthy_stack(stack: Stack, storage: str) -> None:
    firing = [a["labels"] for a in dict(stack.storages())[storage].api("alerts")["alerts"] if a["state"] == "firing"]
    # the stage SLO alerts may legitimately fire on a slow CPU; nothing about availability may
    assert not [a for a in firing if a["alertname"] in {"TritonDown", "InferenceProfilerDown",
                                                        "InferenceProfilerAbsent", "TraceIngestionStalled",
                                                        "TraceFilesFailing", "TraceRecordsRejected"}], firing


# --- the sample traces (real Triton 2.51 files) ----------------------------------------

@dataclass
class SampleStack:
    exporter: ExporterProcess
    prometheus: Prometheus
    window: str  # a range holding exactly the second copy of the samples
    at: float  # the instant query time that range ends at (a scrape's time)


def exporter_total(e: ExporterProcess, name: str, **labels: str) -> float:
    return e.scrape().total(name, **labels)


@pytest.fixture(scope="module")
def sample_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleStack]:
    """The exporter and Prometheus over the samples, ingested twice: counters only count what
    happens between two scrapes, so the range of the second copy holds the samples exactly once."""
    work = tmp_path_factory.mktemp("samples")
    traces = work / "traces"
    traces.mkdir()
    samples = sorted(ROLLING_TRACES.glob("trace.json.*"), key=lambda f: int(f.suffix[1:]))
    port = free_port()
    exporter = ExporterProcess(["--trace-file", str(traces / "trace.json"), "--state-dir", str(work / "state"),
                                "--listen", f"127.0.0.1:{port}", "--triton", "none", "--ebpf", "off",
                                "--trace-poll-seconds", "0.2"], work, port)
    procs: list[Any] = [exporter]
    try:
        exporter.wait_ready()
        prom = Prometheus(prometheus_config(work, f"127.0.0.1:{port}"), work)
        procs.append(prom)
        copies = 0

        def ingest_a_copy() -> float:
            nonlocal copies
            for f in samples:
                (traces / f"trace.json.{copies * len(samples) + int(f.suffix[1:])}").write_bytes(f.read_bytes())
            copies += 1
            exporter.wait_for(lambda m: m.total("inference_profiler_trace_files_total") == copies * len(samples))
            total = exporter_total(exporter, "inference_profiler_traces_total")
            wait_for_value(prom, "sum(inference_profiler_traces_total)", lambda v: v == total)
            return total

        first = ingest_a_copy()
        time.sleep(2)  # a few scrapes of the first copy's totals
        assert ingest_a_copy() == 2 * first
        time.sleep(2)
        # the window runs from the last scrape holding the first copy's totals to the last scrape,
        # both on sample times, so increase() is the second copy exactly, without extrapolation
        # (a scrape that failed while the exporter ingested must not move the window's start)
        totals: dict[float, float] = {}
        for series in prom.api("query", query="inference_profiler_traces_total[1m]")["result"]:
            for ts, v in series["values"]:
                totals[ts] = totals.get(ts, 0.0) + float(v)
        start = max(ts for ts, v in totals.items() if v == first)
        at = max(totals)
        assert totals[at] == 2 * first, totals
        yield SampleStack(exporter, prom, f"{round((at - start) * 1000)}ms", at)
    finally:
        for p in reversed(procs):
            p.stop()


def test_sample_traces_timeline_dashboard_queries(sample_stack: SampleStack) -> None:
    """Every query of the stage timeline runs on the samples; none of them streams, so the
    streaming row is empty and everything else has data. First of the sample tests: the rate
    panels' windows still hold the second copy's ingestion."""
    ran, gaps = dashboard_gaps(sample_stack.prometheus, "inference-stage-timeline", "1h")
    # no eBPF on files, and no tuning finding without Triton's model configs
    real = [g for g in gaps if "[ebpf]" not in g and "[findings]" not in g]
    assert ran > 0 and not real, "\n".join(real)


def test_sample_traces_timeline_bar_adds_up_to_the_mean_end_to_end(sample_stack: SampleStack) -> None:
    s = sample_stack
    bar = next(p for p, _ in panels(DASHBOARDS["inference-stage-timeline"]) if p["type"] == "barchart")
    values = {"job": "inference-profiler", "cluster": ".*", "instance": ".*", "namespace": ".*", "pod": ".*",
              "model": MODEL, "version": ".*",
              "protocol": ".*", "__range": s.window}
    parts: dict[str, float] = {}
    for t in bar["targets"]:
        res = s.prometheus.api("query", query=substitute(t["expr"], values), time=str(s.at))["result"]
        parts[t["legendFormat"]] = sum(float(r["value"][1]) for r in res)
        assert all(r["metric"] == {"model": MODEL} for r in res), res
    def e2e_total(part: str) -> str:
        return f'sum(increase(inference_profiler_stage_duration_seconds_{part}{{model="{MODEL}", stage="end_to_end"}}[{s.window}]))'

    res = s.prometheus.api("query", query=f"{e2e_total('sum')} / {e2e_total('count')}", time=str(s.at))["result"]
    assert res, "no end_to_end on the samples"
    e2e = float(res[0]["value"][1])
    # the same mean from the files themselves (json.load), once per copy
    plain = [t for t in plain_traces(sorted(ROLLING_TRACES.glob("trace.json.*"))) if t.model == MODEL]
    assert math.isclose(e2e, sum(t.end_to_end for t in plain) / len(plain) * 1e-9, rel_tol=1e-9)
    assert all(v >= 0 for v in parts.values()), parts
    assert math.isclose(sum(parts.values()), e2e, rel_tol=1e-9), (parts, e2e)
    assert parts["frontend overhead"] > 0 and parts["compute infer"] > 0, parts


def test_sample_traces_frontend_overhead_for_every_http_trace(sample_stack: SampleStack) -> None:
    m = sample_stack.exporter.scrape()
    http = m.total("inference_profiler_traces_total", protocol="http")
    assert http > 0
    assert m.total("inference_profiler_stage_duration_seconds_count", protocol="http",
                   stage="frontend_overhead") == http
    assert m.total("inference_profiler_trace_records_rejected_total", reason="negative_span") == 0


def test_diagnose_reads_prometheus_and_the_exporter(stack: Stack) -> None:
    """diagnose's Prometheus and /metrics sources on the real stack: the traffic's model with its
    requests, timeline and Triton config; exit code 1 exactly when something was found."""
    for source in (["--prometheus-url", stack.prometheus.url, "--range", stack.range()],
                   ["--metrics-url", stack.exporter.url + "/metrics", "--window", "0"]):
        r = subprocess.run([*EXPORTER, "diagnose", "--format", "json", *source],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode in (0, 1), r.stderr
        doc = json.loads(r.stdout)
        models = {m["model"]: m for m in doc["models"]}
        m = models[MODEL]
        assert m["requests"] > 100 and m["end_to_end_mean_seconds"] > 0, (source, m)
        assert set(m["evidence"]["segments"]) >= {"queue", "compute_infer"}, source
        assert m["evidence"]["config"]["max_batch_size"] == 8, source  # add_sub's config.pbtxt
        assert m["evidence"]["batch_executions"], source
        assert r.returncode == (1 if any(x["findings"] for x in doc["models"]) else 0)


def test_triton_down_alert_fires_when_triton_stops(stack: Stack) -> None:
    """Last in the module: it stops Triton."""
    target = f"127.0.0.1:{stack.triton.http_port}"
    stack.triton.stop()
    deadline = time.monotonic() + 30
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        alerts = stack.prometheus.api("alerts")["alerts"]
        if any(a["labels"]["alertname"] == "TritonDown" and a["state"] == "firing" for a in alerts):
            break
        time.sleep(0.5)
    fired = [a for a in alerts if a["labels"]["alertname"] == "TritonDown" and a["state"] == "firing"]
    assert fired, f"TritonDown did not fire; alerts: {alerts}"
    assert [(a["labels"]["target"], a["labels"]["instance"]) for a in fired] == [(target, stack.instance)]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_annotation_queries_run(stack: Stack, name: str) -> None:
    """The restart annotations are valid PromQL over the real series; nothing restarted here, so
    they mark nothing (the exporter's process_start_time_seconds series exists for them)."""
    dash = DASHBOARDS[name]
    values, _ = resolve_variables(stack.prometheus, dash, stack.range(), [], PREFERRED)
    for note in dash["annotations"]["list"]:
        expr = substitute(note["expr"], {**values, "__interval": "15s"})
        now = time.time()
        data = stack.prometheus.api("query_range", query=expr, start=str(now - 60), end=str(now), step="15")
        assert data["result"] == [], (name, note["name"], data["result"])
    assert stack.prometheus.api("query", query=substitute(
        'process_start_time_seconds{job=~"$job", instance=~"$instance"}', values))["result"]
