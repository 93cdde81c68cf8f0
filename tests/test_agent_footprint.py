"""The daemon's footprint with eBPF on, the socket join too: BCC compiles in a child that hands
the programs over.

BCC (libbcc with clang and LLVM inside) is about 100 MB file-backed and, after a compile,
about 80 MB of anonymous heap. `serve` runs the compile in a short-lived child
(exporter/ebpf/handoff.py), so the daemon never maps libbcc and its resident set is that
of Python, numpy and prometheus_client plus its own data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.ebpf.declaration import metric_programs
from tests.triton_harness import ExporterProcess

pytestmark = pytest.mark.ebpf

RSS_BOUND_MB = 120  # the agent's budget on a node


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/PID/status")


def test_the_daemon_never_maps_bcc_and_stays_in_budget(exporter_factory: Callable[..., ExporterProcess],
                                                       tmp_path: Path) -> None:
    # the socket join's program too (it compiles in the background, after the daemon is ready)
    e = exporter_factory("--triton", "none", "--ebpf", "on", "--wire-join", "on",
                         "--trace-file", str(tmp_path / "trace.json"))
    e.wait_join()
    scrape = e.scrape()
    assert scrape.total("inference_profiler_ebpf_up") == len(metric_programs())  # every program loaded
    mapped = Path(f"/proc/{e.proc.pid}/maps").read_text()
    assert "libbcc" not in mapped and "libLLVM" not in mapped and "libclang" not in mapped
    rss = status_mb(e.proc.pid, "VmRSS")
    assert rss < RSS_BOUND_MB, f"{rss:.0f} MB resident after start"
    # the compile child is gone: nothing of it is left running beside the daemon
    children = Path(f"/proc/{e.proc.pid}/task/{e.proc.pid}/children").read_text().split()
    assert children == []
