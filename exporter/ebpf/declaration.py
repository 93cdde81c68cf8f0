"""The declarations in bpf/*.yaml: a program, its attach methods and the metrics it feeds."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..histogram import log_linear_index
from ..yamlfile import load_mapping

UNIT_DIVISORS = {"nanoseconds": 1e9, "microseconds": 1e6, "bytes": 1.0, "count": 1.0}
KEY_FIELDS = ("port", "role", "direction")


class DeclarationError(Exception):
    """A bpf/*.yaml file that does not say what the loader needs; one line."""


@dataclass(frozen=True)
class AttachMethod:
    method: str  # "tracepoint", "fentry" or "kprobe"
    needs: tuple[str, ...]  # "tracepoint cat:event", "fentry func", "kprobe func"
    define: str = ""


@dataclass(frozen=True)
class OptionalPart:
    needs: tuple[str, ...]
    define: str
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricDecl:
    name: str  # without the inference_profiler_ prefix
    help: str
    type: str  # "histogram" or "counter"
    labels: tuple[str, ...]
    unit: str = "count"
    buckets: tuple[int, int] = (0, 0)  # first and last finite bound, in the unit

    @property
    def divisor(self) -> float:
        return UNIT_DIVISORS[self.unit]

    @property
    def index_range(self) -> tuple[int, int]:
        """First and last log-linear bucket index exposed; the rest fold into them / +Inf."""
        return log_linear_index(self.buckets[0]), log_linear_index(self.buckets[1])


@dataclass(frozen=True)
class ProgramDecl:
    program: str
    source: Path
    attach: tuple[AttachMethod, ...]
    needs: tuple[str, ...] = ()
    optional: tuple[OptionalPart, ...] = ()
    key: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    metrics: tuple[MetricDecl, ...] = ()

    def metric_defines(self) -> list[str]:
        """METRIC_<name>=<position>: the ids the C code writes into metric_key.metric."""
        return [f"METRIC_{m.name}={i}" for i, m in enumerate(self.metrics)]


def bpf_dir() -> Path:
    """bpf/ beside the package in a checkout; under sys.prefix/share when installed."""
    here = Path(__file__).resolve().parents[2] / "bpf"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "inference-profiler" / "bpf"


def _strings(raw: Any, what: str, path: Path) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise DeclarationError(f"{path}: {what} must be a list of strings")
    return tuple(raw)


def _metric(raw: Any, key: dict[str, str | tuple[str, ...]], path: Path) -> MetricDecl:
    if not isinstance(raw, dict) or not {"name", "help", "type"} <= raw.keys():
        raise DeclarationError(f"{path}: each metric needs name, help and type")
    labels = _strings(raw.get("labels", []), "labels", path)
    unknown = [lab for lab in labels if lab not in key]
    if unknown:
        raise DeclarationError(f"{path}: metric {raw['name']} uses labels {unknown} not in key")
    unit = str(raw.get("unit", "count"))
    if unit not in UNIT_DIVISORS:
        raise DeclarationError(f"{path}: unit must be one of {', '.join(UNIT_DIVISORS)}, got {unit}")
    if raw["type"] not in ("histogram", "counter"):
        raise DeclarationError(f"{path}: metric type must be histogram or counter")
    buckets = raw.get("buckets", [0, 0])
    if raw["type"] == "histogram" and (
        not isinstance(buckets, list) or len(buckets) != 2 or not 0 < buckets[0] < buckets[1]
    ):
        raise DeclarationError(f"{path}: histogram {raw['name']} needs buckets: [first, last] bounds")
    return MetricDecl(str(raw["name"]), str(raw["help"]), str(raw["type"]), labels, unit,
                      (int(buckets[0]), int(buckets[1])))


def load_declaration(path: Path) -> ProgramDecl:
    raw = load_mapping(path, "BPF declaration", DeclarationError)
    if "program" not in raw or "source" not in raw:
        raise DeclarationError(f"{path}: needs program and source")
    key: dict[str, str | tuple[str, ...]] = {}
    for k, v in (raw.get("key") or {}).items():
        if k not in KEY_FIELDS:
            raise DeclarationError(f"{path}: key field {k} is not one of {', '.join(KEY_FIELDS)}")
        key[k] = "number" if v == "number" else _strings(v, f"key {k}", path)
    attach = tuple(
        AttachMethod(str(a["method"]), _strings(a.get("needs"), "needs", path), str(a.get("define", "")))
        for a in raw.get("attach") or []
    )
    if not attach:
        raise DeclarationError(f"{path}: needs at least one attach method")
    optional = tuple(
        OptionalPart(_strings(o.get("needs"), "needs", path), str(o["define"]),
                     _strings(o.get("metrics"), "metrics", path))
        for o in raw.get("optional") or []
    )
    metrics = tuple(_metric(m, key, path) for m in raw.get("metrics") or [])
    return ProgramDecl(str(raw["program"]), path.parent / str(raw["source"]), attach,
                       _strings(raw.get("needs"), "needs", path), optional, key, metrics)


def metric_programs(directory: Path | None = None) -> list[ProgramDecl]:
    """Every declared program that feeds metrics (tcp_events.yaml feeds none)."""
    d = directory or bpf_dir()
    decls = [load_declaration(p) for p in sorted(d.glob("*.yaml"))]
    return [x for x in decls if x.metrics]
