"""`check` items for traces: trace file directories readable (writable with retention), the OTLP listener,
the state dir writable."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from ..check_result import CheckResult
from ..config import Config
from .discovery import TracePattern


def trace_checks(cfg: Config) -> Iterable[CheckResult]:
    if not cfg.trace_file and not cfg.otlp_listen:
        yield CheckResult("trace files", "warn", "no --trace-file or --otlp-listen given: per-stage histograms "
                          "from traces are off")
    if cfg.otlp_listen:
        port = cfg.otlp_listen.rpartition(":")[2]
        yield CheckResult("otlp", "pass", f"receiving on {cfg.otlp_listen}: Triton needs --trace-config "
                          f"mode=opentelemetry --trace-config opentelemetry,url=http://HOST:{port}/v1/traces")
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
        retention = cfg.trace_delete_ingested or cfg.trace_keep_bytes > 0
        unwritable = [x for x in dirs if not os.access(x, os.W_OK)] if retention else []
        if unwritable:
            yield CheckResult(f"trace dir {d}", "fail", f"retention (--trace-delete-ingested, --trace-keep-bytes) "
                              f"cannot delete in {unwritable[0]}: mount it writable for uid {os.geteuid()}")
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
