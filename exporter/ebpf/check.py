"""`check` items for eBPF: can the programs load here, and by which attach method."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..check_result import CheckResult
from ..config import Config, ConfigError
from .declaration import DeclarationError, bpf_dir, metric_programs
from .kernel import bpf_stats_enabled
from .loader import LoadError, environment_problem, load_programs
from .pods import PodResolver, container_logs, pod_resolver
from .source import program_defines


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
    problem = environment_problem()
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
