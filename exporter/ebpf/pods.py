"""Which pod owns a cgroup, from the node's own files: no API server.

cgroup id (the kernel's bpf_get_current_cgroup_id()) -> cgroup directory (its inode
number under the cgroup v2 mount is the id) -> container id (the last directories of
that path, as kubelet with containerd, CRI-O or Docker lays them out, systemd or cgroupfs
driver) -> namespace, pod, container (the kubelet's /var/log/containers links, named
<pod>_<namespace>_<container>-<container id>.log).

Lookups are cached; an id not found is looked up again at most once per refresh
interval. A cgroup that no longer exists is "gone": `gone_since` says since when, and
the eBPF source deletes its series once it has been gone for the configured time.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ConfigError

log = logging.getLogger("ebpf")
NO_POD = ("", "", "")  # the labels of a socket outside any pod

# the container scope/directory of each layout; the id is 64 hex digits in all of them
_CONTAINER_DIR = re.compile(
    r"^(?:(?:cri-containerd|crio|docker)-(?P<scoped>[0-9a-f]{64})(?:\.scope)?|(?P<bare>[0-9a-f]{64}))$"
)
_POD_DIR = re.compile(r"^(?:kubepods-(?:[a-z]+-)?pod[0-9a-f_]+\.slice|pod[0-9a-f-]+)$")
# <pod>_<namespace>_<container>-<id>.log: pod, namespace and container names have no "_"
_LOG_LINK = re.compile(r"^(?P<pod>[^_]+)_(?P<namespace>[^_]+)_(?P<container>[^_]+)-(?P<id>[0-9a-f]{64})\.log$")


def cgroup_v2_mount(root: str) -> Path | None:
    """The cgroup v2 hierarchy at `root`, or its `unified` child on a hybrid host; None if neither."""
    for candidate in (Path(root), Path(root) / "unified"):
        if (candidate / "cgroup.controllers").is_file():
            return candidate
    return None


def container_id(cgroup_path: str) -> str:
    """The container id of a kubelet-made cgroup path ('' when the path is not a container's).

    systemd driver: kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
    cri-containerd-<id>.scope (crio-<id>.scope, docker-<id>.scope); cgroupfs driver:
    kubepods/burstable/pod<uid>/<id> (CRI-O: .../crio-<id>). The directory above the container
    must be its pod's.
    """
    parts = [p for p in cgroup_path.split("/") if p]
    if len(parts) < 2 or not any(p.startswith("kubepods") for p in parts):
        return ""
    m = _CONTAINER_DIR.match(parts[-1])
    if m is None or not _POD_DIR.match(parts[-2]):
        return ""
    return m.group("scoped") or m.group("bare")


def container_logs(names: list[str]) -> dict[str, tuple[str, str, str]]:
    """container id -> (namespace, pod, container) from the names of the kubelet's log links."""
    out: dict[str, tuple[str, str, str]] = {}
    for name in names:
        m = _LOG_LINK.match(name)
        if m is not None:
            out[m.group("id")] = (m.group("namespace"), m.group("pod"), m.group("container"))
    return out


def walk_cgroups(mount: Path) -> Iterator[tuple[int, str]]:
    """(cgroup id, path below the mount) of every cgroup, the root ("") first; kernfs gives the ids."""
    try:
        yield os.stat(mount).st_ino, ""
    except OSError:
        return
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(mount / rel if rel else mount))
        except OSError:  # removed while walking
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                child = f"{rel}/{e.name}" if rel else e.name
                yield e.inode(), child
                stack.append(child)


@dataclass
class PodResolver:
    """cgroup id -> (namespace, pod, container), cached; NO_POD outside any pod or when unknown."""

    mount: Path
    log_dir: Path
    refresh_seconds: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _paths: dict[int, str] = field(default_factory=dict)  # cgroup id -> path, from the last walk
    _pods: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # container id -> labels
    _walked: float = float("-inf")
    _listed: float = float("-inf")
    _gone: dict[int, float] = field(default_factory=dict)  # cgroup id -> when first seen missing
    _named: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # kept until forget()

    def labels(self, cgroup: int) -> tuple[str, str, str]:
        if cgroup == 0:
            return NO_POD
        named = self._named.get(cgroup)
        if named is not None:  # a pod's name outlives its cgroup: its series keep their labels
            return named
        path = self._path(cgroup)
        cid = container_id(path) if path is not None else ""
        if not cid:
            return NO_POD
        if cid not in self._pods and self._due(self._listed):
            self._list_logs()
        named = self._pods.get(cid)
        if named is None:  # no link yet: asked again after the next listing
            return NO_POD
        self._named[cgroup] = named
        return named

    def gone_since(self, cgroup: int) -> float | None:
        """When the cgroup was first seen missing (by this resolver's clock); None while it exists."""
        if cgroup == 0:
            return None
        path = self._paths.get(cgroup)
        if path is not None and self._exists(cgroup, path):
            self._gone.pop(cgroup, None)
            return None
        if path is None and self._due(self._walked):
            self._walk()
            if cgroup in self._paths:
                return None
        return self._gone.setdefault(cgroup, self.clock())

    def forget(self, cgroup: int) -> None:
        """Drop what is known of a gone cgroup (its series are gone too)."""
        self._gone.pop(cgroup, None)
        self._paths.pop(cgroup, None)
        self._named.pop(cgroup, None)

    def _path(self, cgroup: int) -> str | None:
        path = self._paths.get(cgroup)
        if path is None and self._due(self._walked):
            self._walk()
            path = self._paths.get(cgroup)
        return path

    def _exists(self, cgroup: int, path: str) -> bool:
        try:
            return os.stat(self.mount / path).st_ino == cgroup
        except OSError:
            return False

    def _due(self, last: float) -> bool:
        return self.clock() - last >= self.refresh_seconds

    def _walk(self) -> None:
        self._walked = self.clock()
        self._paths = dict(walk_cgroups(self.mount))

    def _list_logs(self) -> None:
        self._listed = self.clock()
        try:
            names = os.listdir(self.log_dir)
        except OSError:
            names = []
        self._pods = container_logs(names)


def pod_resolver(cfg: Config) -> PodResolver | None:
    """The resolver --kubernetes asks for: None when off (auto: off where the log dir is missing)."""
    if cfg.kubernetes == "off":
        return None
    logs_there = os.path.isdir(cfg.container_log_dir)
    mount = cgroup_v2_mount(cfg.cgroup_root)
    if cfg.kubernetes == "auto" and not logs_there:
        return None
    if not logs_there:
        raise ConfigError(f"--kubernetes on: container log dir {cfg.container_log_dir} does not exist; "
                          "mount the kubelet's /var/log/containers there or pass --container-log-dir")
    if mount is None and cfg.kubernetes == "auto":
        log.warning("no pod labels on eBPF series: no cgroup v2 hierarchy at %s (nor its unified/)", cfg.cgroup_root)
        return None
    if mount is None:
        raise ConfigError(f"--kubernetes: no cgroup v2 hierarchy at {cfg.cgroup_root} (nor its unified/); "
                          "pass --cgroup-root, or --kubernetes off")
    return PodResolver(mount, Path(cfg.container_log_dir), cfg.kubernetes_refresh_seconds)
