"""docker-compose.yml, checked without a Docker engine: schema, paths, flags, least privilege,
and the Triton + exporter part of it run for real (Triton from the wheel, same version as the image)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from exporter.cli import config_from_args, parser

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    s = compose()["services"][name]
    assert isinstance(s, dict)
    return s


def mounts(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume of a service."""
    out = []
    for v in svc.get("volumes", []):
        parts = v.split(":")
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_catches_mistakes() -> None:
    # the validation above is only worth something if a broken file fails it
    bad = compose()
    bad["services"]["exporter"]["cap_add"] = "BPF"
    bad["services"]["grafana"]["restartt"] = "always"
    errors = list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(bad))
    assert len(errors) >= 2


def test_bind_mount_sources_exist_in_the_repository() -> None:
    for name, svc in compose()["services"].items():
        for src, target, _ in mounts(svc):
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name}: {src} (mounted at {target}) does not exist"
            elif not src.startswith("/"):
                assert src in compose()["volumes"], f"{name}: named volume {src} not declared"


def test_images_are_pinned() -> None:
    for name, svc in compose()["services"].items():
        image = svc.get("image", "")
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), f"{name}: pin {image!r}"


def test_exporter_has_only_the_privileges_ebpf_needs() -> None:
    e = service("exporter")
    assert not e.get("privileged")
    assert e["cap_drop"] == ["ALL"]
    assert set(e["cap_add"]) == {"BPF", "PERFMON", "SYS_RESOURCE"}
    assert e.get("pid") != "host" and e.get("network_mode") != "host"
    assert e["read_only"] is True
    assert "no-new-privileges:true" in e["security_opt"]
    [seccomp] = [o.split("=", 1)[1] for o in e["security_opt"] if o.startswith("seccomp=")]
    assert (ROOT / seccomp).resolve() == (ROOT / "deploy/seccomp/inference-profiler.json").resolve()
    host = {src: mode for src, _, mode in mounts(e) if src.startswith("/")}
    assert host == {"/sys/kernel/tracing": "ro", "/lib/modules": "ro", "/usr/src": "ro"}


def _exporter_config(args: list[str]) -> Any:
    return config_from_args(parser().parse_args(args))


def test_exporter_command_is_valid_for_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("INFPROF_"):
            monkeypatch.delenv(k)
    cfg = _exporter_config(service("exporter")["command"])
    assert cfg.triton == ["http://triton:8000"]
    assert cfg.ebpf == "auto"
    assert cfg.trace_delete_ingested  # retention on: the trace volume is mounted writable for it
    assert [mode for src, _, mode in mounts(service("exporter")) if src == "triton-traces"] == ["rw"]


def _volume_path(svc: dict[str, Any], path: str) -> tuple[str, str] | None:
    """(volume, path inside it) for a container path, through the service's mounts."""
    for src, target, _ in mounts(svc):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return src, path[len(target):].lstrip("/")
    return None


def test_triton_traces_and_perf_results_reach_the_exporter() -> None:
    t, e, g = service("triton"), service("exporter"), service("loadgen")
    trace = next(a.split("file=", 1)[1] for a in t["command"] if "triton,file=" in a)
    cfg_args = service("exporter")["command"]
    exporter_trace = next(a.split("=", 1)[1] for a in cfg_args if a.startswith("--trace-file="))
    assert _volume_path(t, trace) == _volume_path(e, exporter_trace)
    assert _volume_path(t, trace)[0] == "triton-traces"  # type: ignore[index]
    csv_glob = next(a.split("=", 1)[1] for a in cfg_args if a.startswith("--perf-analyzer-csv="))
    script = g["command"][0]
    outputs = re.findall(r"-f (\S+)", script)
    assert outputs
    for out in outputs:
        vol, rel = _volume_path(g, out)  # type: ignore[misc]
        evol, erel = _volume_path(e, csv_glob)  # type: ignore[misc]
        assert vol == evol and Path(rel).match(erel), (out, csv_glob)


def test_loadgen_models_exist_in_the_model_repository() -> None:
    t = service("triton")
    repo = next(a.split("=", 1)[1] for a in t["command"] if a.startswith("--model-repository="))
    src = next(s for s, target, _ in mounts(t) if target == repo)
    for model in re.findall(r"-m (\S+)", service("loadgen")["command"][0]):
        assert (ROOT / src / model / "config.pbtxt").is_file(), model
    assert service("loadgen")["profiles"] == ["load"]


def test_grafana_gets_our_provisioning_and_dashboards() -> None:
    g = service("grafana")
    m = {target: src for src, target, _ in mounts(g)}
    assert m["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/inference-profiler.yaml").read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    assert m[dash_path] == "./grafana/dashboards"
    assert list((ROOT / "grafana/dashboards").glob("*.json"))
    home = g["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / m[dash_path] / Path(home).relative_to(dash_path)).is_file()
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert "PROMETHEUS_URL" in ds["datasources"][0]["url"]
    assert g["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"


def _prometheus_layout(tmp_path: Path) -> Path:
    """The config and rules where the Prometheus container sees them (its mounts, under tmp_path)."""
    for src, target, _ in mounts(service("prometheus")):
        if src.startswith("./"):
            dest = tmp_path / target.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (ROOT / src).is_dir() else shutil.copy)(ROOT / src, dest)
    return tmp_path / "etc/prometheus/prometheus.yml"


def test_compose_prometheus_config_is_ours_with_compose_targets() -> None:
    ours = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    theirs = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    for cfg in (ours, theirs):
        for job in cfg["scrape_configs"]:
            for sc in job.get("static_configs", []):
                sc["targets"] = ["<target>"]
    assert ours == theirs, "deploy/compose/prometheus.yml drifted from prometheus/prometheus.yml"
    targets = [t for j in yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())["scrape_configs"]
               for sc in j.get("static_configs", []) for t in sc["targets"]]
    ports = [p.split(":")[-1] for p in service("exporter")["ports"]]
    assert targets == [f"exporter:{ports[0]}"]


@pytest.mark.prometheus
def test_promtool_accepts_the_compose_prometheus_layout(tmp_path: Path) -> None:
    cfg = _prometheus_layout(tmp_path)
    r = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    n_rules = len(list((ROOT / "prometheus/rules").glob("*.rules.yml")))
    assert n_rules and r.stdout.count("SUCCESS") >= 1 + n_rules, r.stdout


def _map(arg: str, paths: dict[str, Path]) -> str:
    for container, local in paths.items():
        arg = arg.replace(container, str(local))
    return arg


def test_compose_triton_and_exporter_commands_work_for_real(
    tmp_path: Path, exporter_factory: Any, triton_factory: Any
) -> None:
    """Triton with the compose file's trace flags writes where the exporter, with the compose
    file's flags, reads: traces are counted. Container paths map to temp dirs."""
    from exporter.demo.traffic import plan_for, send_requests

    traces = tmp_path / "var-log-triton"
    paths = {"/var/log/triton": traces, "/var/lib/perf-analyzer": tmp_path / "perf"}
    trace_flags = [_map(a, paths) for a in service("triton")["command"] if a.startswith("--trace-config")]
    assert any("triton,file=" in a for a in trace_flags)
    traces.mkdir()
    t = triton_factory(trace_file=None, extra_args=trace_flags)
    args = [_map(a, paths) for a in service("exporter")["command"][1:]]
    args = [f"--triton={t.http_url}" if a.startswith("--triton=") else a for a in args]
    args = ["--ebpf=off" if a.startswith("--ebpf=") else a for a in args]  # eBPF has its own tests
    args.append(f"--triton-metrics-url={t.metrics_url}")  # compose: port 8002 of the same host
    e = exporter_factory(*args)
    send_requests(t.http_address, t.grpc_address, plan_for(3))
    t.flush_traces()
    scrape = e.wait_for(lambda m: m.total("inference_profiler_traces_total") >= 12, timeout=60)
    assert scrape.total("inference_profiler_triton_up") == 1, shlex.join(args)

    # the load generator's perf_analyzer runs, shortened (one rate level, 1 s windows), write
    # result files that the exporter's --perf-analyzer-csv glob picks up
    from exporter.triton.perf_analyzer import perf_analyzer_binary, perf_analyzer_env

    ports = {"triton:8000": t.http_address, "triton:8001": t.grpc_address}
    runs = _perf_analyzer_commands()
    assert len(runs) == 2
    for cmd in runs:
        cmd = [_map(ports.get(a, a), paths) for a in cmd]
        cmd[cmd.index("--request-rate-range") + 1] = "50"
        cmd[cmd.index("--measurement-interval") + 1] = "1000"
        (tmp_path / "perf").mkdir(exist_ok=True)
        r = subprocess.run([str(perf_analyzer_binary()), *cmd[1:]], env=perf_analyzer_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, shlex.join(cmd) + "\n" + r.stdout[-2000:] + r.stderr[-2000:]
    runs_seen = {lab["run"] for lab, _ in e.wait_for(
        lambda m: len(m.select("inference_profiler_perf_analyzer_throughput")) >= 2, timeout=30
    ).select("inference_profiler_perf_analyzer_throughput")}
    assert runs_seen == {"add_sub_ensemble-http.csv", "add_sub_ensemble-grpc.csv"}


def _perf_analyzer_commands() -> list[list[str]]:
    script = re.sub(r"\\\n\s*", " ", service("loadgen")["command"][0])
    return [shlex.split(ln.split("||")[0]) for ln in script.splitlines() if ln.strip().startswith("perf_analyzer")]


def test_otlp_profile_triton_posts_to_the_exporters_otlp_listener() -> None:
    t = service("triton-otlp")
    assert t["profiles"] == ["otlp"]
    url = next(a.split("url=", 1)[1] for a in t["command"] if "opentelemetry,url=" in a)
    listen = next(a.split("=", 1)[1] for a in service("exporter")["command"] if a.startswith("--otlp-listen="))
    assert url == f"http://exporter:{listen.rsplit(':', 1)[1]}/v1/traces"
    assert "--trace-config=mode=opentelemetry" in t["command"]


def test_exemplars_are_stored_and_open_a_trace_datasource() -> None:
    assert "--enable-feature=exemplar-storage" in service("prometheus")["command"]
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    prom = next(d for d in ds if d["type"] == "prometheus")
    dest = prom["jsonData"]["exemplarTraceIdDestinations"]
    traces = next(d for d in ds if d["uid"] == dest[0]["datasourceUid"])
    assert dest[0]["name"] == "trace_id"  # the exemplar label the exporter writes
    assert "TRACES_URL" in traces["url"] and "TRACES_DATASOURCE_TYPE" in traces["type"]
    assert set(service("grafana")["environment"]) >= {"TRACES_URL", "TRACES_DATASOURCE_TYPE"}
