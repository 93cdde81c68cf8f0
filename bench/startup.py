"""Start-up time of `serve` (not CI): exec to /readyz answering, with eBPF off and on, in
alternation; the difference is the BCC compile (in the compile child). Also the daemon's
RSS once ready. Needs root for --ebpf on.

    .venv/bin/python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.demo.launcher import free_port  # noqa: E402


def one(ebpf: str) -> tuple[float, float]:
    """(seconds from exec to /readyz, VmRSS MB then)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        t0 = time.monotonic()
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "inference-profiler"), "serve", "--triton", "none",
                                 "--ebpf", ebpf, "--listen", f"127.0.0.1:{port}", "--state-dir", state],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"serve --ebpf {ebpf} exited with {proc.returncode}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.01)
            took = time.monotonic() - t0
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:")) / 1024
        finally:
            proc.terminate()
            proc.wait(20)
    return took, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for _ in range(args.runs):
        for ebpf in ("off", "on"):
            runs[ebpf].append(one(ebpf))
    for ebpf, r in runs.items():
        times = [t for t, _ in r]
        print(f"--ebpf {ebpf:3s}: start to /readyz median {statistics.median(times):.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f}); RSS then {statistics.median(m for _, m in r):.1f} MB")
    on, off = (statistics.median(t for t, _ in runs[k]) for k in ("on", "off"))
    print(f"ratio on/off {on / off:.1f}; the BCC compile adds {on - off:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
