"""The dashboards as code: committed JSON is what the code generates, and every panel is complete."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grafana import build
from tests.spec_metrics import spec_names

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
def test_queries_use_only_spec_metric_names(name: str) -> None:
    known = spec_names()
    d = load(name)
    exprs = [t["expr"] for p in panels(d) for t in p.get("targets", [])]
    exprs += [v["query"] for v in d["templating"]["list"] if v["type"] == "query"]
    used = {m for e in exprs for m in re.findall(r"inference_profiler_\w+", e)}
    assert used, name
    assert used <= known, f"not in SPEC: {sorted(used - known)}"


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_every_variable_used_is_defined(name: str) -> None:
    d = load(name)
    defined = {v["name"] for v in d["templating"]["list"]}
    text = json.dumps(d["panels"])
    used = set(re.findall(r"\$\{?(\w+)", text)) - {"__rate_interval", "__range", "__interval", "__all"}
    assert used <= defined, f"undefined variables: {used - defined}"


def test_timeline_stages_in_request_order() -> None:
    d = load("inference-stage-timeline")
    bar = next(p for p in panels(d) if p["type"] == "barchart")
    assert bar["options"]["orientation"] == "horizontal"
    assert bar["options"]["stacking"] == "normal"
    assert bar["options"]["showValue"] == "always"
    order = [t["legendFormat"] for t in bar["targets"]]
    assert order == ["socket queue (eBPF)", "frontend recv", "queue", "compute input", "compute infer",
                     "compute output", "handler overhead", "frontend send", "frontend overhead"]
    organize = next(t for t in bar["transformations"] if t["id"] == "organize")
    assert list(organize["options"]["renameByName"].values()) == order
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance", "model", "version", "protocol"} <= names
