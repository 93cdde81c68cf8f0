"""One background perf_analyzer run against the demo's Triton, so the demo's exporter has
a perf_analyzer CSV to expose next to its other sources."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from ..triton.perf_analyzer import PerfAnalyzerError, perf_analyzer_binary, perf_analyzer_env

# a request rate, not a concurrency: bounded load keeps trace rate 1 far below the
# ~1,000 inferences/s where a traced Triton 2.51 can crash (docs/triton.md)
RATE = 50
MEASUREMENT_MS = 2000


class PerfAnalyzerRun:
    def __init__(self, model: str, http_address: str, csv_path: Path, log_path: Path) -> None:
        self.model, self.http_address = model, http_address
        self.csv_path, self.log_path = csv_path, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = ""

    def command(self) -> list[str]:
        return [str(perf_analyzer_binary()), "-m", self.model, "-u", self.http_address, "-i", "http",
                "-f", str(self.csv_path), "-p", str(MEASUREMENT_MS), "--request-rate-range", str(RATE),
                "--stability-percentage", "100", "--max-trials", "4"]

    def start(self) -> bool:
        """False (and .error says why) where perf_analyzer is not installed."""
        try:
            cmd = self.command()
        except PerfAnalyzerError as e:
            self.error = str(e)
            return False
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=perf_analyzer_env(), start_new_session=True)
        return True

    def finished(self) -> int | None:
        """perf_analyzer's exit code once it ended, else None."""
        return self.proc.poll() if self.proc is not None else None

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
