"""The metric contract: the collectors describe exactly the families docs/metrics.md lists,
and every inference_profiler_* name a dashboard or a rule queries is one of them."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.config import ConfigError, build
from exporter.daemon import Daemon, build_sources
from exporter.ebpf.collector import EbpfCollector, ProgramState, label_names
from exporter.ebpf.declaration import (
    AttachMethod,
    MetricDecl,
    ProgramDecl,
    bpf_dir,
    metric_key,
    metric_programs,
)
from exporter.source import ErrorCounts, SelfCollector
from tests.metric_contract import documented_families, documented_labels, documented_sample_names

ROOT = Path(__file__).resolve().parent.parent


def every_collector(tmp: Path) -> list[Collector]:
    """What the daemon registers with every source on; eBPF's collector over the declarations
    (not loaded: describing needs no kernel)."""
    cfg = build({}, {}, {"trace_file": [str(tmp / "trace.json")], "state_dir": str(tmp / "state"),
                         "triton": ["http://127.0.0.1:1"], "perf_analyzer_csv": [str(tmp / "pa.csv")],
                         "ebpf": "off", "otlp_listen": "127.0.0.1:0"})
    errors = ErrorCounts()
    sources = build_sources(cfg, errors)
    assert {s.name for s in sources} == {"traces", "otlp", "triton", "perf_analyzer"}  # OTLP: a peer of the file tailer
    programs = [ProgramState(d, None, "not loaded") for d in metric_programs()]
    return [SelfCollector(errors), ProcessCollector(registry=None),
            *(c for s in sources for c in s.collectors()), EbpfCollector(programs, threading.Lock(), errors)]


def exposed(m: Metric) -> str:
    return m.name + "_total" if m.type == "counter" else m.name


@pytest.fixture(scope="module")
def described(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for c in every_collector(tmp_path_factory.mktemp("contract")):
        # client_python's process collector is the one without describe(): the registry collects it
        for m in (c.describe() if hasattr(c, "describe") else c.collect()):
            assert exposed(m) not in out, f"{exposed(m)} described twice"
            out[exposed(m)] = m
    return out


def test_described_families_are_the_documented_ones(described: dict[str, Metric]) -> None:
    doc = documented_families()
    assert set(described) - set(doc) == set(), "described but not in docs/metrics.md"
    assert set(doc) - set(described) == set(), "in docs/metrics.md but no collector describes it"
    assert {n: m.type for n, m in described.items()} == doc


def test_every_collector_of_the_daemon_describes_itself(tmp_path: Path) -> None:
    for c in every_collector(tmp_path):
        if not isinstance(c, ProcessCollector):
            assert callable(getattr(c, "describe", None)), f"{type(c).__name__} has no describe()"


def test_ebpf_labels_are_the_documented_ones() -> None:
    """As exposed with --kubernetes: the cgroup key field becomes namespace, pod, container."""
    labels = documented_labels()
    for d in metric_programs():
        key = {f.name: f for f in metric_key(d.source.parent).fields}
        for m in d.metrics:
            name = "inference_profiler_" + m.name
            exposed = tuple(label_names(m, key, pods=True))
            assert labels[name] == exposed, f"{d.source}: {m.name} labels differ from docs/metrics.md"


def test_help_texts_cite_only_the_repository(described: dict[str, Metric]) -> None:
    for name, m in described.items():
        assert m.documentation.strip(), f"{name}: no HELP"
        assert not re.search(r"SPEC|ENVIRONMENT\.md", m.documentation), f"{name}: {m.documentation}"


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        panels = [p for top in d["panels"] for p in (top, *top.get("panels", []))]
        for p in panels:
            for t in p.get("targets", []):
                yield path.name, t["expr"]
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                yield path.name, v["query"] if isinstance(v["query"], str) else v["query"]["query"]


def _rule_exprs() -> Iterator[tuple[str, str]]:
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        for g in yaml.safe_load(path.read_text())["groups"]:
            for r in g["rules"]:
                yield path.name, r["expr"]


# a metric name not preceded by a recording rule's level prefix (level:metric:operation)
USED = re.compile(r"(?<![\w:])inference_profiler_\w+")


def test_dashboards_and_rules_query_only_documented_families() -> None:
    known = documented_sample_names()
    exprs = [*_dashboard_exprs(), *_rule_exprs()]
    assert {f for f, _ in exprs} >= {"alerts.rules.yml", "recording.rules.yml", "inference-stage-timeline.json"}
    unknown = {(f, name) for f, e in exprs for name in USED.findall(e) if name not in known}
    assert unknown == set(), "queried but not in docs/metrics.md"
    assert sum(len(USED.findall(e)) for _, e in exprs) > 50  # the extraction found the queries


def test_the_registry_refuses_a_second_collector_for_one_family() -> None:
    errors = ErrorCounts()
    clash = ProgramDecl("clash", bpf_dir() / "clash.c", (AttachMethod("tracepoint", ()),),
                        metrics=(MetricDecl("errors_total", "an eBPF counter named like the self one", "counter",
                                            ("port",)),))
    registry = CollectorRegistry()
    registry.register(SelfCollector(errors))
    with pytest.raises(ValueError, match="inference_profiler_errors_total"):
        registry.register(EbpfCollector([ProgramState(clash, None)], threading.Lock(), errors))


class _Clashing:
    name = "clashing"

    def collectors(self) -> list[Collector]:
        class C:
            def describe(self) -> list[Metric]:
                return [CounterMetricFamily("inference_profiler_errors", "again")]

            def collect(self) -> list[Metric]:
                return self.describe()

        return [C()]


def test_serve_reports_a_family_served_twice_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exporter.daemon.build_sources", lambda cfg, errors: [_Clashing()])
    cfg = build({}, {}, {"listen": "127.0.0.1:0", "state_dir": str(tmp_path), "triton": ["none"], "ebpf": "off"})
    with pytest.raises(ConfigError, match=r"source clashing would serve .*inference_profiler_errors_total"):
        Daemon(cfg)
