"""Per-pod labels on eBPF series: cgroup id -> cgroup path -> container id -> pod.

The pure parts (layouts, log link names, the resolver's cache and expiry) run on temp
dirs; the real test builds two "pods" on this node as kubelet + containerd would (a
cgroup v2 scope each, a /var/log/containers-style link each), runs a server on the SAME
port in each pod's own network namespace, and counts their exchanges apart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.config import Config, ConfigError
from exporter.ebpf.pods import (
    NO_POD,
    PodResolver,
    cgroup_v2_mount,
    container_id,
    container_logs,
    pod_resolver,
)
from exporter.ebpf.source import EbpfSource
from exporter.source import ErrorCounts
from tests.triton_harness import Scrape

CID = "0123456789abcdef" * 4
POD_UID = "5f0c8a1e-7d2b-4c39-9a61-2b8e4f7d1c03"


@pytest.mark.parametrize("path", [
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/"
    f"cri-containerd-{CID}.scope",
    f"/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/crio-{CID}.scope",
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice/"
    f"docker-{CID}.scope",
    f"/kubepods/burstable/pod{POD_UID}/{CID}",
    f"/kubepods/burstable/pod{POD_UID}/crio-{CID}",
    f"/kubepods/pod{POD_UID}/{CID}",
])
def test_container_id_of_each_kubelet_layout(path: str) -> None:
    assert container_id(path) == CID


@pytest.mark.parametrize("path", [
    "/", "/system.slice/containerd.service", f"/system.slice/docker-{CID}.scope",  # a container, not a pod's
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice",
    f"/kubepods.slice/kubepods-burstable.slice/crio-conmon-{CID}.scope",
])
def test_paths_outside_a_pod_container_have_no_container_id(path: str) -> None:
    assert container_id(path) == ""


def test_container_logs_parse_kubelet_link_names() -> None:
    names = [f"triton-7d9f-x2x_inference_server-{CID}.log", "stray.log", f"a_b_c-{CID[:12]}.log"]
    assert container_logs(names) == {CID: ("inference", "triton-7d9f-x2x", "server")}


def test_cgroup_v2_mount_finds_unified_on_a_hybrid_host(tmp_path: Path) -> None:
    assert cgroup_v2_mount(str(tmp_path)) is None
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    assert cgroup_v2_mount(str(tmp_path)) == tmp_path / "unified"
    (tmp_path / "cgroup.controllers").write_text("")
    assert cgroup_v2_mount(str(tmp_path)) == tmp_path


def test_kubernetes_auto_is_off_without_the_log_dir_and_on_fails_in_one_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "none")
    assert pod_resolver(Config(kubernetes="auto", container_log_dir=missing)) is None
    with pytest.raises(ConfigError, match=r"container log dir .* does not exist"):
        pod_resolver(Config(kubernetes="on", container_log_dir=missing))
    with pytest.raises(ConfigError, match="no cgroup v2 hierarchy"):
        pod_resolver(Config(kubernetes="on", container_log_dir=str(tmp_path), cgroup_root=str(tmp_path)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_resolver_names_caches_and_sees_a_pod_go(tmp_path: Path) -> None:
    mount, logs = tmp_path / "cg", tmp_path / "logs"
    scope = mount / "kubepods" / f"pod{POD_UID}" / CID
    scope.mkdir(parents=True)
    logs.mkdir()
    clock = Clock()
    r = PodResolver(mount, logs, refresh_seconds=10, clock=clock)
    cg = scope.stat().st_ino
    assert r.labels(cg) == NO_POD, "no link yet"
    (logs / f"web-1_shop_app-{CID}.log").symlink_to("/nonexistent")
    assert r.labels(cg) == NO_POD, "the log dir is listed again only after the refresh interval"
    clock.now += 10
    assert r.labels(cg) == ("shop", "web-1", "app")
    assert r.labels(mount.stat().st_ino) == NO_POD, "the root cgroup is outside any pod"
    assert r.gone_since(cg) is None
    scope.rmdir()
    clock.now += 1
    assert r.gone_since(cg) == clock.now
    assert r.labels(cg) == ("shop", "web-1", "app"), "a gone pod keeps its name until forgotten"
    clock.now += 5
    assert r.gone_since(cg) == clock.now - 5
    r.forget(cg)
    assert r.labels(cg) == NO_POD


# --- two pods on this node, for real ------------------------------------------------

SERVER = r"""
import socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen()
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()  # moved into its cgroup: serve
while True:
    c, _ = ls.accept()
    while True:
        got = b""
        while len(got) < 100:
            chunk = c.recv(100 - len(got))
            if not chunk:
                break
            got += chunk
        if len(got) < 100:
            c.close(); break
        c.sendall(b"r" * 1000)
"""

CLIENT = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
for _ in range(n):
    s.sendall(b"q" * 100)
    got = 0
    while got < 1000:
        got += len(s.recv(1000 - got))
s.close()
"""


def _needs_root_ip_and_cgroup_v2() -> str | None:
    if os.geteuid() != 0:
        return "needs root (cgroups, network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if cgroup_v2_mount("/sys/fs/cgroup") is None:
        return "no cgroup v2 hierarchy at /sys/fs/cgroup"
    return None


class FakePod:
    """A pod as kubelet + containerd lay it out: cgroup scope, log link, its own netns and a server."""

    def __init__(self, mount: Path, log_dir: Path, name: str, port: int) -> None:
        self.name = name
        self.cid = uuid.uuid4().hex + uuid.uuid4().hex
        uid = str(uuid.uuid4()).replace("-", "_")
        self.dirs = [mount / "kubepods.slice", mount / "kubepods.slice" / "kubepods-burstable.slice"]
        self.dirs.append(self.dirs[-1] / f"kubepods-burstable-pod{uid}.slice")
        self.dirs.append(self.dirs[-1] / f"cri-containerd-{self.cid}.scope")
        for d in self.dirs:
            d.mkdir(exist_ok=True)
        self.link = log_dir / f"{name}_infprof-test_server-{self.cid}.log"
        self.link.symlink_to(f"/var/log/pods/infprof-test_{name}_{uid}/server/0.log")
        self.netns = f"infprof-{name}-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        self.server = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-c", SERVER, str(port)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None and self.server.stdout.readline() == "ready\n"
        # `ip netns exec` execs the server: the pid is the server's own
        (self.dirs[-1] / "cgroup.procs").write_text(str(self.server.pid))
        assert self.server.stdin is not None
        self.server.stdin.write("go\n")
        self.server.stdin.flush()

    def exchanges(self, port: int, n: int) -> None:
        subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c", CLIENT, str(port), str(n)],
                       check=True, timeout=60)

    def remove(self) -> None:
        if self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        self.link.unlink(missing_ok=True)
        for d in (self.dirs[-1], self.dirs[-2]):
            if d.exists():
                _rmdir_retry(d)
        subprocess.run(["ip", "netns", "del", self.netns], check=False)


def _rmdir_retry(d: Path) -> None:
    """rmdir of a cgroup: EBUSY until the kernel has reaped its last process."""
    for _ in range(100):
        try:
            d.rmdir()
            return
        except OSError:
            time.sleep(0.02)
    d.rmdir()


@pytest.fixture
def two_pods(tmp_path: Path) -> Iterator[tuple[Path, list[FakePod], int]]:
    why = _needs_root_ip_and_cgroup_v2()
    if why:
        pytest.skip(why)
    mount = cgroup_v2_mount("/sys/fs/cgroup")
    assert mount is not None
    log_dir = tmp_path / "containers"
    log_dir.mkdir()
    port = 20000 + os.getpid() % 20000
    pods: list[FakePod] = []
    try:
        pods.append(FakePod(mount, log_dir, "triton-a", port))
        pods.append(FakePod(mount, log_dir, "triton-b", port))
        yield log_dir, pods, port
    finally:
        for p in pods:
            p.remove()
        for d in (mount / "kubepods.slice" / "kubepods-burstable.slice", mount / "kubepods.slice"):
            with contextlib.suppress(OSError):  # another test's pods (or the real kubelet's) are still there
                d.rmdir()


def scrape(src: EbpfSource) -> Scrape:
    reg = CollectorRegistry(auto_describe=False)
    for c in src.collectors():
        reg.register(c)
    return Scrape(generate_latest(reg).decode())


def latency_counts(s: Scrape, port: int) -> dict[tuple[str, str], float]:
    """(role, pod) -> tcp_latency_seconds_count on `port`."""
    out: dict[tuple[str, str], float] = {}
    for lab, v in s.select("inference_profiler_tcp_latency_seconds_count", port=str(port)):
        out[(lab["role"], lab["pod"])] = out.get((lab["role"], lab["pod"]), 0) + v
    return out


@pytest.mark.ebpf
def test_two_pods_on_one_port_are_separate_series_and_a_gone_pod_is_dropped(
        two_pods: tuple[Path, list[FakePod], int]) -> None:
    log_dir, (a, b), port = two_pods
    forget = 1.0
    cfg = Config(ebpf="on", ebpf_port=[port], kubernetes="on", container_log_dir=str(log_dir),
                 cgroup_root="/sys/fs/cgroup", kubernetes_refresh_seconds=0.2, kubernetes_forget_seconds=forget)
    src = EbpfSource(cfg, ErrorCounts())
    try:
        src.start()
        n1, n2 = 37, 53
        threads = [threading.Thread(target=a.exchanges, args=(port, n1)),
                   threading.Thread(target=b.exchanges, args=(port, n2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        s = scrape(src)
        counts = latency_counts(s, port)
        assert counts[("server", "triton-a")] == n1
        assert counts[("server", "triton-b")] == n2
        # the clients run outside both cgroups: their side carries empty pod labels
        assert counts[("client", "")] == n1 + n2
        # segment-level series (softirq) take the pod of the socket they arrive on
        for pod, n in (("triton-a", n1), ("triton-b", n2)):
            assert s.total("inference_profiler_tcp_srtt_seconds_count", port=str(port), pod=pod) >= n - 1
        sample = s.select("inference_profiler_tcp_latency_seconds_count", port=str(port), pod="triton-a")[0][0]

        assert (sample["namespace"], sample["container"]) == ("infprof-test", "server")

        a.remove()
        deadline = time.monotonic() + forget + 10 * cfg.kubernetes_refresh_seconds + 2
        while ("server", "triton-a") in latency_counts(scrape(src), port):
            assert time.monotonic() < deadline, "the gone pod's series outlived --kubernetes-forget-seconds"
            time.sleep(0.1)
        counts = latency_counts(scrape(src), port)
        assert counts[("server", "triton-b")] == n2, "the other pod keeps its series"
        assert counts[("client", "")] == n1 + n2, "series outside any pod never go backwards"
    finally:
        src.stop()


class FakeMap:
    """The `metrics` map of a loaded program, as GonePods uses it: read and delete series."""

    def __init__(self, series: dict[tuple[int, ...], tuple[int, int]]) -> None:
        self.series = series

    def read_series(self) -> dict[tuple[int, ...], tuple[int, int]]:
        return dict(self.series)

    def delete_series(self, keys: list[tuple[int, ...]]) -> None:
        for k in keys:
            self.series.pop(k, None)


def test_gone_cgroups_leave_the_kernel_map_and_no_counter_goes_backwards(tmp_path: Path) -> None:
    """A restarted container (same pod labels, new cgroup) and a gone non-pod cgroup keep their
    counts under their labels; a gone pod's series go after the forget time, from the map too."""
    from exporter.ebpf.collector import ProgramState, metric_families
    from exporter.ebpf.declaration import metric_key, metric_programs
    from exporter.ebpf.source import GonePods

    mount, logs = tmp_path / "cg", tmp_path / "logs"
    logs.mkdir()
    cids = {name: uuid.uuid4().hex + uuid.uuid4().hex for name in ("old", "new", "other")}
    scopes = {}
    for name, cid in cids.items():
        pod = "web-0" if name in ("old", "new") else "db-0"
        scopes[name] = mount / "kubepods" / f"pod{uuid.uuid4()}" / cid
        scopes[name].mkdir(parents=True)
        (logs / f"{pod}_shop_app-{cid}.log").symlink_to("/nonexistent")
    scopes["host"] = mount / "system.slice" / "cron.service"
    scopes["host"].mkdir(parents=True)
    clock = Clock()
    pods = PodResolver(mount, logs, refresh_seconds=0, clock=clock)
    ids = {name: d.stat().st_ino for name, d in scopes.items()}
    d = next(d for d in metric_programs() if d.program == "tcp_messages")
    names = metric_key().names

    def key(cgroup: int) -> tuple[int, ...]:
        raw = {"metric": 3, "role": 0, "port": 8000, "direction": 0, "bucket": 0, "cgroup": cgroup}
        return tuple(raw[n] for n in names)

    fake = FakeMap({key(ids[n]): (v, 0) for n, v in (("old", 2), ("new", 3), ("other", 5), ("host", 7))})
    state = ProgramState(d, fake)  # type: ignore[arg-type]
    gone = GonePods([state], pods, threading.Lock(), forget_seconds=60)

    def exposed() -> dict[str, float]:
        series = dict(state.retired)
        for k, (n, s) in fake.read_series().items():
            n0, s0 = series.get(k, (0, 0))
            series[k] = (n0 + n, s0 + s)
        fams = {f.name: f for f in metric_families(d, series, pods=pods.labels)}
        return {s.labels["pod"]: s.value for s in fams["inference_profiler_tcp_bytes"].samples
                if s.name.endswith("_total")}

    assert exposed() == {"web-0": 5, "db-0": 5, "": 7}
    graveyard = tmp_path / "removed"  # out of the mount, yet holding its inode: ids are never reused in cgroupfs
    graveyard.mkdir()

    def remove(d: Path) -> None:
        d.rename(graveyard / uuid.uuid4().hex)

    for name in ("old", "other", "host"):
        remove(scopes[name])
    gone.sweep()
    clock.now += 59
    gone.sweep()
    assert len(fake.series) == 4, "nothing is forgotten before --kubernetes-forget-seconds"
    clock.now += 1
    gone.sweep()
    assert set(fake.series) == {key(ids["new"])}, "every gone cgroup left the kernel map"
    assert exposed() == {"web-0": 5, "": 7}, "the restarted container and the host keep their counts; db-0 is gone"
    assert set(state.retired) == {key(ids["old"]), key(0)}

    # web-0 restarts again: "new" goes, "newer" runs; new's counts join the pod's anchor (old)
    newer_cid = uuid.uuid4().hex + uuid.uuid4().hex
    newer = scopes["new"].parent / newer_cid
    newer.mkdir()
    (logs / f"web-0_shop_app-{newer_cid}.log").symlink_to("/nonexistent")
    fake.series[key(newer.stat().st_ino)] = (11, 0)
    remove(scopes["new"])
    gone.sweep()
    clock.now += 60
    gone.sweep()
    assert set(state.retired) == {key(ids["old"]), key(0)}, "restarts do not grow the retired series"
    assert exposed() == {"web-0": 16, "": 7}

    # the pod goes: all its series go, from the kernel map and from user space
    remove(newer)
    gone.sweep()
    clock.now += 60
    gone.sweep()
    assert fake.series == {} and set(state.retired) == {key(0)}
    assert exposed() == {"": 7}


@pytest.mark.ebpf
def test_check_loads_the_programs_with_pod_labels_as_serve_does(tmp_path: Path) -> None:
    from exporter.ebpf.check import ebpf_checks

    why = _needs_root_ip_and_cgroup_v2()
    if why:
        pytest.skip(why)
    (tmp_path / f"web-0_shop_app-{CID}.log").symlink_to("/nonexistent")
    cfg = Config(ebpf="on", kubernetes="on", container_log_dir=str(tmp_path), ebpf_port=[29999])
    results = {r.name: r for r in ebpf_checks(cfg)}
    assert results["pod labels"].status == "pass" and "1 container link(s)" in results["pod labels"].detail
    assert results["ebpf tcp_messages"].status == "pass"
    off = {r.name: r for r in ebpf_checks(Config(ebpf="on", kubernetes="off", ebpf_port=[29999]))}
    assert off["pod labels"].detail.startswith("off (--kubernetes off)")
