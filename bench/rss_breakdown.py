"""Where the exporter's RSS goes (not CI): imports step by step, the BCC compile, then what
BPF.free_bcc_memory() and malloc_trim(0) give back; then, in a fresh process, the way serve
loads: a compile child hands the attached programs over (exporter/ebpf/handoff.py) and this
process never maps BCC. Needs root (loads the BPF programs).

    sudo .venv/bin/python bench/rss_breakdown.py             # all programs of bpf/
    sudo .venv/bin/python bench/rss_breakdown.py tcp_messages    # only these
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def memory() -> str:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return f"RSS {fields['VmRSS']:6.1f} MB (anonymous {fields['RssAnon']:6.1f}, file-backed {fields['RssFile']:6.1f})"


def step(name: str) -> None:
    print(f"{name:42s} {memory()}", flush=True)


def handoff() -> int:
    step("python")
    import numpy  # noqa: F401
    import prometheus_client  # noqa: F401

    import exporter.cli
    import exporter.daemon  # noqa: F401
    step("+ numpy, prometheus_client, exporter")
    from exporter.ebpf import handoff
    from exporter.ebpf.declaration import metric_programs

    decls = [d for d in metric_programs() if not sys.argv[2:] or d.program in sys.argv[2:]]
    t0 = time.monotonic()
    problem, loaded = handoff.load_in_child(decls, [8000, 8001])
    ok = [r for r in loaded if isinstance(r, handoff.HandedProgram)]
    step(f"+ {len(ok)} programs handed over in {time.monotonic() - t0:.1f} s")
    print(f"libbcc mapped here: {'libbcc' in Path('/proc/self/maps').read_text()}; {problem or ''}")
    for r in ok:
        r.close()
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--handoff"]:
        return handoff()
    step("python")
    import numpy  # noqa: F401
    import prometheus_client  # noqa: F401
    step("+ numpy, prometheus_client")
    import exporter.cli
    import exporter.daemon  # noqa: F401
    step("+ exporter modules")
    import tritonclient.grpc
    import tritonclient.http  # noqa: F401
    step("+ tritonclient http, grpc")
    import bcc  # noqa: F401
    step("+ import bcc")
    from exporter.ebpf.declaration import metric_programs
    from exporter.ebpf.loader import LoadError, load_programs

    decls = [d for d in metric_programs() if not sys.argv[1:] or d.program in sys.argv[1:]]
    t0 = time.monotonic()
    loaded = load_programs(decls, [8000, 8001], "auto")
    failed = [r for r in loaded if isinstance(r, LoadError)]
    step(f"+ {len(decls) - len(failed)} programs loaded in {time.monotonic() - t0:.1f} s")
    ok = [r for r in loaded if not isinstance(r, LoadError)]
    if ok:
        ok[0].bpf.free_bcc_memory()  # libbcc-wide (bcc_free_memory), reached through any BPF object
        step("+ BPF.free_bcc_memory()")
    ctypes.CDLL(None).malloc_trim(0)
    step("+ malloc_trim(0)")
    for r in failed:
        print(f"not loaded: {r}")
    print("\nas serve loads them (compile child, handoff), in a fresh process:", flush=True)
    import subprocess

    return subprocess.run([sys.executable, __file__, "--handoff", *sys.argv[1:]]).returncode


if __name__ == "__main__":
    sys.exit(main())
