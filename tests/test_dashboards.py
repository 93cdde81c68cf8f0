"""The dashboards as code: committed JSON is what the code generates, and every panel is complete."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.stages import SEGMENT_ORDER, SEGMENTS
from grafana import build

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"

def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / f"{name}.json").read_text())
    return data


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_committed_json_is_generated(name: str) -> None:
    path = DASHBOARDS / f"{name}.json"
    assert path.exists(), f"{path} missing: run python -m grafana.build"
    assert path.read_text() == build.render(name), f"{path} is stale: run python -m grafana.build"


def test_no_stray_dashboard_files() -> None:
    assert {p.stem for p in DASHBOARDS.glob("*.json")} == set(build.DASHBOARDS)


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.main(["--check", "--out", str(tmp_path)]) == 0
    victim = next(tmp_path.glob("*.json"))
    victim.write_text(victim.read_text().replace("inference_profiler_", "other_", 1))
    assert build.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_every_panel_has_unit_description_and_queries(name: str) -> None:
    d = load(name)
    assert d["uid"] == name
    for p in panels(d):
        if p["type"] == "row":
            continue
        title = p["title"]
        assert p.get("description", "").strip(), f"{title}: no description"
        assert p["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert p.get("targets"), f"{title}: no query"
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
            assert t["expr"].strip(), title


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_every_variable_used_is_defined(name: str) -> None:
    d = load(name)
    defined = {v["name"] for v in d["templating"]["list"]}
    text = json.dumps(d["panels"])
    used = set(re.findall(r"\$\{?(\w+)", text)) - {"__rate_interval", "__range", "__interval", "__all"}
    assert used <= defined, f"undefined variables: {used - defined}"


def test_a_panel_sets_socket_wait_against_triton_recv_and_queue() -> None:
    d = load("inference-stage-timeline")
    p = next(p for p in panels(d) if p["title"].startswith("Waiting for a frontend thread"))
    stages = [re.findall(r'stage="(\w+)"', t["expr"]) for t in p["targets"]]
    assert [s[0] for s in stages] == ["socket_wait", "http_recv", "queue", "ack_wait"]
    for t in p["targets"]:  # classic or native storage
        assert "_sum{" in t["expr"] and "histogram_sum(" in t["expr"]


def test_timeline_bar_stacks_the_exclusive_segments_in_request_order() -> None:
    d = load("inference-stage-timeline")
    bar = next(p for p in panels(d) if p["type"] == "barchart")
    assert bar["options"]["orientation"] == "horizontal"
    assert bar["options"]["stacking"] == "normal"
    assert bar["options"]["showValue"] == "always"
    # the exporter's segments, every one, in request order, from the wire to the wire (the joined
    # socket segments, empty where the join does not run); nothing that overlaps them
    assert sorted(SEGMENT_ORDER) == sorted(SEGMENTS)
    order = ["socket_wait", *SEGMENT_ORDER, "ack_wait"]
    segments = [re.findall(r'segment="(\w+)"', t["expr"]) for t in bar["targets"]]
    assert segments == [[s] for s in order]
    assert [t["legendFormat"] for t in bar["targets"]] == [s.replace("_", " ") for s in order]
    for t in bar["targets"]:
        # a segment's time over every request with a timeline (all but the cancelled ones), so that
        # the parts add up to the mean end_to_end
        assert "inference_profiler_timeline_seconds_total" in t["expr"]
        # (the classic _count or the native histogram's count: a Prometheus stores one of them)
        assert "/ (sum by (model) (increase(inference_profiler_stage_duration_seconds_count{" in t["expr"]
        assert "or sum by (model) (histogram_count(increase(inference_profiler_stage_duration_seconds{" in t["expr"]
        assert t["expr"].endswith('stage="end_to_end"}[$__range]))))')
    organize = next(t for t in bar["transformations"] if t["id"] == "organize")
    assert list(organize["options"]["renameByName"].values()) == [t["legendFormat"] for t in bar["targets"]]
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance", "model", "version", "protocol"} <= names


def test_streaming_row_says_so_where_no_model_streams() -> None:
    d = load("inference-stage-timeline")
    rows = [p for p in d["panels"] if p["type"] == "row"]
    start = d["panels"].index(next(r for r in rows if r["title"].startswith("Streaming")))
    end = d["panels"].index(next(r for r in rows if d["panels"].index(r) > start))
    row = d["panels"][start + 1:end]
    stages = {s for p in row for t in p["targets"] for s in re.findall(r'stage="(\w+)"', t["expr"])}
    assert {"first_response", "inter_response"} <= stages
    assert any("inference_profiler_responses_per_request" in t["expr"] for p in row for t in p["targets"])
    for p in row:
        # Grafana shows noValue as the panel's message when its queries return nothing
        assert p["fieldConfig"]["defaults"]["noValue"].startswith("No streaming"), p["title"]
        for t in p["targets"]:
            # more than one response: inter_response observed (classic _count or native histogram_count)
            assert 'stage="inter_response"}[$__rate_interval])))) > 0)' in t["expr"], (p["title"], t["expr"])
            assert "histogram_count(rate(inference_profiler_stage_duration_seconds{" in t["expr"], p["title"]


def test_p99_panels_draw_the_stage_slo() -> None:
    d = load("inference-stage-timeline")
    p99 = [p for p in panels(d) if p["type"] == "timeseries" and "p99" in p["title"] and "SLO" in p["title"]]
    assert {p["title"] for p in p99} == {"$stage: p50 / p95 / p99, mean and SLO",
                                         "Time to first response: p50 / p95 / p99 and SLO"}
    for p in p99:
        (slo,) = [t for t in p["targets"] if "inference_profiler:stage_p99_slo_seconds" in t["expr"]]
        assert 'model="$model"' in slo["expr"] and 'model="*"' in slo["expr"]  # own SLO, else the default
        (style,) = [o for o in p["fieldConfig"]["overrides"] if o["matcher"]["options"] == slo["refId"]]
        assert {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}} in style["properties"]


def test_recorded_series_used_by_dashboards_are_recorded() -> None:
    recorded = {r["record"] for f in (ROOT / "prometheus" / "rules").glob("*.rules.yml")
                for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "record" in r}
    used = {m for name in build.DASHBOARDS for p in panels(load(name)) for t in p.get("targets", [])
            for m in re.findall(r"[\w]*:[\w:]+(?=\{)", t["expr"])}
    assert used and used <= recorded, sorted(used - recorded)


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_links_to_the_other_dashboards_carry_model_and_time(name: str) -> None:
    d = load(name)
    assert "inference-profiler" in d["tags"]
    (link,) = d["links"]
    assert link["type"] == "dashboards" and link["tags"] == ["inference-profiler"]
    assert link["includeVars"] and link["keepTime"]  # var-model=... and the time range go along
    # the model variable means the same on the dashboards that have one
    models = [v for other in build.DASHBOARDS for v in load(other)["templating"]["list"] if v["name"] == "model"]
    assert len(models) >= 2


def test_alerts_and_dashboards_take_their_job_from_grafana_selectors() -> None:
    """node-mixin style: grafana/selectors.py names the job once; every rule uses exactly it, every
    panel, variable and annotation the dashboards' `job` variable, whose default it is."""
    from grafana.selectors import DASHBOARD_JOB, JOB, JOB_NAME

    rules = "\n".join(p.read_text() for p in sorted((ROOT / "prometheus" / "rules").glob("*.rules.yml")))
    used = re.findall(r'job\s*=~?\s*"[^"]*"', rules)
    assert used and {u.replace(" ", "") for u in used} == {JOB}
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        text = path.read_text()
        assert "inference-profiler\\\"" not in text, f"{path.name}: a hard-coded job"
        exprs = [t["expr"] for p in panels(d) for t in p.get("targets", [])]
        exprs += [a["expr"] for a in d["annotations"]["list"]]
        variables = [v["query"] for v in d["templating"]["list"] if v["type"] == "query" and v["name"] != "job"]
        for expr in exprs + variables:
            for family, selector in re.findall(r"((?:inference_profiler|process)_\w+)\{([^}]*)\}", expr):
                assert DASHBOARD_JOB in selector, (path.name, family)
                assert 'cluster=~"$cluster"' in selector or expr in variables, (path.name, family)
        names = [v["name"] for v in d["templating"]["list"]]
        assert names[:4] == ["datasource", "job", "cluster", "instance"], path.name
        job = d["templating"]["list"][1]
        assert job["current"]["value"] == JOB_NAME and job["query"] == "label_values(inference_profiler_build_info, job)"
        if path.stem in ("inference-stage-timeline", "inference-profiler-network"):
            assert {"namespace", "pod"} <= set(names), path.name


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_every_latency_query_of_the_exemplar_family_asks_for_exemplars(name: str) -> None:
    """A percentile line or heatmap of the stage histogram shows the exemplars (trace ids) of its
    buckets; no other query asks for them."""
    from grafana.panels import EXEMPLAR_FAMILY

    for p in panels(load(name)):
        for t in p.get("targets", []):
            latency = (EXEMPLAR_FAMILY in t["expr"] and not t.get("instant")
                       and ("histogram_quantile(" in t["expr"] or t.get("format") == "heatmap"))
            assert bool(t.get("exemplar")) == latency, (p["title"], t["refId"])
    if name in ("inference-stage-timeline", "inference-profiler-network"):
        assert any(t.get("exemplar") for p in panels(load(name)) for t in p.get("targets", [])), name


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_dashboards_mark_exporter_and_triton_restarts(name: str) -> None:
    notes = {a["name"]: a for a in load(name)["annotations"]["list"]}
    assert set(notes) == {"Exporter restarts", "Triton restarts"}
    assert "process_start_time_seconds" in notes["Exporter restarts"]["expr"]
    assert "resets(inference_profiler_triton_requests_total" in notes["Triton restarts"]["expr"]
    assert all(a["datasource"]["uid"] == "${datasource}" and a["enable"] for a in notes.values())


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_dashboards_are_import_ready(name: str) -> None:
    """Grafana's import: every ${DS_*} placeholder is a declared input, every panel type required,
    and no datasource is named by a uid of one particular Grafana."""
    d = load(name)
    text = (DASHBOARDS / f"{name}.json").read_text()
    inputs = {i["name"] for i in d["__inputs"]}
    assert inputs == {"DS_PROMETHEUS"} and set(re.findall(r"\$\{(DS_\w+)\}", text)) == inputs
    required = {r["id"] for r in d["__requires"] if r["type"] == "panel"}
    assert required == {p["type"] for p in panels(d) if p["type"] != "row"}
    uids = {m for m in re.findall(r'"uid": "([^"]*)"', text)} - {name}
    assert uids == {"${datasource}"}, uids
