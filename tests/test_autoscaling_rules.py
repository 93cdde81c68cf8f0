"""The autoscaling and GenAI recording rules against a real Prometheus scraping the real exporter
of a real Triton under load, with classic and with native histogram storage: a loaded model has
a number, a model gone idle has none (not NaN), which is what prometheus-adapter and KEDA read
(deploy/autoscaling)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from exporter.demo.launcher import ENSEMBLE, MODEL, free_port
from exporter.demo.traffic import TrafficDriver
from tests.test_dashboards_e2e import Prometheus
from tests.triton_harness import ExporterProcess, start_triton

ROOT = Path(__file__).resolve().parent.parent
RULES = ("autoscaling.rules.yml", "genai.rules.yml")
# the rules' [1m] windows, shortened so the test sees a model go idle in seconds; long enough that a
# busy 2-core machine's pauses in trace ingestion do not empty the loaded model's window
WINDOW = "12s"
SIGNALS = ("namespace_model:inference_profiler_queue_seconds:p95_1m",
           "namespace_model:inference_profiler_pending_requests:avg1m",
           "namespace_model:inference_profiler_first_response_seconds:p95_1m")
GENAI = ("gen_ai_server_time_to_first_token_seconds:p95_1m", "gen_ai_server_request_duration_seconds:p95_1m")


@dataclass
class Loaded:
    storages: dict[str, Prometheus]  # classic, and native (native histograms on: their native form only)
    exporter: ExporterProcess


def config(work: Path, target: str) -> Path:
    rules = work / "rules"
    rules.mkdir()
    for name in RULES:
        text = (ROOT / "prometheus" / "rules" / name).read_text()
        assert text.count("[1m]") >= 3
        (rules / name).write_text(text.replace("[1m]", f"[{WINDOW}]"))
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "rule_files": [str(rules / "*.yml")],
           "scrape_configs": [{"job_name": "inference-profiler", "honor_labels": True, "scrape_timeout": "1s",
                               "static_configs": [{"targets": [target]}]}]}
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def values(prom: Prometheus, expr: str) -> dict[str, float]:
    return {r["metric"].get("model", r["metric"].get("gen_ai_request_model", "")): float(r["value"][1])
            for r in prom.api("query", query=expr)["result"]}


def loaded_value(prom: Prometheus, expr: str, timeout: float = 20.0) -> float:
    """The loaded model's value, once it is the only model with one (rules evaluate every second)."""
    deadline = time.monotonic() + timeout
    while (got := values(prom, expr)).keys() != {MODEL}:
        assert time.monotonic() < deadline, (expr, got)
        time.sleep(0.5)
    return got[MODEL]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """add_sub under steady load throughout; its ensemble loaded for a few seconds at the start, then idle."""
    work = tmp_path_factory.mktemp("autoscaling")
    triton = start_triton(work / "triton", log_frequency=20)
    stops: list[object] = [triton]
    try:
        port = free_port()
        exporter = ExporterProcess(["--trace-file", str(triton.trace_file), "--state-dir", str(work / "state"),
                                    "--listen", f"127.0.0.1:{port}", "--triton", "none", "--ebpf", "off",
                                    "--trace-poll-seconds", "0.2"], work, port)
        stops.append(exporter)
        exporter.wait_ready()
        cfg = config(work, f"127.0.0.1:{port}")
        storages = {"classic": Prometheus(cfg, work), "native": Prometheus(cfg, work, native=True)}
        stops.extend(storages.values())
        steady = TrafficDriver(triton.http_address, triton.grpc_address, rate=40, models=(MODEL,)).start()
        burst = TrafficDriver(triton.http_address, triton.grpc_address, rate=20, models=(ENSEMBLE,)).start()
        try:
            time.sleep(5)
            assert sum(burst.stop().succeeded.values()) > 20
            deadline = time.monotonic() + 60
            while not all(values(prom, s).keys() == {MODEL} for prom in storages.values() for s in SIGNALS):
                assert time.monotonic() < deadline, {(n, s): values(p, s) for n, p in storages.items() for s in SIGNALS}
                time.sleep(0.5)
            yield Loaded(storages, exporter)
        finally:
            steady.stop()
    finally:
        for p in reversed(stops):
            p.stop()  # type: ignore[attr-defined]


@pytest.mark.prometheus
@pytest.mark.parametrize("storage", ["classic", "native"])
def test_a_loaded_model_has_a_number_and_an_idle_one_none(loaded: Loaded, storage: str) -> None:
    prom = loaded.storages[storage]
    # the idle ensemble did serve: its requests are in the exporter's counters, only not in the window
    assert loaded.exporter.scrape().total("inference_profiler_traces_total", model=ENSEMBLE) > 20
    got = {signal: loaded_value(prom, signal) for signal in SIGNALS}
    assert all(math.isfinite(v) and v >= 0 for v in got.values()), got
    # queue time and time to first response are positive under load; first response covers the queue
    q, first = got[SIGNALS[0]], got[SIGNALS[2]]
    assert 0 < q < first < 5, (q, first)
    print(f"{storage}: loaded {MODEL}: queue p95 {q:.4f} s, pending {got[SIGNALS[1]]:.4f}, "
          f"first response p95 {first:.4f} s; idle {ENSEMBLE}: no series")
    # what KEDA's Prometheus scaler and prometheus-adapter send: one model's value by selector
    (one,) = prom.api("query", query=f'{SIGNALS[0]}{{model="{MODEL}"}}')["result"]
    assert math.isfinite(float(one["value"][1])) and float(one["value"][1]) > 0
    assert prom.api("query", query=f'{SIGNALS[0]}{{model="{ENSEMBLE}"}}')["result"] == []


@pytest.mark.prometheus
@pytest.mark.parametrize("storage", ["classic", "native"])
def test_genai_names_have_a_number_for_the_loaded_model(loaded: Loaded, storage: str) -> None:
    prom = loaded.storages[storage]
    for name in GENAI:
        v = loaded_value(prom, name)
        assert math.isfinite(v) and v > 0, (name, v)
    unhealthy = [(r["name"], r.get("lastError")) for g in prom.api("rules")["groups"]
                 for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy


def test_example_manifests_query_the_recorded_signals() -> None:
    """deploy/autoscaling: the adapter rule and the KEDA triggers name recording rules that exist."""
    recorded = {r["record"] for name in RULES
                for g in yaml.safe_load((ROOT / "prometheus" / "rules" / name).read_text())["groups"]
                for r in g["rules"]}
    adapter = yaml.safe_load((ROOT / "deploy" / "autoscaling" / "prometheus-adapter-values.yaml").read_text())
    series = {re.sub(r"\{.*", "", r["seriesQuery"]).strip("'\"") for r in adapter["rules"]["external"]}
    assert series and series <= recorded
    keda = [d for d in yaml.safe_load_all((ROOT / "deploy" / "autoscaling" / "keda-scaledobject.yaml").read_text()) if d]
    queries = [t["metadata"]["query"] for d in keda if d["kind"] == "ScaledObject" for t in d["spec"]["triggers"]]
    assert queries and all(any(s in q for s in recorded) for q in queries)
    hpa = [d for d in yaml.safe_load_all((ROOT / "deploy" / "autoscaling" / "hpa.yaml").read_text()) if d]
    for d in hpa:
        kubernetes_validate.validate(d, kubernetes_validate.latest_version(), strict=True)
    metrics = {m["external"]["metric"]["name"] for d in hpa for m in d["spec"]["metrics"]}
    names = {r["name"]["as"] for r in adapter["rules"]["external"]}
    assert metrics and metrics <= names
