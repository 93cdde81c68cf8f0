"""The daemon's memory after BCC's compile: the heap the compile freed goes back to the kernel.

Without that (glibc keeps freed heap), `serve --ebpf on` holds about 160 MB of anonymous memory
for its whole life; with it about 70 MB. File-backed pages (libbcc with its LLVM, numpy) are
shared and reclaimable, so the bound is on anonymous memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.ebpf.declaration import metric_programs
from tests.triton_harness import ExporterProcess

pytestmark = pytest.mark.ebpf

ANON_BOUND_MB = 120


def rss_anon_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/PID/status")


def test_anonymous_memory_after_the_bcc_compile_is_bounded(exporter_factory: Callable[..., ExporterProcess]) -> None:
    e = exporter_factory("--triton", "none", "--ebpf", "on")
    assert e.scrape().total("inference_profiler_ebpf_up") == len(metric_programs())  # every program loaded
    anon = rss_anon_mb(e.proc.pid)
    assert anon < ANON_BOUND_MB, f"{anon:.0f} MB of anonymous memory after start"
