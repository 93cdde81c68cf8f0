"""deploy/kubernetes, checked offline: every kustomization renders (kubectl kustomize), every
object passes kubernetes-validate (strict) or, for prometheus-operator kinds, the vendored CRD
schemas; generated files are in sync; the least-privilege and trace-path conventions hold."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.cli import config_from_args, parser
from exporter.ebpf.declaration import POD_LABELS
from exporter.traces.discovery import TracePattern

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = sorted(p.parent.name for p in K8S.glob("*/kustomization.yaml"))
# the newest Kubernetes that kubernetes-validate knows, and the oldest still common in clusters
K8S_VERSIONS = [kubernetes_validate.latest_version(), "1.30.0"]
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors-crd.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors-crd.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrules-crd.json",
}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@cache
def render(name: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/kubernetes"
    r = subprocess.run([kubectl, "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def objects(name: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in render(name) if o["kind"] == kind]


def the(name: str, kind: str) -> dict[str, Any]:
    found = objects(name, kind)
    assert len(found) == 1, f"{name}: expected one {kind}, found {len(found)}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted(f for f in [*ROOT.glob("deploy/**/*.yaml"), *ROOT.glob("deploy/**/*.yml")]
                   if f.parent.name != "templates")  # Helm templates are YAML only once rendered
    assert len(files) >= 15
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs, f"{f} holds no document"


def test_kustomizations_are_the_ones_documented() -> None:
    assert KUSTOMIZATIONS == ["base", "example-models", "examples", "kube-prometheus-stack", "monitoring",
                              "podmonitor", "sidecar"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_objects_pass_kubernetes_validate(name: str, version: str) -> None:
    checked = 0
    for obj in render(name):
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused (the API server would silently prune them)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schema(file: str) -> dict[str, Any]:
    crd = json.loads((ROOT / "tests" / "data" / file).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = _strict(version["schema"]["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, not described by the CRD
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


@pytest.mark.parametrize("name", ["base", "monitoring", "sidecar"])
def test_prometheus_operator_objects_match_the_crd_schemas(name: str) -> None:
    found = [o for o in render(name) if (o["apiVersion"], o["kind"]) in CRDS]
    assert found
    for obj in found:
        errors = list(jsonschema.Draft7Validator(crd_schema(CRDS[(obj["apiVersion"], obj["kind"])])).iter_errors(obj))
        assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_crd_validation_catches_a_typo() -> None:
    sm = copy.deepcopy(the("base", "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["relabeling"] = sm["spec"]["endpoints"][0].pop("relabelings")
    assert list(jsonschema.Draft7Validator(crd_schema("servicemonitors-crd.json")).iter_errors(sm))


def test_generated_files_are_in_sync() -> None:
    gen = generator()
    stale = [str(p.relative_to(ROOT)) for p, text in gen.outputs().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run python deploy/kubernetes/generate.py: {stale}"


def test_prometheusrule_holds_every_rule_of_prometheus_rules() -> None:
    groups = [g for f in sorted((ROOT / "prometheus/rules").glob("*.rules.yml"))
              for g in yaml.safe_load(f.read_text())["groups"]]
    assert groups
    assert the("monitoring", "PrometheusRule")["spec"]["groups"] == groups


def test_dashboards_configmaps_hold_every_dashboard() -> None:
    maps = objects("monitoring", "ConfigMap")
    shipped = {k: json.loads(v) for m in maps for k, v in m["data"].items()}
    for f in (ROOT / "grafana/dashboards").glob("*.json"):
        assert shipped.pop(f.name) == json.loads(f.read_text())
    assert not shipped
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)


def test_daemonset_least_privilege() -> None:
    ds = the("base", "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = container(pod, "exporter")
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_RESOURCE"]}
    assert not pod.get("hostPID") and not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert pod["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][kind].keys()
    host = {v["hostPath"]["path"]: v["name"] for v in pod["volumes"] if "hostPath" in v}
    assert set(host) == {"/sys/kernel/tracing", "/lib/modules", "/usr/src", "/var/log/triton", "/var/lib/inference-profiler",
                         "/sys/fs/cgroup", "/var/log/containers"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for path in ("/sys/kernel/tracing", "/lib/modules", "/usr/src", "/var/log/containers"):
        assert mounts[host[path]]["mountPath"] == path and mounts[host[path]]["readOnly"] is True, path
    # the node's cgroup tree, read-only, where --cgroup-root points (not over the container's own)
    cg = mounts[host["/sys/fs/cgroup"]]
    assert cg["readOnly"] is True and f"--cgroup-root={cg['mountPath']}" in c["args"]
    assert not mounts[host["/var/lib/inference-profiler"]].get("readOnly")
    # writable only for retention, which is on by default
    assert "--trace-delete-ingested" in c["args"]
    assert mounts[host["/var/log/triton"]]["readOnly"] is False
    probes = {c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    assert probes == {"/healthz", "/readyz"}


def test_daemonset_runs_on_gpu_nodes_and_is_scraped_honouring_its_labels() -> None:
    pod = the("base", "DaemonSet")["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]
    (ep,) = the("base", "ServiceMonitor")["spec"]["endpoints"]
    assert ep["honorLabels"] is True
    for f in ("prometheus/prometheus.yml", "prometheus/prometheus-kubernetes.yml",
              "prometheus/prometheus-kubernetes-endpoints.yml", "deploy/compose/prometheus.yml"):
        jobs = yaml.safe_load((ROOT / f).read_text())["scrape_configs"]
        assert all(j["honor_labels"] is True for j in jobs if "inference-profiler" in j["job_name"]), f


def _cfg(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for k in list(os.environ):
        if k.startswith("INFPROF_"):
            monkeypatch.delenv(k)
    assert args[0] == "serve"
    return config_from_args(parser().parse_args(args))


def test_daemonset_reads_each_pods_traces_with_a_pod_label(monkeypatch: pytest.MonkeyPatch) -> None:
    c = container(the("base", "DaemonSet")["spec"]["template"]["spec"], "exporter")
    cfg = _cfg(c["args"], monkeypatch)
    assert cfg.ebpf == "auto" and cfg.state_dir == "/var/lib/inference-profiler"
    [spec] = cfg.trace_file
    # where the example Triton's traces land on the node: hostPath + subPathExpr + file=
    tpod = the("examples", "Deployment")["spec"]["template"]["spec"]
    t = container(tpod, "triton")
    file_arg = next(a.split("file=", 1)[1] for a in t["args"] if "triton,file=" in a)
    mount = next(m for m in t["volumeMounts"] if file_arg.startswith(m["mountPath"] + "/"))
    assert mount["subPathExpr"] == "$(POD_NAMESPACE)/$(POD_NAME)"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in t["env"] if "valueFrom" in e}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    host = next(v["hostPath"]["path"] for v in tpod["volumes"] if v["name"] == mount["name"])
    on_node = f"{host}/shop/triton-7d9f-x2x4z/{file_arg[len(mount['mountPath']) + 1:]}"
    # the same label names the eBPF series carry with --kubernetes: a pod's series join
    assert TracePattern(spec).labels(on_node) == {"namespace": "shop", "pod": "triton-7d9f-x2x4z"}
    assert set(TracePattern(spec).label_names) <= set(POD_LABELS)


def test_daemonset_trace_pattern_finds_pod_files(tmp_path: Path) -> None:
    c = container(the("base", "DaemonSet")["spec"]["template"]["spec"], "exporter")
    spec = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--trace-file="))
    local = spec.replace("/var/log/triton", str(tmp_path))
    for pod in ("triton-a", "triton-b"):
        (tmp_path / "shop" / pod).mkdir(parents=True)
        (tmp_path / "shop" / pod / "trace.json.0").write_text("[]")
    (tmp_path / "shop" / "stray.txt").write_text("x")
    pat = TracePattern(local)
    assert sorted((pat.labels(b)["namespace"], pat.labels(b)["pod"]) for b in pat.expand()) == [
        ("shop", "triton-a"), ("shop", "triton-b")]


def test_sidecar_shares_traces_without_privileges(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = the("sidecar", "Deployment")["spec"]["template"]["spec"]
    t, e = container(pod, "triton"), container(pod, "inference-profiler")
    cfg = _cfg(e["args"], monkeypatch)
    assert cfg.ebpf == "off" and cfg.triton == ["http://localhost:8000"]
    file_arg = next(a.split("file=", 1)[1] for a in t["args"] if "triton,file=" in a)
    assert cfg.trace_file == [file_arg]
    tm = next(m for m in t["volumeMounts"] if file_arg.startswith(m["mountPath"] + "/"))
    em = next(m for m in e["volumeMounts"] if file_arg.startswith(m["mountPath"] + "/"))
    assert tm["name"] == em["name"] and tm["mountPath"] == em["mountPath"]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tm["name"])
    assert not any("hostPath" in v for v in pod["volumes"])
    sc = e["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    assert the("sidecar", "Deployment")["spec"]["template"]["metadata"]["labels"]["inference-profiler/ebpf"] == "optional"


@pytest.mark.parametrize("name", ["examples", "sidecar"])
def test_example_model_volume_lays_out_the_repository(name: str) -> None:
    pod = the(name, "Deployment")["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "models")
    items = [(i["key"], i["path"]) for i in vol["configMap"]["items"]]
    assert items == generator()._model_files()
    cm = next(o for o in render(name) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == vol["configMap"]["name"])
    assert {k for k, _ in items} == set(cm["data"])


@pytest.mark.parametrize("name", ["base", "sidecar"])
def test_servicemonitor_labels_match_the_prometheus_config(name: str) -> None:
    kube = yaml.safe_load((ROOT / "prometheus/prometheus-kubernetes.yml").read_text())
    want = {}
    for r in kube["scrape_configs"][0]["relabel_configs"]:
        if r.get("target_label") in ("job", "node", "ebpf_expected"):
            want[r["target_label"]] = (r.get("source_labels"), r.get("regex"), r.get("replacement"))
    sm = the(name, "ServiceMonitor")
    [ep] = sm["spec"]["endpoints"]
    got = {r["targetLabel"]: (r.get("sourceLabels"), r.get("regex"), r.get("replacement")) for r in ep["relabelings"]}
    assert got == want
    svc = next(s for s in objects(name, "Service") if all(
        s["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()))
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}


def test_podmonitor_variant_replaces_the_servicemonitor_with_the_same_labels() -> None:
    assert objects("podmonitor", "ServiceMonitor") == []
    assert the("podmonitor", "DaemonSet") == the("base", "DaemonSet")
    [sm_ep] = the("base", "ServiceMonitor")["spec"]["endpoints"]
    pm = the("podmonitor", "PodMonitor")
    [pm_ep] = pm["spec"]["podMetricsEndpoints"]
    assert pm_ep == sm_ep, "one scrape: the same port, honorLabels, interval and relabelings"
    labels = the("base", "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_networkpolicies_allow_the_metrics_port() -> None:
    for name in ("base", "sidecar"):
        np = the(name, "NetworkPolicy")
        ports = {p["port"] for rule in np["spec"]["ingress"] for p in rule.get("ports", [])}
        assert "metrics" in ports, name


def test_daemonset_networkpolicy_lets_dns_and_the_otlp_forward_out() -> None:
    egress = {(p["port"], p["protocol"]) for rule in the("base", "NetworkPolicy")["spec"]["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (4318, "TCP"), (8000, "TCP"), (8002, "TCP")} <= egress


def test_daemonset_tolerates_the_gpu_taint_only_and_has_node_critical_priority() -> None:
    pod = the("base", "DaemonSet")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert all(t.get("key") and t.get("effect") != "NoExecute" for t in pod["tolerations"]), pod["tolerations"]


def test_release_label_component_labels_every_prometheus_operator_object() -> None:
    found = [o for o in render("kube-prometheus-stack") if (o["apiVersion"], o["kind"]) in CRDS]
    assert {o["kind"] for o in found} == {"ServiceMonitor", "PrometheusRule"}
    assert all(o["metadata"]["labels"]["release"] == "kube-prometheus-stack" for o in found)
    rest = [o for o in render("kube-prometheus-stack") if (o["apiVersion"], o["kind"]) not in CRDS]
    assert rest == [o for o in render("base") if (o["apiVersion"], o["kind"]) not in CRDS]


def test_daemonset_takes_otlp_through_a_node_local_service() -> None:
    """No hostPort (an OpenTelemetry Collector agent often holds 4318 on the node): a Service with
    internalTrafficPolicy Local keeps each Triton pod's spans on its own node's exporter."""
    ds = the("base", "DaemonSet")
    c = ds["spec"]["template"]["spec"]["containers"][0]
    listen = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--otlp-listen="))
    port = next(p for p in c["ports"] if p["name"] == "otlp")
    assert port["containerPort"] == int(listen.rsplit(":", 1)[1]) and "hostPort" not in port
    svc = next(s for s in objects("base", "Service") if s["metadata"]["name"] == "inference-profiler-otlp")
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["otlp"]
    np = the("base", "NetworkPolicy")
    assert "otlp" in {p["port"] for rule in np["spec"]["ingress"] for p in rule.get("ports", [])}


def test_daemonset_exporter_runs_under_the_shipped_seccomp_profile() -> None:
    c = container(the("base", "DaemonSet")["spec"]["template"]["spec"], "exporter")
    profile = c["securityContext"]["seccompProfile"]
    assert profile["type"] == "Localhost"
    assert (ROOT / "deploy/seccomp" / profile["localhostProfile"]).is_file()
    readme = (ROOT / "deploy/README.md").read_text()
    assert f"/var/lib/kubelet/seccomp/{profile['localhostProfile']}" in readme
