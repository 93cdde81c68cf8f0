"""`check` items for eBPF: can the programs load here, and by which attach method."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterable
from pathlib import Path

from ..check_result import CheckResult
from ..config import Config, ConfigError
from .declaration import DeclarationError, bpf_dir, metric_programs
from .kernel import CAP_BPF, bpf_stats_enabled, effective_capabilities
from .loader import LoadError, environment_problem, load_programs
from .pods import PodResolver, container_logs, pod_resolver
from .source import program_defines

SYS_BPF = {"x86_64": 321, "aarch64": 280}
SECCOMP_FIX = ("allow bpf and perf_event_open in the container's seccomp profile: "
               "deploy/seccomp/inference-profiler.json (see deploy/README.md, \"Seccomp\")")


def bpf_syscall_errno() -> int:
    """errno of a bpf(BPF_MAP_CREATE) for a one-slot array (0: allowed), or -1 where unknown."""
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        return -1
    attr = (ctypes.c_uint32 * 18)(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY, key 4 B, value 4 B, 1 entry
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, 0, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return 0
    return ctypes.get_errno()


def seccomp_problem() -> str | None:
    """bpf() refused although CAP_BPF is effective: a seccomp filter (e.g. podman's or CRI-O's default)."""
    if not effective_capabilities() >> CAP_BPF & 1 or bpf_syscall_errno() != errno.EPERM:
        return None
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    if "Seccomp:\t2" not in status:
        return "bpf() fails with EPERM although CAP_BPF is effective (no seccomp filter: a security module?)"
    return f"bpf() fails with EPERM although CAP_BPF is effective: the seccomp profile forbids it; {SECCOMP_FIX}"


def ebpf_checks(cfg: Config) -> Iterable[CheckResult]:
    if cfg.ebpf == "off":
        yield CheckResult("ebpf", "warn", "off (--ebpf off): no socket latency, size or RTT histograms")
        return
    # under auto, serve runs on without eBPF: a refusal is a warning, under on a failure
    bad = "fail" if cfg.ebpf == "on" else "warn"
    try:
        decls = metric_programs()
    except DeclarationError as e:
        yield CheckResult("ebpf", bad, str(e))
        return
    if not decls:
        yield CheckResult("ebpf", bad, f"no BPF programs found in {bpf_dir()} (is the package installed whole?)")
        return
    problem = environment_problem() or seccomp_problem()
    if problem:
        yield CheckResult("ebpf", bad, problem)
        return
    ports = ",".join(map(str, cfg.ebpf_port))
    try:
        pods = pod_resolver(cfg)
    except ConfigError as e:
        yield CheckResult("pod labels", "fail", str(e))
        return
    yield pod_labels_check(cfg, pods)
    # loading for real, as serve does, is the only sure answer: the kernel may refuse what it seems to offer
    for d in decls:
        if not d.wanted(cfg.ebpf_metric):
            yield CheckResult(f"ebpf {d.program}", "pass", "not compiled: no --ebpf-metric needs it")
    decls = [d for d in decls if d.wanted(cfg.ebpf_metric)]
    loaded = load_programs(decls, cfg.ebpf_port, cfg.ebpf_attach, program_defines(cfg, pods is not None),
                           cfg.ebpf_metric)
    for d, r in zip(decls, loaded, strict=True):
        if isinstance(r, LoadError):
            yield CheckResult(f"ebpf {d.program}", bad, str(r))
            continue
        try:
            r.attach()
        except LoadError as e:
            yield CheckResult(f"ebpf {d.program}", bad, str(e))
            continue
        finally:
            r.close()
        extra = f", with {', '.join(r.defines)}" if r.defines else ""
        yield CheckResult(f"ebpf {d.program}", "pass", f"loadable, attach method {r.method}{extra} (ports {ports})")
    if not bpf_stats_enabled():
        yield CheckResult("ebpf stats", "warn", "kernel.bpf_stats_enabled is 0: no ebpf_run_seconds_total "
                          "(sysctl -w kernel.bpf_stats_enabled=1)")


def pod_labels_check(cfg: Config, pods: PodResolver | None) -> CheckResult:
    if pods is None:
        why = "--kubernetes off" if cfg.kubernetes == "off" else f"{cfg.container_log_dir} does not exist"
        return CheckResult("pod labels", "pass", f"off ({why}): eBPF series have no namespace/pod/container")
    linked = len(container_logs(os.listdir(pods.log_dir)))
    return CheckResult("pod labels", "pass", f"namespace/pod/container from cgroups under {pods.mount} and "
                       f"{linked} container link(s) in {pods.log_dir} now")
