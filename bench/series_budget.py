"""What the exporter costs Prometheus in series, classic and native, on real parts.

Two `inference-profiler serve` processes are scraped by two real Prometheus servers at once:
one as it runs by default (classic histograms), one with --enable-feature=native-histograms
(it asks for the protobuf format and keeps one series per histogram). Reported per mode:
prometheus_tsdb_head_series (the Prometheus' own figure) and the series of each job.

- traces: 50 models served over HTTP and gRPC, trace files only (no eBPF, no Triton endpoints),
  synthetic files shaped like Triton 2.51's (tests/tracegen.py).
- ebpf (root, BPF, iproute2, cgroup v2): two "Triton pods" laid out as kubelet + containerd do
  (a cgroup scope and a /var/log/containers link each, own network namespace), each serving
  both watched ports; --kubernetes on labels the series with the pod. Series are counted per pod.

Targets (issue 20): native <= 2,500 head series for the traces case; classic eBPF <= 500
series per Triton pod with the default --ebpf-buckets.

    .venv/bin/python bench/series_budget.py [--models 50] [--ebpf-buckets 20] [--no-ebpf]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.demo.launcher import free_port
from exporter.ebpf.pods import cgroup_v2_mount
from tests import tracegen
from tests.test_dashboards_e2e import Prometheus
from tests.test_ebpf_pods import SERVER, FakePod, _needs_root_ip_and_cgroup_v2
from tests.triton_harness import ExporterProcess


def trace_file(path: Path, models: int, per_pair: int) -> int:
    """Every model over HTTP and gRPC, per_pair traces each; returns the number of traces."""
    rng = random.Random(1)
    objs: list[str] = []
    tid, t0 = 1, 400_000_000_000
    for m in range(models):
        for protocol in ("http", "grpc"):
            for _ in range(per_pair):
                t0 += rng.randint(100_000, 3_000_000)
                objs += tracegen.trace_objects(tid, rng, t0, f"model_{m:02d}", protocol)
                tid += 1
    tracegen.write_file(str(path), objs)
    return tid - 1


class TwoPortPod(FakePod):
    """A FakePod serving a second port as well, in the same cgroup and network namespace."""

    def __init__(self, mount: Path, log_dir: Path, name: str, ports: tuple[int, int]) -> None:
        super().__init__(mount, log_dir, name, ports[0])
        self.second = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-c", SERVER,
                                        str(ports[1])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.second.stdout is not None and self.second.stdout.readline() == "ready\n"
        (self.dirs[-1] / "cgroup.procs").write_text(str(self.second.pid))
        assert self.second.stdin is not None
        self.second.stdin.write("go\n")
        self.second.stdin.flush()

    def remove(self) -> None:
        if self.second.poll() is None:
            self.second.kill()
            self.second.wait()
        super().remove()


def series_by(prom: Prometheus, expr: str) -> dict[str, float]:
    return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())) or "all": float(r["value"][1])
            for r in prom.api("query", query=expr)["result"]}


def head_series(prom: Prometheus) -> int:
    with urllib.request.urlopen(prom.url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("prometheus_tsdb_head_series "):
                return int(float(line.split()[1]))
    raise AssertionError("no prometheus_tsdb_head_series")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--traces-per-pair", type=int, default=20, help="traces per model and protocol")
    ap.add_argument("--ebpf-buckets", type=int, default=20, help="the exporter's --ebpf-buckets (0: every kernel bucket)")
    ap.add_argument("--no-ebpf", action="store_true", help="the traces case only")
    args = ap.parse_args()
    why = None if not args.no_ebpf else "--no-ebpf"
    why = why or _needs_root_ip_and_cgroup_v2()
    work = Path(tempfile.mkdtemp(prefix="series-budget-"))
    procs: list[Any] = []
    pods: list[TwoPortPod] = []
    mount = cgroup_v2_mount("/sys/fs/cgroup")
    try:
        n = trace_file(work / "trace.json", args.models, args.traces_per_pair)
        jobs: dict[str, int] = {}
        port = jobs["traces"] = free_port()
        procs.append(ExporterProcess(["--trace-file", str(work / "trace.json"), "--state-dir", str(work / "state"),
                                      "--listen", f"127.0.0.1:{port}", "--triton", "none", "--ebpf", "off"],
                                     work, port))
        ports = (21000 + os.getpid() % 9000, 31000 + os.getpid() % 9000)
        if why is None and mount is not None:
            log_dir = work / "containers"
            log_dir.mkdir()
            pods = [TwoPortPod(mount, log_dir, f"triton-{c}", ports) for c in "ab"]
            port = jobs["ebpf"] = free_port()
            procs.append(ExporterProcess(
                ["--state-dir", str(work / "state-ebpf"), "--listen", f"127.0.0.1:{port}", "--triton", "none",
                 "--ebpf", "on", "--ebpf-port", str(ports[0]), "--ebpf-port", str(ports[1]), "--kubernetes", "on",
                 "--container-log-dir", str(log_dir), "--ebpf-buckets", str(args.ebpf_buckets)], work, port))
        for p in procs:
            p.wait_ready(60)
        procs[0].wait_for(lambda s: s.total("inference_profiler_traces_total") >= n, timeout=120)
        for pod in pods:
            for p in ports:
                pod.exchanges(p, 200)
        cfg = {"global": {"scrape_interval": "5s"},
               "scrape_configs": [{"job_name": job, "scrape_timeout": "5s", "honor_labels": True,
                                   "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                                  for job, port in jobs.items()]}
        proms = {}
        for mode in ("classic", "native"):
            d = work / mode
            d.mkdir()
            (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
            proms[mode] = Prometheus(d / "prometheus.yml", d, native=mode == "native")
            procs.append(proms[mode])
        time.sleep(16)  # a few scrapes of every job
        print(f"{args.models} models x http, grpc: {n} traces; eBPF: "
              f"{'2 pods x ports ' + str(ports) + f', --ebpf-buckets {args.ebpf_buckets}' if pods else 'not run: ' + str(why)}")
        print(f"{'mode':8} {'head series':>12} {'traces job':>11} {'ebpf job':>9}  eBPF series per pod")
        for mode, prom in proms.items():
            per_job = series_by(prom, "count by (job) ({__name__=~'.+'})")
            per_pod = series_by(prom, "count by (pod) ({job='ebpf'})") if pods else {}
            print(f"{mode:8} {head_series(prom):12d} {per_job.get('job=traces', 0):11.0f} "
                  f"{per_job.get('job=ebpf', 0):9.0f}  " + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(per_pod.items())))
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                p.stop()
        for pod in pods:
            with contextlib.suppress(Exception):
                pod.remove()
        if mount is not None:
            for d in (mount / "kubepods.slice" / "kubepods-burstable.slice", mount / "kubepods.slice"):
                with contextlib.suppress(OSError):
                    d.rmdir()


if __name__ == "__main__":
    main()
