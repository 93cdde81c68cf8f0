"""Running the perf_analyzer binary that scripts/setup.sh provisions into the venv.

The binary comes from tritonclient 2.41.1's wheel and needs libb64/libcudart, which
setup.sh links from the Triton wheel's bundled libraries into <venv>/opt/perf_analyzer/lib.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


class PerfAnalyzerError(Exception):
    """perf_analyzer is missing or its run failed; the message says which and shows its output tail."""


def perf_analyzer_home() -> Path:
    return Path(sys.prefix) / "opt" / "perf_analyzer"


def perf_analyzer_binary() -> Path:
    binary = perf_analyzer_home() / "perf_analyzer"
    if not os.access(binary, os.X_OK):
        raise PerfAnalyzerError(f"no perf_analyzer at {binary}; run scripts/setup.sh")
    return binary


def perf_analyzer_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = [str(perf_analyzer_home() / "lib")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    return env


# Failures of perf_analyzer 2.41 that a second run does not repeat: no stable measurement on a
# busy machine, and a worker thread losing its inputs ("unknown request input name INPUT0").
RETRYABLE = ("Failed to obtain stable measurement", "Failed to maintain requested inference load")


def run_perf_analyzer(model: str, url: str, csv_path: str | os.PathLike[str], *,
                      concurrency_range: str = "2:4:2", protocol: str = "http",
                      measurement_ms: int = 1000, extra: Sequence[str] = (), timeout: float = 120.0,
                      attempts: int = 3) -> str:
    """Run perf_analyzer against `url` (host:port) writing `-f csv_path`; returns its stdout.

    With the add_sub example model perf_analyzer 2.41 fails at concurrency 1 ("input
    'INPUT1' does not exist"), so the default range starts at 2. On a busy machine it
    may find no stable measurement, and a worker thread sometimes loses its inputs; those
    failures alone are retried (`attempts` runs).
    """
    cmd = [str(perf_analyzer_binary()), "-m", model, "-u", url, "-i", protocol,
           "-f", str(csv_path), "-p", str(measurement_ms), *extra]
    if not any(a.startswith(("--concurrency-range", "--request-rate-range", "--request-intervals")) for a in extra):
        cmd += ["--concurrency-range", concurrency_range]
    for attempt in range(1, attempts + 1):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=perf_analyzer_env(),
                               stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerError(f"perf_analyzer did not finish within {timeout:.0f}s: {' '.join(cmd)}") from None
        if r.returncode == 0:
            return r.stdout
        output = r.stdout + r.stderr
        if not any(m in output for m in RETRYABLE) or attempt == attempts:
            tail = "\n".join(output.strip().splitlines()[-10:])
            raise PerfAnalyzerError(f"perf_analyzer exited with {r.returncode}: {' '.join(cmd)}\n{tail}")
    raise AssertionError("unreachable")
