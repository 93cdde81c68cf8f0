"""Dependencies: the daemon runs without tritonclient, gevent or the gRPC stack, and the unit tests pass on
the newest CPython of the machine with numpy 2 (the project's own venv keeps numpy 1, which
the Triton wheel the real-part tests need still pins)."""

from __future__ import annotations

import fcntl
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tests.conftest import newest_python

ROOT = Path(__file__).resolve().parent.parent
# protobuf alone is a runtime dependency: opentelemetry-proto decodes OTLP (--otlp-listen) with it
GRPC_STACK = ("grpcio",)
# tritonclient and the gevent stack its HTTP client brings: demo and tests only
CLIENT_STACK = ("tritonclient", "gevent", "geventhttpclient", "greenlet")
# pure-logic tests; the few that take tens of seconds (huge files, big chunks) are left to 3.11
UNIT_TESTS = ["tests/test_trace_pipeline.py", "tests/test_trace_bad_input.py", "tests/test_trace_scanner_fastpath.py",
              "tests/test_summary_cli.py", "tests/test_perf_csv.py", "tests/test_triton_parse.py",
              "tests/test_triton_target.py", "tests/test_ebpf_units.py", "tests/test_histogram_le.py",
              "tests/test_yamlfile.py", "tests/test_metric_contract.py"]
SLOW = "not huge_single_file and not big_chunks"


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in reqs}


def test_runtime_dependencies_leave_out_tritonclient_and_the_grpc_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"]
    assert not _requirement_names(runtime) & {"tritonclient", *GRPC_STACK}, runtime
    assert any("tritonclient[http,grpc]" in r for r in project["optional-dependencies"]["triton"])
    image = [ln for ln in (ROOT / "deploy" / "docker" / "requirements.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert _requirement_names(image) & {*GRPC_STACK, *CLIENT_STACK} == set(), "the image pins a client stack"


def test_the_daemon_never_imports_grpc_or_tritonclient(tmp_path: Path) -> None:
    # every source's code path that runs without a kernel: build, one scrape, the preflight
    code = (
        "import sys\n"
        "from prometheus_client.exposition import generate_latest\n"
        "from exporter.check import run_checks\n"
        "from exporter.config import build\n"
        "from exporter.daemon import Daemon\n"
        "cfg = build({}, {}, {'listen': '127.0.0.1:0', 'state_dir': sys.argv[1], 'triton': ['http://127.0.0.1:9'],\n"
        "                     'trace_file': [sys.argv[1] + '/trace.json'], 'ebpf': 'off',\n"
        "                     'perf_analyzer_csv': [sys.argv[1] + '/pa.csv'], 'triton_timeout_seconds': 0.5})\n"
        "d = Daemon(cfg)\n"
        "generate_latest(d.registry)\n"
        "run_checks(cfg)\n"
        "assert 'exporter.triton.http_fetch' in sys.modules, 'the Triton fetch did not run'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google', 'tritonclient', 'gevent',\n"
        "                                                           'geventhttpclient') or 'grpc' in m))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


def _venv(python: str, version: tuple[int, int]) -> Path:
    """A venv of that Python with the project (editable: its C scanner built in place for it), [test]
    and numpy 2; cached in .cache/ by interpreter and pyproject.toml, the scanner rebuilt when its
    source changes."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + python.encode()).hexdigest()[:16]
    scan = hashlib.sha256((ROOT / "exporter" / "traces" / "_scan.c").read_bytes()).hexdigest()
    cache = ROOT / ".cache" / "newest-python"
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"{version[0]}.{version[1]}-{key}"
    vpy, stamp = venv / "bin" / "python", venv / "scan.sha256"
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs share the venv
        if not vpy.exists():
            subprocess.run([python, "-m", "venv", venv], check=True, timeout=120)
            _pip(vpy, "-e", ".[test]", "numpy>=2")
            stamp.write_text(scan)
        built = subprocess.run([vpy, "-c", "import exporter.traces._scan"], cwd=ROOT).returncode == 0
        if not built or not stamp.exists() or stamp.read_text() != scan:
            _pip(vpy, "--no-deps", "-e", ".")  # a fresh checkout, or _scan.c changed
            stamp.write_text(scan)
    return venv


def _pip(vpy: Path, *args: str) -> None:
    r = subprocess.run([vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.newest_python
def test_unit_tests_pass_on_the_newest_python_with_numpy_2() -> None:
    found = newest_python()
    assert found is not None
    python, version = found
    vpy = _venv(python, version) / "bin" / "python"
    probe = subprocess.run([vpy, "-c", "import numpy, sys; print(sys.version_info[:2] >= (3, 12), numpy.__version__)"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    newer, numpy_version = probe.stdout.split()
    assert newer == "True" and int(numpy_version.split(".")[0]) >= 2, probe.stdout
    r = subprocess.run([vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", SLOW, *UNIT_TESTS],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.search(r"\d+ passed", r.stdout) and "failed" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
