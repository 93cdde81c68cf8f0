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


def test_timeline_bar_stacks_the_exclusive_segments_in_request_order() -> None:
    d = load("inference-stage-timeline")
    bar = next(p for p in panels(d) if p["type"] == "barchart")
    assert bar["options"]["orientation"] == "horizontal"
    assert bar["options"]["stacking"] == "normal"
    assert bar["options"]["showValue"] == "always"
    # the exporter's segments, every one, in request order; nothing that overlaps them (no eBPF)
    assert sorted(SEGMENT_ORDER) == sorted(SEGMENTS)
    segments = [re.findall(r'segment="(\w+)"', t["expr"]) for t in bar["targets"]]
    assert segments == [[s] for s in SEGMENT_ORDER]
    assert [t["legendFormat"] for t in bar["targets"]] == [s.replace("_", " ") for s in SEGMENT_ORDER]
    for t in bar["targets"]:
        # a segment's time over every request with a timeline (all but the cancelled ones), so that
        # the parts add up to the mean end_to_end
        assert "inference_profiler_timeline_seconds_total" in t["expr"]
        assert "/ sum by (model) (increase(inference_profiler_stage_duration_seconds_count{" in t["expr"]
        assert t["expr"].endswith('stage="end_to_end"}[$__range]))')
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
    """node-mixin style: grafana/selectors.py names the job once; every rule and panel uses exactly it."""
    from grafana.selectors import JOB

    rules = "\n".join(p.read_text() for p in sorted((ROOT / "prometheus" / "rules").glob("*.rules.yml")))
    used = re.findall(r'job\s*=~?\s*"[^"]*"', rules)
    assert used and {u.replace(" ", "") for u in used} == {JOB}
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        for p in (p for top in d["panels"] for p in (top, *top.get("panels", []))):
            for t in p.get("targets", []):
                families = re.findall(r"(inference_profiler_\w+)\{([^}]*)\}", t["expr"])
                for family, selector in families:
                    assert JOB in selector and 'cluster=~"$cluster"' in selector, (path.name, family)
        names = {v["name"] for v in d["templating"]["list"]}
        assert {"cluster", "instance"} <= names, path.name
        if path.stem in ("inference-stage-timeline", "inference-profiler-network"):
            assert {"namespace", "pod"} <= names, path.name
