"""deploy/helm: the chart linted and rendered by Helm's own engine (helm-sdkpy, on the machine's
newest CPython >= 3.12), each rendered object checked by kubernetes-validate or the vendored CRD
schemas, each value doing what values.yaml says, and the default render holding the same objects
and settings as the kustomize overlay deploy/kubernetes/kube-prometheus-stack."""

from __future__ import annotations

import copy
import fcntl
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import newest_python
from tests.test_deploy_kubernetes import CRDS, K8S_VERSIONS, container, crd_schema, render

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "inference-profiler"
HELM_SDKPY = "helm-sdkpy==0.1.32"
RELEASE = NAMESPACE = "inference-profiler"
# labels only Helm sets (release bookkeeping); kustomize's objects have none of them
HELM_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version",
               "helm.sh/chart")

pytestmark = pytest.mark.helm


@cache
def helm_python() -> Path:
    """A venv of the newest CPython with helm-sdkpy, cached in .cache/helm-venv (shared by parallel runs)."""
    found = newest_python()
    assert found is not None and found[1] >= (3, 12), "helm-sdkpy needs CPython >= 3.12"
    venv = ROOT / ".cache" / f"helm-venv-{found[1][0]}.{found[1][1]}"
    vpy = venv / "bin" / "python"
    venv.parent.mkdir(exist_ok=True)
    with open(venv.parent / "helm-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run([vpy, "-c", "import helm_sdkpy"], capture_output=True).returncode if vpy.exists() else 1:
            subprocess.run([found[0], "-m", "venv", venv], check=True, timeout=120)
            r = subprocess.run([vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check", HELM_SDKPY],
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stdout + r.stderr
    return vpy


@cache
def _helm(values_json: str) -> dict[str, Any]:
    """Lint, and the install's manifest and objects, for these values (each set rendered once)."""
    r = subprocess.run([helm_python(), ROOT / "tests" / "helm_render.py", CHART, RELEASE, NAMESPACE, values_json],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def helm(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return _helm(json.dumps(values or {}, sort_keys=True))


@cache
def _rendered(values_json: str) -> list[dict[str, Any]]:
    out = _helm(values_json)
    docs = [d for d in yaml.safe_load_all(out["manifest"]) if d]
    # what Helm sent the API server is what it rendered
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in out["sent"])
    return docs


def rendered(**values: Any) -> list[dict[str, Any]]:
    return _rendered(json.dumps(values, sort_keys=True))


def one(docs: list[dict[str, Any]], kind: str, name: str = RELEASE) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_chart_lints_clean() -> None:
    lint = helm()["lint"]
    assert lint["TotalChartsLinted"] == 1 and not lint["Errors"]
    # severity 1 is INFO (Chart.yaml has no icon); 2 WARNING, 3 ERROR
    assert [m for m in lint["Messages"] if m["Severity"] >= 2] == []


def test_lint_catches_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "inference-profiler"
    subprocess.run(["cp", "-r", CHART, broken], check=True)
    with open(broken / "templates" / "service.yaml", "a") as f:
        f.write("{{ .Values.nosuch.key }}\n")
    r = subprocess.run([helm_python(), ROOT / "tests" / "helm_render.py", broken, RELEASE, NAMESPACE, "{}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "nil pointer" in r.stderr


VARIANTS: list[dict[str, Any]] = [
    {},
    {"podMonitor": {"enabled": True}},
    {"ebpf": {"enabled": False}, "seccompProfile": {"type": "RuntimeDefault"}},
    {"otlp": {"enabled": False}, "networkPolicy": {"enabled": False}, "dashboards": {"enabled": False},
     "prometheusRule": {"enabled": False}, "serviceMonitor": {"enabled": False}},
    {"otlp": {"hostPort": 14318, "forward": ["http://tempo.tempo:4318/v1/traces"]},
     "extraArgs": ["--max-models=50"], "extraEnv": [{"name": "INFPROF_LOG_LEVEL", "value": "debug"}],
     "kubernetes": {"enabled": False}, "priorityClassName": "", "affinity": None},
]


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_every_rendered_object_is_valid(variant: int) -> None:
    docs = rendered(**VARIANTS[variant])
    assert docs
    for obj in docs:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRDS:
            errors = list(jsonschema.Draft7Validator(crd_schema(CRDS[key])).iter_errors(obj))
            assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {e.message} "
                            f"at {list(e.path)}")


def _exporter(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return container(one(docs, "DaemonSet")["spec"]["template"]["spec"], "exporter")


def test_defaults_fit_kube_prometheus_stack_and_gpu_nodes() -> None:
    docs = rendered()
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(docs, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [ep] = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert ep["honorLabels"] is True and ep["interval"] == "15s"
    c = _exporter(docs)
    otlp = next(p for p in c["ports"] if p["name"] == "otlp")
    assert "hostPort" not in otlp and "--otlp-listen=:4318" in c["args"]
    assert one(docs, "Service", "inference-profiler-otlp")["spec"]["internalTrafficPolicy"] == "Local"
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(maps) == len(list((ROOT / "grafana" / "dashboards").glob("*.json")))
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["annotations"]["grafana_folder"] == "Inference Profiler"
    egress = {p["port"] for rule in one(docs, "NetworkPolicy")["spec"]["egress"] for p in rule["ports"]}
    assert {53, 8000, 8002, 4318} <= egress


def test_values_change_what_they_say() -> None:
    pm = rendered(podMonitor={"enabled": True})
    assert [d["kind"] for d in pm if d["kind"] in ("ServiceMonitor", "PodMonitor")] == ["PodMonitor"]
    assert one(pm, "PodMonitor")["spec"]["podMetricsEndpoints"] == one(rendered(), "ServiceMonitor")["spec"]["endpoints"]

    no_ebpf = _exporter(rendered(**VARIANTS[2]))
    assert "--ebpf=off" in no_ebpf["args"] and no_ebpf["securityContext"]["runAsNonRoot"] is True
    assert no_ebpf["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert no_ebpf["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"tracefs", "modules", "usr-src", "cgroup"} & {m["name"] for m in no_ebpf["volumeMounts"]}

    bare = rendered(**VARIANTS[3])
    assert sorted(d["kind"] for d in bare) == ["DaemonSet", "Service", "ServiceAccount"]
    assert not any(a.startswith("--otlp") for a in _exporter(bare)["args"])

    extra = rendered(**VARIANTS[4])
    c = _exporter(extra)
    assert next(p for p in c["ports"] if p["name"] == "otlp")["hostPort"] == 14318
    assert "--otlp-forward=http://tempo.tempo:4318/v1/traces" in c["args"] and "--max-models=50" in c["args"]
    assert {"name": "INFPROF_LOG_LEVEL", "value": "debug"} in c["env"]
    assert "--kubernetes=off" in c["args"] and "cgroup" not in {m["name"] for m in c["volumeMounts"]}
    pod = one(extra, "DaemonSet")["spec"]["template"]["spec"]
    assert "priorityClassName" not in pod and "affinity" not in pod


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """The object less what only Helm adds (its bookkeeping labels) and the namespace (Helm's release namespace)."""
    o = copy.deepcopy(obj)

    def strip(labels: dict[str, str] | None) -> None:
        for k in HELM_LABELS:
            (labels or {}).pop(k, None)

    meta = o["metadata"]
    meta.pop("namespace", None)
    strip(meta.get("labels"))
    if meta.get("labels") == {}:
        meta.pop("labels")
    spec = o.get("spec", {})
    for sel in (spec.get("selector", {}).get("matchLabels"), spec.get("selector") if o["kind"] == "Service" else None,
                spec.get("podSelector", {}).get("matchLabels"), spec.get("template", {}).get("metadata", {}).get("labels")):
        strip(sel)
    if o["kind"] == "ConfigMap":
        o["data"] = {k: json.loads(v) for k, v in o["data"].items()}
    return o


def test_helm_defaults_render_the_kustomize_overlay() -> None:
    """deploy/kubernetes/kube-prometheus-stack and the chart's defaults: the same objects, field for field
    (the Namespace aside: Helm installs into the release namespace)."""
    kust = {(o["kind"], o["metadata"]["name"]): _comparable(o) for o in render("kube-prometheus-stack")
            if o["kind"] != "Namespace"}
    chart = {(o["kind"], o["metadata"]["name"]): _comparable(o) for o in rendered()}
    assert sorted(kust) == sorted(chart)
    for key, k in kust.items():
        assert chart[key] == k, key


@pytest.mark.parametrize("values, words", [
    ({"serviceMonitors": {"enabled": True}}, "serviceMonitors"),  # a typo is refused, not ignored
    ({"seccompProfile": {"type": "unconfined"}}, "seccompProfile"),
    ({"otlp": {"port": "4318x"}}, "otlp"),
])
def test_values_schema_refuses_mistakes(values: dict[str, Any], words: str) -> None:
    r = subprocess.run([helm_python(), ROOT / "tests" / "helm_render.py", CHART, RELEASE, NAMESPACE,
                        json.dumps(values)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "schema" in r.stderr and words in r.stderr, r.stderr[-2000:]
