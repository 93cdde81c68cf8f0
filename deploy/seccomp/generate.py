"""Writes inference-profiler.json, the exporter's seccomp profile, from moby's default profile.

The result is moby's default (moby-default.json, vendored with its license LICENSE.moby) as it
applies to a container holding exactly CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE on x86 or
ARM: the capability and architecture conditions are resolved, which adds `bpf` and
`perf_event_open` and nothing else a capability would unlock. The output has no conditions left,
so every runtime reads it alike: containerd loads Localhost profiles in the plain OCI format and
would silently drop moby's `includes`/`excludes` (allowing mount, unshare, setns to everyone).

    python deploy/seccomp/generate.py          # rewrite inference-profiler.json
    python deploy/seccomp/generate.py --check  # exit 1 if it is out of date (tests run this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "moby-default.json"
OUT = HERE / "inference-profiler.json"
CAPABILITIES = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_RESOURCE"}
# moby's architecture names of the node families we support (x86_64 and arm64, with their 32-bit ABIs)
ARCHES = {"amd64", "x32", "x86", "arm64", "arm"}
SCMP_ARCHES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


def applies(rule: dict[str, Any]) -> bool:
    """Whether moby would keep the rule for our capabilities on one of our architectures."""
    inc, exc = rule.get("includes", {}), rule.get("excludes", {})
    if inc.get("caps") and not set(inc["caps"]) <= CAPABILITIES:
        return False
    if inc.get("arches") and not set(inc["arches"]) & ARCHES:
        return False
    if exc.get("caps") and set(exc["caps"]) & CAPABILITIES:
        return False
    # minKernel conditions (4.8 and older) are below the 5.8 that CAP_BPF needs: always kept
    return not (exc.get("arches") and set(exc["arches"]) >= ARCHES)


def profile(moby: dict[str, Any]) -> dict[str, Any]:
    rules = []
    for rule in moby["syscalls"]:
        if applies(rule):
            rules.append({k: v for k, v in rule.items() if k not in ("includes", "excludes", "comment")})
    return {
        "defaultAction": moby["defaultAction"],
        "defaultErrnoRet": moby["defaultErrnoRet"],
        "architectures": SCMP_ARCHES,
        "syscalls": rules,
    }


def render() -> str:
    return json.dumps(profile(json.loads(SOURCE.read_text())), indent=2) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if inference-profiler.json is out of date")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(HERE.parents[1])} is out of date: run python deploy/seccomp/generate.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
