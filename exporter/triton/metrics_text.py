"""Triton's /metrics text, parsed into per-model counters (pure; no I/O).

Only the families docs/metrics.md normalises are read; any other (future) Triton family is
kept only for the optional raw passthrough, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

ModelKey = tuple[str, str]  # (model, version)

# Triton family -> our stage label (values are microseconds)
STAGE_FAMILIES: dict[str, str] = {
    "nv_inference_request_duration_us": "request",
    "nv_inference_queue_duration_us": "queue",
    "nv_inference_compute_input_duration_us": "compute_input",
    "nv_inference_compute_infer_duration_us": "compute_infer",
    "nv_inference_compute_output_duration_us": "compute_output",
}
STAGES: tuple[str, ...] = tuple(STAGE_FAMILIES.values())


class MetricsTextError(ValueError):
    """Triton's /metrics answer could not be parsed as Prometheus text."""


@dataclass
class ModelCounters:
    stage_us: dict[str, float] = field(default_factory=dict)
    success: float | None = None
    failure: float | None = None  # summed over Triton's `reason` label
    inferences: float | None = None
    executions: float | None = None
    pending: float | None = None


@dataclass
class TritonMetricsText:
    models: dict[ModelKey, ModelCounters]
    raw: list[Metric]  # every nv_* family as parsed, for the passthrough


def _key(labels: dict[str, str]) -> ModelKey | None:
    model = labels.get("model")
    if model is None:
        return None
    return model, labels.get("version", "")


def parse_metrics_text(text: str) -> TritonMetricsText:
    """Per-(model, version) counters from Triton's /metrics body."""
    models: dict[ModelKey, ModelCounters] = {}
    raw: list[Metric] = []
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as e:
        raise MetricsTextError(f"not Prometheus text: {e}") from None
    for fam in families:
        if fam.name.startswith("nv_"):
            raw.append(fam)
        for s in fam.samples:
            key = _key(s.labels)
            # the parser names counter samples <family>_total; summaries' _sum/_count are not ours
            if key is None or s.name not in (fam.name, fam.name + "_total"):
                continue
            c = models.setdefault(key, ModelCounters())
            name = fam.name
            if name in STAGE_FAMILIES:
                c.stage_us[STAGE_FAMILIES[name]] = s.value
            elif name == "nv_inference_request_success":
                c.success = s.value
            elif name == "nv_inference_request_failure":
                c.failure = (c.failure or 0.0) + s.value
            elif name == "nv_inference_count":
                c.inferences = s.value
            elif name == "nv_inference_exec_count":
                c.executions = s.value
            elif name == "nv_inference_pending_request_count":
                c.pending = s.value
    return TritonMetricsText({k: v for k, v in models.items() if _has_any(v)}, raw)


def _has_any(c: ModelCounters) -> bool:
    return bool(c.stage_us) or any(
        v is not None for v in (c.success, c.failure, c.inferences, c.executions, c.pending)
    )
