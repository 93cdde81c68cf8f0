"""`check`: preflight with one pass/warn/fail line per item and a non-zero exit on failure."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from .check_result import Check, CheckResult
from .config import Config
from .ebpf.check import ebpf_checks
from .traces.check import trace_checks
from .triton.check import triton_checks


def config_check(cfg: Config) -> Iterable[CheckResult]:
    from .config import ConfigError
    from .startup import check_files

    try:
        check_files(cfg)
    except ConfigError as e:
        yield CheckResult("config", "fail", str(e))
        return
    yield CheckResult("config", "pass", f"valid (listen {cfg.listen}, state dir {cfg.state_dir})")
    if cfg.web_config_file:
        from .webconfig import load_web_config

        try:
            load_web_config(cfg.web_config_file)
            yield CheckResult("web config", "pass", f"{cfg.web_config_file} valid")
        except ConfigError as e:
            yield CheckResult("web config", "fail", str(e))
    from .traces.compiled import STALE
    from .traces.scanner import scanner_name

    yield CheckResult("trace scanner", "warn" if STALE else "pass", scanner_name())
    if cfg.otlp_listen:
        # protobuf's modules are imported only where OTLP is on
        from .otlp import whole
        from .otlp.cdecode import decoder_name, decoder_warning

        yield CheckResult("OTLP decoder", "warn" if decoder_warning() else "pass", decoder_name())
        yield CheckResult("OTLP span path", "warn" if whole.STALE else "pass", whole.path_name())


# imported statically: a check module that does not import is a bug to see, not an item to skip
CHECKS: tuple[Check, ...] = (config_check, trace_checks, triton_checks, ebpf_checks)


def run_checks(cfg: Config) -> int:
    failed = 0
    mark = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
    for check in CHECKS:
        try:
            results = list(check(cfg))
        except Exception as e:  # a check that crashes is a failed check, with its reason
            results = [CheckResult(check.__name__, "fail", f"{type(e).__name__}: {e}")]
        for r in results:
            print(f"{mark[r.status]:4}  {r.name}: {r.detail}")
            failed += r.status == "fail"
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}", file=sys.stderr)
    return 1 if failed else 0
