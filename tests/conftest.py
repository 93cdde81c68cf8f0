"""Shared test setup: real parts (Triton, eBPF, Prometheus, a newer CPython, podman) are required where
the machine can.

A test marked `triton`, `ebpf`, `prometheus`, `newest_python`, `podman` or `helm` is skipped only when the machine truly
cannot run it, with the reason; with INFPROF_REQUIRE=all (as .ci/run sets) such a
skip is a failure instead, so CI cannot pass by skipping the real tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# real-Triton fixtures (triton_server, triton_factory, exporter_factory)
pytest_plugins = ["tests.triton_harness"]

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "samples"  # real Triton 2.51 output (see its README)
ROLLING_TRACES = SAMPLES / "triton-2.51" / "rolling-traces"


def _triton() -> str | None:
    try:
        import pytriton  # noqa: F401
    except ImportError:
        return "the nvidia-pytriton wheel is not installed (run scripts/setup.sh)"
    binary = Path(sys.modules["pytriton"].__file__ or "").parent / "tritonserver" / "bin" / "tritonserver"
    if not binary.exists():
        return f"no tritonserver binary at {binary}"
    return None


def _ebpf() -> str | None:
    if os.geteuid() != 0:
        return "loading BPF programs needs root (CAP_BPF/CAP_PERFMON)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC python bindings missing (python3-bpfcc; run scripts/setup.sh)"
    if not Path(f"/lib/modules/{os.uname().release}/build").exists():
        return "no kernel headers for BCC (run scripts/setup.sh)"
    if not Path("/sys/kernel/tracing/events").exists() and not Path("/sys/kernel/debug/tracing/events").exists():
        return "tracefs not mounted"
    return None


def _prometheus() -> str | None:
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        return "prometheus/promtool not installed (apt package prometheus; run scripts/setup.sh)"
    return None


def python_version(python: str) -> tuple[int, int] | None:
    try:
        r = subprocess.run([python, "-c", "import sys, venv; print(*sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return (int(r.stdout.split()[0]), int(r.stdout.split()[1])) if r.returncode == 0 else None


def newest_python() -> tuple[str, tuple[int, int]] | None:
    """The newest CPython with venv on this machine (PATH and pyenv's versions), if newer than ours."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = [str(p) for p in sorted(pyenv.glob("3.*/bin/python3"))]
    found += [w for n in range(11, 30) if (w := shutil.which(f"python3.{n}")) and "/shims/" not in w]
    versions = [(v, p) for p in found if (v := python_version(p)) is not None]
    best = max(versions, default=None)
    return (best[1], best[0]) if best and best[0] > sys.version_info[:2] else None


def _newest_python() -> str | None:
    if newest_python() is None:
        return f"no CPython newer than {sys.version_info[0]}.{sys.version_info[1]} on this machine"
    return None


def _helm() -> str | None:
    found = newest_python()
    if found is None or found[1] < (3, 12):
        return "helm-sdkpy (Helm's engine) needs CPython >= 3.12 (pyenv install 3.12)"
    return None


def _podman() -> str | None:
    if os.geteuid() != 0:
        return "building and running the image with podman needs root here"
    absent = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if absent:
        return f"{', '.join(absent)} not installed (run scripts/setup.sh)"
    return None


CAPABILITIES = {"triton": _triton, "ebpf": _ebpf, "prometheus": _prometheus, "newest_python": _newest_python,
                "podman": _podman, "helm": _helm}
_cache: dict[str, str | None] = {}


def missing(capability: str) -> str | None:
    if capability not in _cache:
        _cache[capability] = CAPABILITIES[capability]()
    return _cache[capability]


def pytest_runtest_setup(item: pytest.Item) -> None:
    required = {s.strip() for s in os.environ.get("INFPROF_REQUIRE", "").split(",") if s.strip()}
    for cap in CAPABILITIES:
        if item.get_closest_marker(cap) is None:
            continue
        why = missing(cap)
        if why is None:
            continue
        if "all" in required or cap in required:
            pytest.fail(f"{cap} required here (INFPROF_REQUIRE) but unavailable: {why}", pytrace=False)
        pytest.skip(f"{cap} unavailable: {why}")


@pytest.fixture
def samples() -> Path:
    return SAMPLES
