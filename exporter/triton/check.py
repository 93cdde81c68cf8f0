"""`check` items for Triton: reachability, version, models, trace settings; and perf_analyzer files."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ..check_result import CheckResult
from ..config import Config
from .statistics import ApiShapeError, parse_repository_index, parse_trace_settings
from .target import default_metrics_url, target_name


def triton_checks(cfg: Config) -> Iterable[CheckResult]:
    if not cfg.triton:
        yield CheckResult("triton", "warn", "--triton none: Triton's /metrics, statistics and config are off")
    murls = cfg.triton_metrics_url or [default_metrics_url(u) for u in cfg.triton]
    for url, murl in zip(cfg.triton, murls, strict=True):
        yield from _one_triton(url, murl, cfg.triton_timeout_seconds, cfg.triton_max_response_bytes)
    yield from _perf_checks(cfg.perf_analyzer_csv)


def _one_triton(url: str, metrics_url: str, timeout: float, max_bytes: int) -> Iterator[CheckResult]:
    import time

    from .http_fetch import HttpSession

    name = f"triton {target_name(url)}"
    base = url.rstrip("/")
    t = max(timeout, 0.1)

    def session() -> HttpSession:  # serve's bounds, not an open read: one deadline per request
        return HttpSession(time.monotonic() + t, max_bytes)

    try:
        with session() as s:
            meta: Any = s.read_json(f"{base}/v2")
        if not isinstance(meta, dict):
            raise ApiShapeError("server metadata is not a JSON object")
    except Exception as e:
        yield CheckResult(name, "fail", f"not reachable at {url} ({_why(e)}); is Triton running, and is --triton right?")
        return
    yield CheckResult(name, "pass", f"reachable, {meta.get('name', 'triton')} {meta.get('version', '?')}")
    try:
        with session() as s:
            s.read(metrics_url)
        yield CheckResult(f"{name} metrics", "pass", f"{metrics_url} answers")
    except Exception as e:
        yield CheckResult(f"{name} metrics", "fail", f"{metrics_url} does not answer ({_why(e)}); "
                          "set --triton-metrics-url or Triton's --metrics-port")
    try:
        with session() as s:
            ready = parse_repository_index(s.read_json(f"{base}/v2/repository/index", "POST", b""))
        names = ", ".join(f"{m}/{v}" for m, v in sorted(ready)) or "none"
        yield CheckResult(f"{name} models", "pass" if ready else "warn", f"{len(ready)} ready: {names}")
    except Exception as e:
        yield CheckResult(f"{name} models", "fail", f"repository index unreadable ({_why(e)})")
    try:
        with session() as s:
            ts = parse_trace_settings(s.read_json(f"{base}/v2/trace/setting"))
    except Exception as e:
        yield CheckResult(f"{name} tracing", "warn", f"trace settings unreadable ({_why(e)})")
        return
    yield _trace_result(name, ts.level, ts.rate, ts.log_frequency, ts.file)


def _trace_result(name: str, level: tuple[str, ...], rate: str, log_frequency: int, file: str) -> CheckResult:
    where = f"{name} tracing"
    if not level or all(x.upper() == "OFF" for x in level):
        return CheckResult(where, "warn", "tracing is off: start Triton with --trace-config level=TIMESTAMPS "
                           "--trace-config triton,file=F to get per-stage histograms")
    if log_frequency <= 0:
        return CheckResult(where, "warn", f"log-frequency is 0: traces reach {file or 'the trace file'} only at "
                           "shutdown; set --trace-config triton,log-frequency=N")
    return CheckResult(where, "pass", f"level {'+'.join(level)}, rate {rate}, log-frequency {log_frequency}, "
                       f"file {file}")


def _perf_checks(patterns: list[str]) -> Iterator[CheckResult]:
    if not patterns:
        return
    # pandas is imported only when CSVs are configured
    from .perf_csv import PerfCsvError, parse_perf_csv

    for pat in patterns:
        paths = sorted(glob.glob(pat)) if glob.has_magic(pat) else [p for p in [pat] if os.path.exists(p)]
        if not paths:
            yield CheckResult(f"perf_analyzer {pat}", "warn", "no file matches yet")
        for p in paths:
            try:
                with open(p, encoding="utf-8") as f:
                    rows = parse_perf_csv(f.read())
            except PerfCsvError as e:
                yield CheckResult(f"perf_analyzer {p}", "fail", str(e))
            except (OSError, UnicodeDecodeError) as e:
                yield CheckResult(f"perf_analyzer {p}", "fail", f"unreadable: {_why(e)}")
            else:
                yield CheckResult(f"perf_analyzer {p}", "pass", f"{len(rows)} result row(s)")


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
