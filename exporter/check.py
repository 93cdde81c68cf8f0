"""`check`: preflight with one pass/warn/fail line per item and a non-zero exit on failure."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .config import Config


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass", "warn" or "fail"
    detail: str


Check = Callable[[Config], Iterable[CheckResult]]


def config_check(cfg: Config) -> Iterable[CheckResult]:
    yield CheckResult("config", "pass", f"valid (listen {cfg.listen}, state dir {cfg.state_dir})")


def trace_checks(cfg: Config) -> Iterable[CheckResult]:
    from .traces.discovery import TracePattern

    if not cfg.trace_file:
        yield CheckResult("trace files", "warn", "no --trace-file given: per-stage histograms from traces are off")
    for spec in cfg.trace_file:
        pat = TracePattern(spec)
        d = os.path.dirname(pat.glob) or "."
        dirs = glob.glob(d) if glob.has_magic(d) else [d]
        if not dirs or not all(os.path.isdir(x) for x in dirs):
            yield CheckResult(f"trace dir {d}", "fail", "does not exist (is Triton's trace file path mounted here?)")
            continue
        unreadable = [x for x in dirs if not os.access(x, os.R_OK | os.X_OK)]
        if unreadable:
            yield CheckResult(f"trace dir {d}", "fail", f"not readable by uid {os.geteuid()}: {unreadable[0]}")
            continue
        n = sum(len(files) for files in pat.expand().values())
        yield CheckResult(f"trace files {spec}", "pass", f"{n} file(s) found now")
    state = cfg.state_dir
    parent = state if os.path.isdir(state) else os.path.dirname(state.rstrip("/")) or "."
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.access(parent, os.W_OK):
        yield CheckResult("state dir", "pass", f"{state} writable")
    else:
        yield CheckResult("state dir", "fail", f"{state} not writable; pass --state-dir to a writable directory")


def all_checks() -> list[Check]:
    checks: list[Check] = [config_check, trace_checks]
    try:
        from .triton.check import triton_checks

        checks.append(triton_checks)
    except ImportError:
        pass
    try:
        from .ebpf.check import ebpf_checks

        checks.append(ebpf_checks)
    except ImportError:
        pass
    return checks


def run_checks(cfg: Config) -> int:
    failed = 0
    mark = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
    for check in all_checks():
        try:
            results = list(check(cfg))
        except Exception as e:  # a check that crashes is a failed check, with its reason
            results = [CheckResult(check.__name__, "fail", f"{type(e).__name__}: {e}")]
        for r in results:
            print(f"{mark[r.status]:4}  {r.name}: {r.detail}")
            failed += r.status == "fail"
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}", file=sys.stderr)
    return 1 if failed else 0
