"""Pure parsing of Triton's /metrics text, statistics, config and trace settings (real 2.51 samples)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.triton.check import _trace_result
from exporter.triton.collector import families
from exporter.triton.metrics_text import MetricsTextError, Problems, parse_metrics_text
from exporter.triton.statistics import (
    ApiShapeError,
    parse_model_config,
    parse_repository_index,
    parse_statistics,
    parse_trace_settings,
)
from exporter.triton.target import TritonSnapshot, default_metrics_url, target_name


@pytest.fixture
def api(samples: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((samples / "triton-2.51" / "api-outputs.json").read_text())
    return doc


@pytest.fixture
def metrics_text(samples: Path) -> str:
    return (samples / "triton-2.51" / "metrics.txt").read_text()


def sample_values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_text_counters_match_the_file(metrics_text: str) -> None:
    m = parse_metrics_text(metrics_text)
    c = m.models[("add_sub", "1")]
    assert c.stage_us == {"request": 10152103, "queue": 6219389, "compute_input": 54177,
                          "compute_infer": 3612300, "compute_output": 249697}
    assert (c.success, c.inferences, c.executions, c.pending) == (601, 1201, 218, 0)
    assert c.failures == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 0, "OTHER": 0}
    assert set(m.models) == {("add_sub", "1")}  # nv_cpu_* etc. have no model label


def test_failures_keep_tritons_reason_and_summaries_are_ignored(samples: Path) -> None:
    text = (samples / "triton-2.51" / "metrics.txt").read_text().replace(
        'nv_inference_request_failure{model="add_sub",reason="BACKEND",version="1"} 0',
        'nv_inference_request_failure{model="add_sub",reason="BACKEND",version="1"} 3').replace(
        'nv_inference_request_failure{model="add_sub",reason="REJECTED",version="1"} 0',
        'nv_inference_request_failure{model="add_sub",reason="REJECTED",version="1"} 4')
    failures = parse_metrics_text(text).models[("add_sub", "1")].failures
    assert failures == {"REJECTED": 4, "CANCELED": 0, "BACKEND": 3, "OTHER": 0}
    with_summaries = parse_metrics_text((samples / "triton-2.51" / "metrics-with-summaries.txt").read_text())
    c = with_summaries.models[("add_sub", "1")]
    assert c.stage_us["request"] == 3186806 and c.success == 206


def test_unknown_future_families_are_ignored(metrics_text: str) -> None:
    text = metrics_text + (
        "# HELP nv_inference_future_thing_us Something Triton 3 adds\n"
        "# TYPE nv_inference_future_thing_us histogram\n"
        'nv_inference_future_thing_us_bucket{model="add_sub",version="1",le="+Inf"} 5\n'
        'nv_inference_future_thing_us_count{model="add_sub",version="1"} 5\n'
        'nv_inference_future_thing_us_sum{model="add_sub",version="1"} 9\n'
        "# TYPE other_vendor gauge\nother_vendor{model=\"x\"} 1\n")
    m = parse_metrics_text(text)
    assert set(m.models) == {("add_sub", "1")}
    assert m.models[("add_sub", "1")].success == 601


@pytest.mark.parametrize("bad", ["nv_x{model=\"a\" 1\n", "<html>oops</html>\n", "nv_x{model=\"a\"}\n", "# TYPE nv_x counter\nnv_x{model=\"a\"} abc\n"])
def test_malformed_metrics_text_raises(bad: str) -> None:
    with pytest.raises(MetricsTextError):
        parse_metrics_text(bad)


def test_statistics_http_and_grpc_shapes_agree(api: dict[str, Any]) -> None:
    http = parse_statistics(api["http_stats_all"])
    grpc = parse_statistics(api["grpc_stats_add_sub"])
    assert http == grpc
    s = http[("add_sub", "1")]
    assert sum(b.executions for b in s.batches.values()) == s.execution_count == 218
    assert s.batches[6].executions == 125 and s.batches[6].stage_ns["compute_infer"] == 725984251


def test_statistics_bad_model_is_left_out_and_a_bad_document_is_an_error(api: dict[str, Any]) -> None:
    good = api["http_stats_all"]["model_stats"][0]
    problems = Problems()
    doc = {"model_stats": [{"name": "m", "execution_count": "lots"}, good, "not an object"]}
    assert set(parse_statistics(doc, problems=problems)) == {("add_sub", "1")}
    assert problems.counts == {"bad_model": 2}
    with pytest.raises(ApiShapeError):
        parse_statistics({"model_stats": "nope"})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -3, -1.0, 2.5, "-7"])
def test_statistics_values_that_are_not_counts_are_dropped_per_batch_size(api: dict[str, Any], bad: Any) -> None:
    model = json.loads(json.dumps(api["http_stats_all"]["model_stats"][0]))
    model["batch_stats"][0]["compute_infer"]["ns"] = bad
    problems = Problems()
    stats = parse_statistics({"model_stats": [model]}, problems=problems)
    sizes = [b["batch_size"] for b in model["batch_stats"]]
    assert sorted(stats[("add_sub", "1")].batches) == sizes[1:]
    assert problems.counts == {"bad_value": 1}


def test_statistics_of_models_the_cap_refuses_are_not_read(api: dict[str, Any]) -> None:
    assert parse_statistics(api["http_stats_all"], admit=lambda model, version: model != "add_sub") == {}


def test_model_config_from_http_and_grpc(api: dict[str, Any]) -> None:
    a = parse_model_config(api["http_model_config"])
    assert a == parse_model_config(api["grpc_model_config"])
    assert (a.platform, a.max_batch_size, a.dynamic_batching, a.max_queue_delay_seconds, a.instance_count) == (
        "python", 8, True, 0.002, 1)
    plain = parse_model_config({"platform": "onnxruntime_onnx", "backend": "onnxruntime", "max_batch_size": 0,
                                "instance_group": [{"count": 2}, {"count": 3}]})
    assert (plain.platform, plain.dynamic_batching, plain.max_queue_delay_seconds, plain.instance_count) == (
        "onnxruntime_onnx", False, 0.0, 5)


def test_repository_index_only_ready(api: dict[str, Any]) -> None:
    assert parse_repository_index(api["http_repository_index"]) == {("add_sub", "1")}
    assert parse_repository_index(api["grpc_repository_index"]) == {("add_sub", "1")}
    assert parse_repository_index([{"name": "a", "version": "1", "state": "UNAVAILABLE"},
                                   {"name": "b", "state": "READY"}]) == {("b", "")}


def test_trace_settings_and_their_warnings(api: dict[str, Any]) -> None:
    h = parse_trace_settings(api["http_trace_settings_before"])
    assert (h.level, h.rate, h.log_frequency, h.file) == (("TIMESTAMPS",), "1", 50, "/var/log/triton/trace.json")
    g = parse_trace_settings(api["grpc_trace_settings_model"])
    assert (g.level, g.rate, g.log_frequency) == (("TIMESTAMPS",), "2", 20)
    assert _trace_result("t", h.level, h.rate, h.log_frequency, h.file).status == "pass"
    assert _trace_result("t", ("OFF",), "1", 50, "f").status == "warn"
    zero = _trace_result("t", ("TIMESTAMPS",), "1", 0, "f")
    assert zero.status == "warn" and "shutdown" in zero.detail


def test_target_names() -> None:
    assert target_name("http://triton-0.svc:8000") == "triton-0.svc:8000"
    assert target_name("https://t.example") == "t.example:443"
    assert default_metrics_url("http://10.0.0.5:8000") == "http://10.0.0.5:8002/metrics"
    assert default_metrics_url("http://[::1]:8000") == "http://[::1]:8002/metrics"


class _Fixed:
    def __init__(self, snaps: list[TritonSnapshot], passthrough: bool) -> None:
        self.snaps, self.passthrough = snaps, passthrough

    def collect(self) -> Any:
        return families(self.snaps, self.passthrough)


def _expose(snaps: list[TritonSnapshot], passthrough: bool = False) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(snaps, passthrough))
    return generate_latest(reg).decode()


def test_families_from_sample_snapshot(metrics_text: str, api: dict[str, Any]) -> None:
    snap = TritonSnapshot("h:8000", True, 0.01, parse_metrics_text(metrics_text),
                          parse_statistics(api["http_stats_all"]),
                          {("add_sub", "1"): parse_model_config(api["http_model_config"])})
    down = TritonSnapshot("other:8000", False, 2.0)
    v = sample_values(_expose([snap, down]))
    lab = {"target": "h:8000", "model": "add_sub", "version": "1"}

    def get(name: str, **extra: str) -> float:
        return v[(name, frozenset({**lab, **extra}.items()))]

    assert v[("inference_profiler_triton_up", frozenset({("target", "h:8000")}))] == 1
    assert v[("inference_profiler_triton_up", frozenset({("target", "other:8000")}))] == 0
    assert get("inference_profiler_triton_stage_seconds_total", stage="request") == pytest.approx(10.152103)
    assert get("inference_profiler_triton_stage_seconds_total", stage="compute_output") == pytest.approx(0.249697)
    assert get("inference_profiler_triton_requests_total", outcome="success", reason="") == 601
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):  # an operator alerts on REJECTED alone
        assert get("inference_profiler_triton_requests_total", outcome="failure", reason=reason) == 0
    assert get("inference_profiler_triton_inferences_total") == 1201
    assert get("inference_profiler_triton_executions_total") == 218
    assert get("inference_profiler_triton_pending_requests") == 0
    batches = {k: val for k, val in v.items() if k[0] == "inference_profiler_triton_batch_executions_total"}
    assert sum(batches.values()) == 218 and len(batches) == 8
    assert get("inference_profiler_triton_batch_stage_seconds_total", batch_size="6",
               stage="compute_infer") == pytest.approx(0.725984251)
    info = [dict(k[1]) for k in v if k[0] == "inference_profiler_triton_model_config_info"]
    assert info == [{**lab, "platform": "python", "max_batch_size": "8", "dynamic_batching": "true",
                     "max_queue_delay_seconds": "0.002", "instance_count": "1"}]
    assert not any(k[0].startswith("nv_") for k in v)  # passthrough is off by default
    assert not any(dict(k[1]).get("target") == "other:8000" and "up" not in k[0] and "duration" not in k[0]
                   for k in v)  # a down target exposes no stale model series


def test_passthrough_keeps_triton_names_and_adds_target(metrics_text: str) -> None:
    snap = TritonSnapshot("h:8000", True, 0.01, parse_metrics_text(metrics_text))
    text = _expose([snap], passthrough=True)
    v = sample_values(text)
    assert v[("nv_inference_request_success",
              frozenset({"target": "h:8000", "model": "add_sub", "version": "1"}.items()))] == 601
    assert v[("nv_cpu_memory_total_bytes", frozenset({("target", "h:8000")}))] == 25274793984
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed([snap], True))
    om = generate_openmetrics(reg).decode()
    assert any(f.name == "nv_inference_count" for f in parse_openmetrics(om))  # valid OpenMetrics too


# --- hostile /metrics: values, repeats, bad lines, caps ------------------------------------

HEAD = "# HELP nv_inference_count Number of inferences\n# TYPE nv_inference_count counter\n"


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf", "-4"])
def test_counters_that_are_not_counts_are_dropped_and_counted(value: str) -> None:
    m = parse_metrics_text(HEAD + f'nv_inference_count{{model="a",version="1"}} {value}\n'
                           'nv_inference_count{model="b",version="1"} 5\n')
    assert set(m.models) == {("b", "1")} and m.models[("b", "1")].inferences == 5
    assert m.problems.counts == {"bad_value": 1}
    assert [len(f.samples) for f in m.raw] == [1]  # the passthrough does not carry it either


def test_a_repeated_family_is_kept_once(metrics_text: str) -> None:
    twice = metrics_text + metrics_text.replace(" 601\n", " 999\n")
    m = parse_metrics_text(twice)
    assert m.models[("add_sub", "1")].success == 601  # the first is kept
    assert m.problems.counts["duplicate_series"] > 0
    snap = TritonSnapshot("h:8000", True, 0.01, m)
    names = [(s.name, tuple(sorted(s.labels.items()))) for f in families([snap], True) for s in f.samples]
    assert len(names) == len(set(names))


def test_a_bad_line_costs_only_itself(metrics_text: str) -> None:
    broken = metrics_text.replace('nv_inference_exec_count{model="add_sub",version="1"} 218',
                                  'nv_inference_exec_count{model="add_sub",version="1"} lots')
    m = parse_metrics_text(broken + 'nv_garbage{oops\n')
    c = m.models[("add_sub", "1")]
    assert c.executions is None and c.success == 601 and c.stage_us["request"] == 10152103
    assert m.problems.counts == {"bad_line": 2}


def test_families_past_the_series_cap_are_dropped_whole(metrics_text: str) -> None:
    full = parse_metrics_text(metrics_text)
    kept = sum(len(f.samples) for f in full.raw)
    m = parse_metrics_text(metrics_text, max_series=kept - 1)
    assert m.problems.counts["too_many_series"] >= 1
    assert sum(len(f.samples) for f in m.raw) < kept
    by_name = {f.name: len(f.samples) for f in full.raw}
    assert all(by_name[f.name] == len(f.samples) for f in m.raw)  # never half a family


def test_lines_of_models_past_the_cap_are_not_read(metrics_text: str) -> None:
    admitted: list[str] = []
    m = parse_metrics_text(metrics_text.replace('model="add_sub"', 'model="other"', 1),
                           admit=lambda model, version: (admitted.append(model) or model == "add_sub"))
    assert set(m.models) == {("add_sub", "1")} and "other" in admitted
