"""`check` on the per-pod trace layout: no pod dir yet, one, a stray file; state and web config as serve reads them."""

from __future__ import annotations

from pathlib import Path

from exporter.check import config_check
from exporter.config import Config
from exporter.traces.check import trace_checks
from exporter.traces.tailer import STATE_FILE


def results(cfg: Config) -> dict[str, tuple[str, str]]:
    return {r.name: (r.status, r.detail) for r in trace_checks(cfg)}


def test_per_pod_layout_zero_pods_one_pod_and_a_stray_file(tmp_path: Path) -> None:
    root = tmp_path / "triton"
    root.mkdir()
    spec = f"{root}/{{namespace}}/{{pod}}/trace.json"
    cfg = Config(trace_file=[spec], state_dir=str(tmp_path / "state"))
    got = results(cfg)
    status, detail = got[f"trace dir {root}/*/*"]
    assert status == "warn" and spec in detail, "a fresh node: no pod dir yet is a warning naming the pattern"
    assert "fail" not in {s for s, _ in got.values()}

    (root / "stray.txt").write_text("x")  # a stray file beside the namespace dirs
    (root / "shop").mkdir()
    (root / "shop" / "README").write_text("x")  # and one beside the pod dirs
    pod = root / "shop" / "triton-0"
    pod.mkdir()
    got = results(cfg)
    assert got[f"trace files {spec}"][0] == "pass"
    assert got["trace files"][0] == "warn", "no trace file at all yet is a warning"
    assert "fail" not in {s for s, _ in got.values()}

    (pod / "trace.json.0").write_text("[]")
    got = results(cfg)
    assert got[f"trace files {spec}"] == ("pass", "1 dir(s), 1 file(s) found now")
    assert "trace files" not in got


def test_a_missing_fixed_dir_still_fails(tmp_path: Path) -> None:
    got = results(Config(trace_file=[f"{tmp_path}/nope/trace.json"], state_dir=str(tmp_path)))
    assert got[f"trace dir {tmp_path}/nope"][0] == "fail"


def test_state_file_is_read_as_serve_reads_it_and_left_in_place(tmp_path: Path) -> None:
    assert results(Config(state_dir=str(tmp_path)))["state dir"][0] == "pass"
    state = tmp_path / STATE_FILE
    state.write_text("{not json")
    status, detail = results(Config(state_dir=str(tmp_path)))["state dir"]
    assert status == "warn" and "from 0" in detail
    assert state.read_text() == "{not json", "check must not move the state aside: serve does that"
    state.write_text('{"version": 999}')
    assert results(Config(state_dir=str(tmp_path)))["state dir"][0] == "warn"


def test_web_config_is_loaded_as_serve_loads_it(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\n")
    got = {r.name: r for r in config_check(Config(web_config_file=str(web)))}
    assert got["web config"].status == "pass"
    web.write_text("tls_server_config: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}\n")
    got = {r.name: r for r in config_check(Config(web_config_file=str(web)))}
    assert got["web config"].status == "fail" and "web config" in got["web config"].detail
