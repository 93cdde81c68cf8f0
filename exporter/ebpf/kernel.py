"""What this kernel and process allow: tracepoints, fentry, kprobes, privileges, headers, stats."""

from __future__ import annotations

import errno
import functools
import os
import platform
import struct
from pathlib import Path

from . import bpfsys

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
BPF_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def tracefs() -> Path | None:
    for root in TRACEFS_ROOTS:
        if (root / "events").is_dir():
            return root
    return None


def tracepoint_exists(name: str) -> bool:
    """name is "category:event", as in `tracepoint sock:sock_send_length`."""
    root = tracefs()
    category, _, event = name.partition(":")
    return root is not None and (root / "events" / category / event / "format").is_file()


@functools.lru_cache(maxsize=1)
def kernel_functions() -> frozenset[str]:
    """Function symbols of the running kernel (empty where kallsyms hides them)."""
    try:
        with open("/proc/kallsyms") as f:
            return frozenset(parts[2] for line in f if len(parts := line.split()) >= 3 and parts[1] in "tTwW")
    except OSError:
        return frozenset()


def kprobes_supported() -> bool:
    root = tracefs()
    return root is not None and (root / "kprobe_events").exists()


def fentry_supported() -> bool:
    # trampolines exist on x86_64 and arm64 with BTF; the kernel may still refuse the load
    return (platform.machine() in ("x86_64", "aarch64") and Path("/sys/kernel/btf/vmlinux").exists()
            and "bpf_trampoline_link_prog" in kernel_functions())


def need_missing(need: str) -> str | None:
    """Why one `needs` entry of a declaration is not met here, or None when it is."""
    kind, _, what = need.partition(" ")
    if kind == "tracepoint":
        if tracefs() is None:
            return "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
        return None if tracepoint_exists(what) else f"no tracepoint {what} in this kernel"
    if kind == "fentry":
        if not fentry_supported():
            return "no fentry (BPF trampolines with BTF) in this kernel"
        return None if what in kernel_functions() else f"no kernel function {what}"
    if kind == "kprobe":
        if not kprobes_supported():
            return "no kprobes in this kernel (CONFIG_KPROBE_EVENTS off)"
        return None if what in kernel_functions() else f"no kernel function {what}"
    return f"unknown need {need!r}"


def effective_capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def privilege_problem() -> str | None:
    """Why this process cannot load tracing BPF programs, or None."""
    caps = effective_capabilities()

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        return None
    return (f"loading BPF programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), which this process "
            f"(uid {os.geteuid()}) lacks: run as root or grant those capabilities")


def headers_problem() -> str | None:
    """BCC compiles against the running kernel's headers (or BTF-less builds fail)."""
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if build.exists():
        return None
    return (f"no kernel headers at {build} (BCC compiles against them): install linux-headers for "
            f"{os.uname().release} or link them there (scripts/setup.sh does)")


def bcc_problem() -> str | None:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return ("BCC Python bindings not found: install python3-bpfcc and make "
                "/usr/lib/python3/dist-packages/bcc importable (scripts/setup.sh links it)")
    except Exception as e:  # libbcc missing or broken: the import itself fails
        return f"BCC cannot be loaded: {e}"
    return None


SECCOMP_FIX = ("allow bpf and perf_event_open in the container's seccomp profile: "
               "deploy/seccomp/inference-profiler.json (see deploy/README.md, \"Seccomp\")")


def bpf_syscall_errno() -> int:
    """errno of a bpf(BPF_MAP_CREATE) for a one-slot array (0: allowed), or -1 where unknown."""
    if bpfsys.syscall_number() is None:
        return -1
    attr = bytearray(struct.pack("<IIII", 2, 4, 4, 1) + bytes(56))  # BPF_MAP_TYPE_ARRAY, key/value 4 B, 1 entry
    try:
        os.close(bpfsys.bpf(0, attr))  # BPF_MAP_CREATE
    except OSError as e:
        return e.errno or -1
    return 0


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


def bpf_stats_enabled() -> bool:
    try:
        return BPF_STATS_SYSCTL.read_text().strip() == "1"
    except OSError:
        return False
