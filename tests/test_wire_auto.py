"""`serve --wire-join auto`: the socket join runs where eBPF watches the join's ports and the
kernel lets eBPF run, whenever traces are read; `on` and `off` (the default, for its cost) as
they say."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from exporter.config import build
from exporter.daemon import build_sources
from exporter.source import ErrorCounts
from exporter.wire.source import WireSource, join_runs


def config(tmp_path: Path, **values: Any) -> Any:
    base = {"listen": "127.0.0.1:0", "state_dir": str(tmp_path / "state"), "triton": ["none"],
            "trace_file": [str(tmp_path / "trace.json")]}
    return build({}, {}, base | values)


def kernel_allows(monkeypatch: pytest.MonkeyPatch, problem: str | None) -> None:
    monkeypatch.setattr("exporter.ebpf.loader.environment_problem", lambda bcc=True: problem)


def test_auto_is_the_default_and_on_and_off_mean_what_they_say(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    kernel_allows(monkeypatch, "loading BPF programs needs root")  # `on` does not ask the kernel first
    assert config(tmp_path).wire_join == "auto"  # the contract: with eBPF on Triton's ports, requests join
    assert join_runs(config(tmp_path, ebpf="auto", wire_join="on"))
    assert not join_runs(config(tmp_path, ebpf="on", wire_join="off"))
    assert not join_runs(config(tmp_path, ebpf="off", wire_join="on"))  # no eBPF, no turns


def test_auto_joins_where_ebpf_runs_on_the_join_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "wire")
    kernel_allows(monkeypatch, None)
    assert join_runs(config(tmp_path, wire_join="auto"))  # eBPF watches 8000 and 8001, the join's ports
    assert join_runs(config(tmp_path, wire_join="auto", ebpf_port=[9000, 9001], wire_http_port=[9000],
                            wire_grpc_port=[9001]))
    # eBPF watches another Triton's ports than the join's: off, and why
    assert not join_runs(config(tmp_path, wire_join="auto", ebpf_port=[9000]))
    assert "eBPF watches ports 9000, the join ports 8000,8001" in caplog.text
    kernel_allows(monkeypatch, "loading BPF programs needs root (CAP_BPF/CAP_PERFMON)")
    assert not join_runs(config(tmp_path, wire_join="auto"))
    assert "socket join off (--wire-join auto): loading BPF programs needs root" in caplog.text


def test_serve_builds_the_join_only_where_auto_finds_it_runs(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exporter.ebpf.source.EbpfSource.__init__", lambda self, cfg, errors: None)

    def wire_sources(cfg: Any) -> list[Any]:
        return [s for s in build_sources(cfg, ErrorCounts()) if isinstance(s, WireSource)]

    kernel_allows(monkeypatch, "seccomp forbids bpf(2)")
    assert wire_sources(config(tmp_path, wire_join="auto")) == []
    kernel_allows(monkeypatch, None)
    assert wire_sources(config(tmp_path, wire_join="off")) == []
    (wire,) = wire_sources(config(tmp_path))  # auto, the default
    assert wire.aggregator.wire is wire.joiner  # traced batches join from the first
    # no traces read: nothing to join
    assert wire_sources(config(tmp_path, wire_join="auto", trace_file=[])) == []


@pytest.mark.ebpf
def test_auto_joins_on_this_machine_where_ebpf_runs(tmp_path: Path) -> None:
    assert join_runs(config(tmp_path, wire_join="auto"))
