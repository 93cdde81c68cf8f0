"""`check` items for traces: trace file directories and files (writable with retention), the OTLP listener,
the state dir as serve uses it."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from ..check_result import CheckResult
from ..config import Config
from .checkpoint import read_snapshot
from .discovery import TracePattern
from .journal import read_journal
from .tailer import JOURNAL_FILE, STATE_FILE


def trace_checks(cfg: Config) -> Iterable[CheckResult]:
    if not cfg.trace_file and not cfg.otlp_listen:
        yield CheckResult("trace files", "warn", "no --trace-file or --otlp-listen given: per-stage histograms "
                          "from traces are off")
    if cfg.otlp_listen:
        port = cfg.otlp_listen.rpartition(":")[2]
        yield CheckResult("otlp", "pass", f"receiving on {cfg.otlp_listen}: Triton needs --trace-config "
                          f"mode=opentelemetry --trace-config opentelemetry,url=http://HOST:{port}/v1/traces")
    found = 0
    for spec in cfg.trace_file:
        pat = TracePattern(spec)
        d = os.path.dirname(pat.glob) or "."
        if glob.has_magic(d):
            dirs = [x for x in glob.glob(d) if os.path.isdir(x)]  # stray files beside the pod dirs: not ours
            if not dirs:
                yield CheckResult(f"trace dir {d}", "warn",
                                  f"no directory matches {spec} yet (a fresh node: each one appears when a "
                                  "Triton pod writes its first trace file)")
                continue
        elif os.path.isdir(d):
            dirs = [d]
        else:
            yield CheckResult(f"trace dir {d}", "fail", "does not exist (is Triton's trace file path mounted here?)")
            continue
        unreadable = [x for x in dirs if not os.access(x, os.R_OK | os.X_OK)]
        if unreadable:
            yield CheckResult(f"trace dir {d}", "fail", f"not readable by uid {os.geteuid()}: {unreadable[0]}")
            continue
        retention = cfg.trace_delete_ingested or cfg.trace_keep_bytes > 0
        unwritable = [x for x in dirs if not os.access(x, os.W_OK)] if retention else []
        if unwritable:
            yield CheckResult(f"trace dir {d}", "fail", f"retention (--trace-delete-ingested, --trace-keep-bytes) "
                              f"cannot delete in {unwritable[0]}: mount it writable for uid {os.geteuid()}")
            continue
        n = sum(len(files) for files in pat.expand().values())
        found += n
        yield CheckResult(f"trace files {spec}", "pass", f"{len(dirs)} dir(s), {n} file(s) found now")
    if cfg.trace_file and not found:
        yield CheckResult("trace files", "warn",
                          "no trace file at all yet: if Triton has been up a while, is it started with "
                          "--trace-config triton,file=<one of these paths> and a non-zero log-frequency?")
    yield from state_checks(cfg.state_dir)


def state_checks(state: str) -> Iterable[CheckResult]:
    """The state dir as serve uses it: writable, and its state file one serve will resume from."""
    parent = state if os.path.isdir(state) else os.path.dirname(state.rstrip("/")) or "."
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        yield CheckResult("state dir", "fail", f"{state} not writable; pass --state-dir to a writable directory")
        return
    path = os.path.join(state, STATE_FILE)
    saved, unusable, base = read_snapshot(path)  # what serve's start reads, without moving anything aside
    if saved is not None:
        unusable = read_journal(os.path.join(state, JOURNAL_FILE), base).damaged
    if unusable:
        yield CheckResult("state dir", "warn", f"{path} is unusable ({unusable}): serve will move it aside and "
                          "start the trace counters from 0")
    elif saved is None:
        yield CheckResult("state dir", "pass", f"{state} writable; no saved state yet (counters start at 0)")
    else:
        yield CheckResult("state dir", "pass", f"{state} writable; serve resumes from {path}")
