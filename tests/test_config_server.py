"""Config layering and errors, the CLI's one-line errors, and the HTTP endpoint."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from exporter.config import Config, ConfigError, build, load_yaml
from tests import tracegen
from tests.conftest import ROLLING_TRACES


def test_precedence_flags_over_env_over_file() -> None:
    cfg = build({"listen": "1.2.3.4:1", "max_models": 5}, {"INFPROF_MAX_MODELS": "7"}, {"max_models": 9})
    assert cfg.listen == "1.2.3.4:1" and cfg.max_models == 9
    cfg = build({"max_models": 5}, {"INFPROF_MAX_MODELS": "7"}, {})
    assert cfg.max_models == 7


def test_lists_from_env_flags_and_yaml() -> None:
    cfg = build({"ebpf_port": [1, 2]}, {"INFPROF_TRACE_FILE": "/a/t.json,/b/{pod}/t.json"},
                {"stage_buckets": ["0.001,0.01", "1"]})
    assert cfg.ebpf_port == [1, 2]
    assert cfg.trace_file == ["/a/t.json", "/b/{pod}/t.json"]
    assert cfg.stage_buckets == [0.001, 0.01, 1.0]


def test_triton_none_turns_the_source_off() -> None:
    assert build({}, {}, {"triton": ["none"]}).triton == []
    assert build({}, {}, {}).triton == ["http://localhost:8000"]


@pytest.mark.parametrize("file_values, env, flags, words", [
    ({"trace_files": ["x"]}, {}, {}, "unknown key 'trace_files'"),
    ({}, {"INFPROF_LISTN": "x"}, {}, "unknown variable INFPROF_LISTN"),
    ({}, {}, {"listen": "nohost"}, "HOST:PORT"),
    ({"max_models": "many"}, {}, {}, "max_models must be int"),
    ({"ebpf": "sometimes"}, {}, {}, "ebpf must be one of"),
    ({"stage_buckets": [1, 0.5]}, {}, {}, "strictly increasing"),
    ({"triton": ["localhost:8000"]}, {}, {}, "http://"),
    ({"trace_delete_ingested": "perhaps"}, {}, {}, "must be bool"),
])
def test_bad_values_are_one_line_errors(file_values: dict[str, object], env: dict[str, str],
                                        flags: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as e:
        build(file_values, env, flags)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(str(lst))
    ok = tmp_path / "ok.yaml"
    ok.write_text("trace-file: [/x/t.json]\nebpf: 'off'\n")
    assert build(load_yaml(str(ok)), {}, {}).trace_file == ["/x/t.json"]


def test_every_key_is_a_documented_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "exporter.cli", "serve", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in Config.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_user_mistakes_never_show_a_traceback(tmp_path: Path) -> None:
    for args in (["serve", "--config", str(tmp_path / "nope.yaml")], ["serve", "--listen", "x"],
                 ["summary", str(tmp_path / "none.json")]):
        r = subprocess.run([sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, args
        assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


def test_endpoints_and_openmetrics_exemplars(tmp_path: Path) -> None:
    shutil.copy(ROLLING_TRACES / "trace.json.0", tmp_path / "trace.json.0")
    tracegen.write_file(str(tmp_path / "trace.json.1"), tracegen.traces(5, start_id=1000))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", "--trace-file", str(tmp_path / "trace.json"),
                             "--triton", "none", "--ebpf", "off", "--state-dir", str(tmp_path / "state"),
                             "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(base + "/readyz", timeout=2).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.time() < deadline, "exporter never became ready"
            time.sleep(0.1)
        assert urllib.request.urlopen(base + "/healthz").read() == b"ok\n"
        text = urllib.request.urlopen(base + "/metrics").read().decode()
        assert 'inference_profiler_traces_total{model="add_sub",protocol="http",version="1"}' in text
        assert "inference_profiler_build_info" in text and "\nprocess_resident_memory_bytes " in text
        assert "# {" not in text  # exemplars only in OpenMetrics
        req = urllib.request.Request(base + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        resp = urllib.request.urlopen(req)
        om = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert om.rstrip().endswith("# EOF")
        exemplars = re.findall(r'stage_duration_seconds_bucket\{[^}]*\} \S+ # \{request_id="([^"]+)",trace_id="(\d+)"\}', om)
        assert exemplars and all(rid.endswith(tid) or rid.startswith(("http-", "grpc-")) for rid, tid in exemplars)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/nope")
        assert e.value.code == 404
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "shutting down" in err and "Traceback" not in err
