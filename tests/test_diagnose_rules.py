"""diagnose: every rule's threshold edges on synthetic evidence (pure logic, no I/O), the
/metrics adapter on exporter text, and the CLI's exit codes on files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.diagnose import Evidence, ModelConfig, Thresholds, diagnose
from exporter.diagnose.evidence_inputs import evidence_from_samples, parse_samples, sample_delta
from exporter.diagnose.rules import (
    copy_rule,
    ensemble_rule,
    frontend_rule,
    measure,
    queue_rule,
    socket_rule,
    streaming_rule,
)

T = Thresholds()
EPS = 1e-9


def ev(queue: float = 0.0, infer: float = 1.0, **kw: object) -> Evidence:
    """A model whose end_to_end is 1 s + queue: shares are easy to set exactly."""
    segs = {"queue": queue, "compute_infer": infer}
    segs.update(kw.pop("segments", {}))  # type: ignore[arg-type]
    e = Evidence("m", "1", requests=100, window_seconds=10.0, segments=segs)
    for k, v in kw.items():
        setattr(e, k, v)
    return e


def queue_ev(share: float, **kw: object) -> Evidence:
    """Queue share exactly `share` of end_to_end (end_to_end 1 s)."""
    return ev(queue=share, infer=1 - share, **kw)


# --- queue rules ----------------------------------------------------------------------------

def test_queue_share_edge() -> None:
    cfg = ModelConfig(max_batch_size=0, instance_count=1)
    assert queue_rule(queue_ev(T.queue_share - 0.01, config=cfg), T) is None
    f = queue_rule(queue_ev(T.queue_share, config=cfg), T)
    assert f is not None and f.rule == "queue_saturated"
    assert f.config == {"instance_group.count": 2}
    assert "count: 2" in f.change and "was 1" in f.change
    assert f.numbers["queue_share"] == pytest.approx(T.queue_share)


def test_queue_saturated_with_full_batches_offers_larger_batch() -> None:
    cfg = ModelConfig(max_batch_size=8, dynamic_batching=True, max_queue_delay_seconds=0.0, instance_count=3)
    full = {8: 50.0, 4: 50.0}  # exactly batch_full_share at the maximum
    f = queue_rule(queue_ev(0.7, config=cfg, batch_executions=full, window_seconds=1.0), T)
    assert f is not None and f.rule == "queue_saturated"
    assert f.config == {"instance_group.count": 6}
    assert "max_batch_size: 16" in f.change


def test_no_dynamic_batching_edge() -> None:
    off = ModelConfig(max_batch_size=2, dynamic_batching=False)
    f = queue_rule(queue_ev(0.6, config=off), T)
    assert f is not None and f.rule == "no_dynamic_batching"
    assert f.config == {"dynamic_batching.max_queue_delay_microseconds": 0}
    assert [x.metric for x in f.expect] == ["mean_batch_size", "queue_p95"]
    # max_batch_size 1 cannot batch: more instances instead
    f1 = queue_rule(queue_ev(0.6, config=ModelConfig(max_batch_size=1)), T)
    assert f1 is not None and f1.rule == "queue_saturated"


def test_queue_delay_edges() -> None:
    # 100 requests in 10 s: arrival gap 0.1 s; delay_gap_ratio 4 -> 0.4 s is the edge
    small = {1: 90.0, 8: 10.0}
    def cfg(delay: float) -> ModelConfig:
        return ModelConfig(max_batch_size=8, dynamic_batching=True, max_queue_delay_seconds=delay)
    f = queue_rule(queue_ev(0.8, config=cfg(0.4), batch_executions=small), T)
    assert f is not None and f.rule == "queue_delay_too_long"
    assert f.config == {"dynamic_batching.max_queue_delay_microseconds": 100000}
    below = queue_rule(queue_ev(0.8, config=cfg(0.4 - 1e-6), batch_executions=small), T)
    assert below is not None and below.rule == "queue_saturated"  # busy, delay below the edge
    # 100 requests in 5 s (gap 0.05 s) of 0.2 s compute, 22 batches: busy 89%
    busy = {"window_seconds": 5.0}
    full = queue_rule(queue_ev(0.8, config=cfg(1.0), batch_executions={1: 50.0, 8: 50.0}, **busy), T)
    assert full is not None and full.rule == "queue_saturated"  # full batches on busy instances
    almost = queue_rule(queue_ev(0.8, config=cfg(1.0), batch_executions={1: 50.01, 8: 49.99}, **busy), T)
    assert almost is not None and almost.rule == "queue_delay_too_long"
    # the arrival gap unknown: no claim about the delay (nor about utilization)
    no_gap = queue_ev(0.8, config=cfg(1.0), batch_executions=small, window_seconds=None)
    f2 = queue_rule(no_gap, T)
    assert f2 is not None and f2.rule == "queue_saturated"


def test_busy_share_edge() -> None:
    """Full batches: a long delay is blamed only while the instances are mostly idle."""
    def e(window: float, delay: float) -> Evidence:
        # 100 requests, one batch of 1 each, 0.2 s compute: busy = 20 s / window
        return queue_ev(0.8, batch_executions={1: 100.0}, window_seconds=window,
                        config=ModelConfig(max_batch_size=1, dynamic_batching=True, max_queue_delay_seconds=delay))
    at_edge = e(20 / T.busy_share * (1 - 1e-9), 10.0)
    assert at_edge.utilization == pytest.approx(T.busy_share)
    f = queue_rule(at_edge, T)
    assert f is not None and f.rule == "queue_saturated"
    idle = queue_rule(e(20 / T.busy_share + 0.1, 10.0), T)
    assert idle is not None and idle.rule == "queue_delay_too_long"
    # idle, and the delay is short: neither saturation nor the delay explains the queue
    assert queue_rule(e(100.0, 0.0), T) is None


def test_queue_without_config_is_generic() -> None:
    f = queue_rule(queue_ev(0.9), T)
    assert f is not None and f.rule == "queue_saturated" and f.config == {}


# --- copies, ensembles, frontend, sockets, streaming -----------------------------------------

def test_copy_edge() -> None:
    def e(copy: float) -> Evidence:  # end_to_end exactly 1 s
        return ev(infer=1 - copy, segments={"compute_input": copy / 2, "compute_output": copy / 2})
    assert copy_rule(e(T.copy_share - 0.001), T) is None
    f = copy_rule(e(T.copy_share), T)
    assert f is not None and f.rule == "copy_bound" and f.expect[0].metric == "copy_share"
    assert f.gain_seconds == pytest.approx(T.copy_share)


def test_ensemble_edge() -> None:
    def e(step: float) -> Evidence:
        return ev(infer=1.0, steps={"pre": 1 - step, "big": step})
    assert ensemble_rule(e(T.ensemble_step_share - 0.01), T) is None
    f = ensemble_rule(e(T.ensemble_step_share), T)
    assert f is not None and "big" in f.summary and f.numbers["step_share"] == pytest.approx(T.ensemble_step_share)
    assert ensemble_rule(ev(steps={"only": 0.9}), T) is None  # one step: nothing to compare


def test_frontend_edges() -> None:
    def e(share: float, size: float | None) -> Evidence:
        return ev(infer=1 - share, segments={"recv": share / 2, "frontend_overhead": share / 2},
                  request_bytes_mean=size)
    big = T.large_message_bytes
    assert frontend_rule(e(T.frontend_share - 0.01, big), T) is None
    assert frontend_rule(e(T.frontend_share, big), T) is not None
    assert frontend_rule(e(T.frontend_share, big - 1), T) is None  # small messages: not the payload
    unknown = frontend_rule(e(0.5, None), T)
    assert unknown is not None and "unknown" in unknown.summary


def test_socket_edge() -> None:
    assert socket_rule(ev(socket_queue_mean=None), T) is None
    assert socket_rule(ev(socket_queue_mean=T.socket_queue_share - 0.001), T) is None
    f = socket_rule(ev(socket_queue_mean=T.socket_queue_share), T)
    assert f is not None and "--http-thread-count" in f.change


def test_streaming_edges() -> None:
    cfg = ModelConfig(instance_count=2)
    def e(responses: float, queue: float) -> Evidence:
        return ev(queue=queue, infer=2.0, responses_mean=responses, first_response_mean=1.0, config=cfg)
    assert streaming_rule(e(T.streaming_min_responses - 0.01, 0.9), T) is None  # unary
    assert streaming_rule(e(T.streaming_min_responses, T.first_response_queue_share - 0.01), T) is None
    f = streaming_rule(e(T.streaming_min_responses, T.first_response_queue_share), T)
    assert f is not None and f.config == {"instance_group.count": 4}
    assert "generation" in f.summary


# --- the whole advisor --------------------------------------------------------------------

def test_min_requests_and_order() -> None:
    busy = ev(queue=2.0, infer=0.2, segments={"compute_input": 0.4, "compute_output": 0.4},
              config=ModelConfig())  # queue 67%, copies 27% of end_to_end
    found = diagnose([busy], T)
    assert [f.rule for f in found] == ["queue_saturated", "copy_bound"]  # 2 s queue before 0.8 s copies
    busy.requests = T.min_requests - 1
    assert diagnose([busy], T) == []


def test_healthy_model_has_no_findings() -> None:
    healthy = ev(queue=0.01, infer=1.0, segments={"compute_input": 0.02, "recv": 0.01},
                 config=ModelConfig(max_batch_size=8, dynamic_batching=True), batch_executions={1: 100.0})
    assert diagnose([healthy], T) == []


def test_thresholds_replace_and_errors() -> None:
    t = T.replace({"queue-share": "0.8", "copy_share": 0.1})
    assert (t.queue_share, t.copy_share) == (0.8, 0.1)
    with pytest.raises(ValueError, match="unknown threshold"):
        T.replace({"nope": 1})
    with pytest.raises(ValueError, match="must be a number"):
        T.replace({"queue_share": "x"})
    with pytest.raises(ValueError, match=">= 0"):
        T.replace({"queue_share": "-1"})


def test_measure_batch_and_throughput() -> None:
    e = ev(batch_executions={2: 10.0, 4: 10.0})
    assert measure(e, "mean_batch_size") == 3
    assert measure(e, "throughput") == 10
    assert e.batch_share_at_least(4) == 0.5


# --- /metrics samples ---------------------------------------------------------------------

BEFORE = """\
# TYPE inference_profiler_traces counter
inference_profiler_traces_total{model="m",version="1",protocol="http"} 100
# TYPE inference_profiler_timeline_seconds counter
inference_profiler_timeline_seconds_total{model="m",version="1",protocol="http",segment="queue"} 10
inference_profiler_timeline_seconds_total{model="m",version="1",protocol="http",segment="compute_infer"} 5
"""
AFTER = """\
# TYPE inference_profiler_traces counter
inference_profiler_traces_total{model="m",version="1",protocol="http"} 150
inference_profiler_traces_total{model="m",version="1",protocol="grpc"} 50
# TYPE inference_profiler_timeline_seconds counter
inference_profiler_timeline_seconds_total{model="m",version="1",protocol="http",segment="queue"} 18
inference_profiler_timeline_seconds_total{model="m",version="1",protocol="http",segment="compute_infer"} 6
inference_profiler_timeline_seconds_total{model="m",version="1",protocol="grpc",segment="queue"} 8
inference_profiler_timeline_seconds_total{model="m",version="1",protocol="grpc",segment="compute_infer"} 2
# TYPE inference_profiler_stage_duration_seconds histogram
inference_profiler_stage_duration_seconds_bucket{model="m",version="1",protocol="http",stage="queue",le="0.1"} 0
inference_profiler_stage_duration_seconds_bucket{model="m",version="1",protocol="http",stage="queue",le="0.2"} 80
inference_profiler_stage_duration_seconds_bucket{model="m",version="1",protocol="http",stage="queue",le="0.4"} 100
inference_profiler_stage_duration_seconds_bucket{model="m",version="1",protocol="http",stage="queue",le="+Inf"} 100
inference_profiler_stage_duration_seconds_sum{model="m",version="1",protocol="http",stage="queue"} 16
inference_profiler_stage_duration_seconds_count{model="m",version="1",protocol="http",stage="queue"} 100
# TYPE inference_profiler_triton_batch_executions counter
inference_profiler_triton_batch_executions_total{target="t",model="m",version="1",batch_size="1"} 30
inference_profiler_triton_batch_executions_total{target="t",model="m",version="1",batch_size="4"} 10
# TYPE inference_profiler_triton_model_config_info gauge
inference_profiler_triton_model_config_info{target="t",model="m",version="1",platform="python",\
max_batch_size="4",dynamic_batching="true",max_queue_delay_seconds="1",instance_count="1"} 1
# TYPE inference_profiler_tcp_socket_queue_seconds histogram
inference_profiler_tcp_socket_queue_seconds_bucket{port="8000",le="+Inf"} 10
inference_profiler_tcp_socket_queue_seconds_sum{port="8000"} 0.05
inference_profiler_tcp_socket_queue_seconds_count{port="8000"} 10
"""


def test_samples_to_evidence() -> None:
    samples = sample_delta(parse_samples(BEFORE), parse_samples(AFTER))
    [e] = evidence_from_samples(samples, window=20.0)
    assert e.requests == 100  # 50 more over http, 50 new over grpc
    assert e.segments == {"queue": pytest.approx(0.16), "compute_infer": pytest.approx(0.03)}
    assert e.queue_p95 == pytest.approx(0.2 + 0.2 * (95 - 80) / 20)  # Prometheus' interpolation
    assert e.batch_executions == {1: 30, 4: 10}
    assert e.config == ModelConfig("python", 4, True, 1.0, 1)
    assert e.socket_queue_mean == pytest.approx(0.005)
    assert e.arrival_gap == pytest.approx(0.2)
    [f, *_] = diagnose([e], T)
    assert f.rule == "queue_delay_too_long"  # 1 s delay vs 0.2 s gap, 25% full batches
    assert f.config == {"dynamic_batching.max_queue_delay_microseconds": 200000}


# --- CLI ----------------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter.cli", "diagnose", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_errors_exit_2(tmp_path: Path) -> None:
    r = cli(str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "not a readable file" in r.stderr
    r = cli()
    assert r.returncode == 2 and "exactly one input" in r.stderr
    f = tmp_path / "t.json"
    f.write_text("[]")
    r = cli(str(f), "--set", "queue_share=abc")
    assert r.returncode == 2 and "must be a number" in r.stderr


def test_cli_rolling_sample_json(samples: Path) -> None:
    files = sorted((samples / "triton-2.51" / "rolling-traces").glob("trace.json.*"),
                   key=lambda p: int(p.suffix[1:]))
    assert files
    r = cli("--format", "json", *map(str, files))
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    assert doc["models"] and all(m["requests"] > 0 for m in doc["models"])
    assert r.returncode == (1 if any(m["findings"] for m in doc["models"]) else 0)


def test_apply_config_sets_the_printed_keys() -> None:
    from exporter.demo.tuning import SCENARIOS, apply_config

    text = SCENARIOS["patient"].config()
    out = apply_config(text, {"dynamic_batching.max_queue_delay_microseconds": 25000, "instance_group.count": 3})
    assert "max_queue_delay_microseconds: 25000 }" in out and "count: 3 kind" in out
    plain = SCENARIOS["calm"].config()
    assert "dynamic_batching { max_queue_delay_microseconds: 0 }" in apply_config(
        plain, {"dynamic_batching.max_queue_delay_microseconds": 0})
    with pytest.raises(ValueError, match="no way"):
        apply_config(plain, {"optimization.priority": 1})


def test_cli_thresholds_from_flags_and_file(samples: Path, tmp_path: Path) -> None:
    """The sample's add_sub queues for about half its time: found by default, not past a raised threshold."""
    files = [str(p) for p in sorted((samples / "triton-2.51" / "rolling-traces").glob("trace.json.*"))]
    found = cli("--format", "json", *files)
    [model] = json.loads(found.stdout)["models"]
    share = model["findings"][0]["numbers"]["queue_share"]
    assert found.returncode == 1 and T.queue_share <= share < 0.9
    assert cli("--set", "queue_share=0.9", *files).returncode == 0
    f = tmp_path / "thresholds.yaml"
    f.write_text("diagnose:\n  queue_share: 0.9\n")
    quiet = cli("--thresholds", str(f), "--format", "json", *files)
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["thresholds"]["queue_share"] == 0.9
    f.write_text("queue_shares: 0.9\n")
    bad = cli("--thresholds", str(f), *files)
    assert bad.returncode == 2 and "unknown threshold 'queue_shares'" in bad.stderr


def test_cli_unreachable_exporter_exit_2() -> None:
    from exporter.demo.launcher import free_port

    r = cli("--metrics-url", f"http://127.0.0.1:{free_port()}/metrics", "--window", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error:" in r.stderr
