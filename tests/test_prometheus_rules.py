"""prometheus/: configs and rules pass promtool, every rule has a unit test, and the
`promtool test rules` unit tests pass."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.rules.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.test.yml"))
KUBERNETES_CONFIGS = ("prometheus-kubernetes.yml", "prometheus-kubernetes-endpoints.yml")


def promtool(*args: str, cwd: Path = PROM) -> str:
    r = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"promtool {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def rules() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in RULE_FILES:
        for g in yaml.safe_load(f.read_text())["groups"]:
            out.extend(g["rules"])
    return out


def unit_tests() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in TEST_FILES:
        out.extend(yaml.safe_load(f.read_text())["tests"])
    return out


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    assert RULE_FILES
    out = promtool("check", "rules", *[str(f) for f in RULE_FILES])
    assert out.count("SUCCESS") == len(RULE_FILES)


@pytest.mark.prometheus
def test_promtool_check_static_config() -> None:
    promtool("check", "config", "prometheus.yml")


@pytest.mark.prometheus
@pytest.mark.parametrize("name", KUBERNETES_CONFIGS)
def test_promtool_check_kubernetes_config(name: str, tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes discovery, so the discovery block is
    swapped for a static target; everything else (relabelling, regexes, rule files) is checked."""
    cfg = yaml.safe_load((PROM / name).read_text())
    for job in cfg["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs"), job["job_name"]
        job["static_configs"] = [{"targets": ["10.0.0.1:9478"]}]
        relabelled = {r.get("target_label") for r in job["relabel_configs"]}
        assert {"job", "node", "pod", "ebpf_expected"} <= relabelled
        assert any(r.get("replacement") == "inference-profiler" and r.get("target_label") == "job"
                   for r in job["relabel_configs"])
    cfg["rule_files"] = [str(PROM / "rules" / "*.rules.yml")]
    (tmp_path / name).write_text(yaml.safe_dump(cfg))
    promtool("check", "config", name, cwd=tmp_path)


@pytest.mark.prometheus
def test_promtool_unit_tests_pass() -> None:
    assert TEST_FILES
    out = promtool("test", "rules", *[str(f) for f in TEST_FILES])
    assert out.count("SUCCESS") == len(TEST_FILES)


def test_every_alert_fires_in_a_unit_test() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    fired = {
        a["alertname"] for t in unit_tests() for a in t.get("alert_rule_test", []) if a.get("exp_alerts")
    }
    quiet = {
        a["alertname"] for t in unit_tests() for a in t.get("alert_rule_test", []) if not a.get("exp_alerts")
    }
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown not firing"


def test_every_recording_rule_has_a_unit_test() -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    exprs = " ".join(p["expr"] for t in unit_tests() for p in t.get("promql_expr_test", []))
    untested = {r for r in recorded if not re.search(re.escape(r) + r"(?![\w:])", exprs)}
    assert untested == set()
