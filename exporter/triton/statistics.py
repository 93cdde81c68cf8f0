"""Triton's statistics API, model config and repository index, parsed (pure; no I/O).

Accepts both JSON shapes: HTTP's (numbers) and gRPC's as JSON (64-bit numbers as
strings, zero-valued fields left out). A model whose entry has the wrong shape, or a
batch size whose counts are not counts (NaN, infinite, negative), is left out and
counted; the other models are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .metrics_text import ModelKey, Problems

BATCH_STAGES: tuple[str, ...] = ("compute_input", "compute_infer", "compute_output")


class ApiShapeError(ValueError):
    """A Triton API answer did not have the shape its documentation gives."""


class BadValue(ApiShapeError):
    """A count that is not one: NaN, infinite, negative or fractional."""


@dataclass
class BatchStats:
    executions: int  # executions of this batch size (compute_infer's count)
    stage_ns: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelStats:
    inference_count: int
    execution_count: int
    batches: dict[int, BatchStats]


@dataclass(frozen=True)
class ModelConfigInfo:
    platform: str
    max_batch_size: int
    dynamic_batching: bool
    max_queue_delay_seconds: float
    instance_count: int


def _int(v: Any, what: str) -> int:
    """A non-negative count (HTTP gives numbers, gRPC's JSON decimal strings)."""
    if v is None:
        return 0
    if isinstance(v, bool):
        raise ApiShapeError(f"{what} is a boolean, expected a number")
    if isinstance(v, float) and not (math.isfinite(v) and v >= 0 and v.is_integer()):
        raise BadValue(f"{what} is {v!r}, not a count")
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ApiShapeError(f"{what} is {v!r}, expected a number") from None
    if n < 0:
        raise BadValue(f"{what} is {n}, not a count")
    return n


def _mapping(v: Any, what: str) -> Mapping[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ApiShapeError(f"{what} is not an object")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ApiShapeError(f"{what} is not a list")
    return v


def parse_statistics(doc: Any, admit: Callable[[str, str], bool] = lambda model, version: True,
                     problems: Problems | None = None) -> dict[ModelKey, ModelStats]:
    """Per-(model, version) batch statistics from GET /v2/models/stats, for the models `admit` takes.
    A model or batch size that does not parse is left out and added to `problems`."""
    problems = problems if problems is not None else Problems()
    out: dict[ModelKey, ModelStats] = {}
    for i, m in enumerate(_list(_mapping(doc, "statistics").get("model_stats"), "model_stats")):
        try:
            m = _mapping(m, f"model_stats[{i}]")
            name = m.get("name")
            if not isinstance(name, str):
                raise ApiShapeError(f"model_stats[{i}] has no name")
            key = (name, str(m.get("version", "")))
            if not admit(*key):
                continue
            stats = ModelStats(_int(m.get("inference_count"), f"{name} inference_count"),
                               _int(m.get("execution_count"), f"{name} execution_count"), {})
            for j, b in enumerate(_list(m.get("batch_stats"), f"{name} batch_stats")):
                try:
                    size, batch = _batch(name, j, b)
                except BadValue as e:
                    problems.add("bad_value", f"statistics: {e}")
                    continue
                stats.batches[size] = batch
        except BadValue as e:
            problems.add("bad_value", f"statistics: {e}")
            continue
        except ApiShapeError as e:
            problems.add("bad_model", f"statistics: {e}")
            continue
        out[key] = stats
    return out


def _batch(name: str, j: int, b: Any) -> tuple[int, BatchStats]:
    b = _mapping(b, f"{name} batch_stats[{j}]")
    size = _int(b.get("batch_size"), f"{name} batch_size")
    stages = {s: _int(_mapping(b.get(s), s).get("ns"), f"{name} {s}.ns") for s in BATCH_STAGES}
    infer = _mapping(b.get("compute_infer"), "compute_infer")
    return size, BatchStats(_int(infer.get("count"), f"{name} compute_infer.count"), stages)


def parse_model_config(doc: Any) -> ModelConfigInfo:
    """The model_config_info labels (docs/metrics.md) from GET /v2/models/<m>/config (or gRPC's {"config": ...})."""
    cfg = _mapping(doc, "model config")
    if "config" in cfg and isinstance(cfg["config"], Mapping):
        cfg = cfg["config"]
    platform = str(cfg.get("platform") or cfg.get("backend") or "")
    db = cfg.get("dynamic_batching")
    delay_us = _int(_mapping(db, "dynamic_batching").get("max_queue_delay_microseconds"), "max_queue_delay")
    groups = _list(cfg.get("instance_group"), "instance_group")
    # Triton fills instance_group in; an empty one would mean its default of one instance
    count = sum(_int(_mapping(g, "instance_group").get("count", 1), "instance count") for g in groups)
    return ModelConfigInfo(
        platform=platform,
        max_batch_size=_int(cfg.get("max_batch_size"), "max_batch_size"),
        dynamic_batching=db is not None,
        max_queue_delay_seconds=delay_us / 1e6,
        instance_count=count if groups else 1,
    )


def parse_repository_index(doc: Any) -> frozenset[ModelKey]:
    """(model, version) pairs that are READY, from POST /v2/repository/index (or gRPC's {"models": ...})."""
    items = doc.get("models") if isinstance(doc, Mapping) else doc
    ready: set[ModelKey] = set()
    for i, m in enumerate(_list(items, "repository index")):
        m = _mapping(m, f"repository index[{i}]")
        if m.get("state") == "READY" and isinstance(m.get("name"), str):
            ready.add((m["name"], str(m.get("version", ""))))
    return frozenset(ready)


@dataclass(frozen=True)
class TraceSettings:
    level: tuple[str, ...]
    rate: str
    log_frequency: int
    file: str
    mode: str


def parse_trace_settings(doc: Any) -> TraceSettings:
    """GET /v2/trace/setting (HTTP shape, or gRPC's {"settings": {k: {"value": [...]}}})."""
    d = _mapping(doc, "trace settings")
    if "settings" in d:
        d = {k: (_mapping(v, k).get("value") or [""]) for k, v in _mapping(d["settings"], "settings").items()}
        d = {k: (v if k == "trace_level" else v[0]) for k, v in d.items()}
    level = d.get("trace_level") or []
    if isinstance(level, str):
        level = [level]
    return TraceSettings(
        level=tuple(str(x) for x in _list(level, "trace_level")),
        rate=str(d.get("trace_rate", "")),
        log_frequency=_int(d.get("log_frequency", 0), "log_frequency"),
        file=str(d.get("trace_file", "")),
        mode=str(d.get("trace_mode", "")),
    )
