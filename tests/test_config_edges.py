"""Config edges: each is a one-line error with exit 2 from `serve`, and a FAIL line from `check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _deep_yaml(tmp: Path) -> list[str]:
    p = tmp / "deep.yaml"
    p.write_text("max_models: " + "[" * 20000 + "]" * 20000 + "\n")
    return ["--config", str(p)]


def _binary_yaml(tmp: Path) -> list[str]:
    p = tmp / "bin.yaml"
    p.write_bytes(b"max_models: \xff\xfe\x81\n")
    return ["--config", str(p)]


CASES: dict[str, tuple[object, str]] = {
    "poll_zero": (["--trace-poll-seconds", "0"], "trace_poll_seconds must be between 0.01 and 86400"),
    "poll_nan": (["--trace-poll-seconds", "nan"], "trace_poll_seconds must be a finite number"),
    "poll_inf": (["--trace-poll-seconds", "inf"], "trace_poll_seconds must be a finite number"),
    "settle_inf": (["--trace-settle-seconds", "inf"], "trace_settle_seconds must be a finite number"),
    "buckets_1e300": (["--stage-buckets", "1e300"], "stage_buckets must be at most 1e+06 seconds"),
    "buckets_inf": (["--stage-buckets", "0.1,inf"], "stage_buckets must be finite"),
    "buckets_nan": (["--stage-buckets", "nan"], "stage_buckets must be finite"),
    "buckets_1e10": (["--stage-buckets", "1e10"], "stage_buckets must be at most 1e+06 seconds"),
    "buckets_sub_ns": (["--stage-buckets", "1e-10,2e-10"], "stage_buckets must differ by at least a nanosecond"),
    "open_traces_1e12": (["--trace-open-traces", "1000000000000"], "trace_open_traces must be between 1 and"),
    "yaml_20k_deep": (_deep_yaml, "is nested too deeply"),
    "yaml_not_utf8": (_binary_yaml, "is not UTF-8 text"),
}


def _args(case: str, tmp: Path) -> list[str]:
    spec = CASES[case][0]
    return spec(tmp) if callable(spec) else list(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_refuses_with_one_line_and_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("INFPROF_")]:
        monkeypatch.delenv(k)
    rc = main(["serve", "--state-dir", str(tmp_path / "s"), *_args(case, tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("inference-profiler: error: "), err
    assert CASES[case][1] in err


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_reports_fail(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("INFPROF_")]:
        monkeypatch.delenv(k)
    rc = main(["check", "--state-dir", str(tmp_path / "s"), *_args(case, tmp_path)])
    out = capsys.readouterr().out
    assert rc == 2
    assert out.startswith("FAIL  config: ") and CASES[case][1] in out


def test_non_utf8_listen_from_environment(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environb.items() if not k.startswith(b"INFPROF_")}
    env[b"INFPROF_LISTEN"] = b"127.0.0.1\xff:9478"
    for cmd, stream in (("serve", "stderr"), ("check", "stdout")):
        r = subprocess.run([sys.executable, "-m", "exporter.cli", cmd, "--state-dir", str(tmp_path / "s")],
                           env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
        assert "listen is not valid UTF-8 text" in getattr(r, stream)


def test_check_fails_on_web_config_min_above_max(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("INFPROF_")]:
        monkeypatch.delenv(k)
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n")
    (tmp_path / "c").write_text("x")
    (tmp_path / "k").write_text("x")
    rc = main(["check", "--state-dir", str(tmp_path / "s"), "--web-config-file", str(web), "--triton", "none",
               "--ebpf", "off"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"FAIL  web config: web config {web}: min_version TLS13 is above max_version TLS12" in out


def test_check_names_the_trace_scanner(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.traces import scanner

    for k in [k for k in os.environ if k.startswith("INFPROF_")]:
        monkeypatch.delenv(k)
    main(["check", "--state-dir", str(tmp_path / "s"), "--triton", "none", "--ebpf", "off"])
    out = capsys.readouterr().out
    want = "C (compiled _scan module)" if scanner.FileScan is scanner.CFileScan else "pure Python"
    assert f"PASS  trace scanner: {want}" in out
