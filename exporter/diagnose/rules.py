"""The tuning rules: pure functions from one model's Evidence to Findings.

Each rule says what it saw (the numbers), what to change (config keys and values, or a
client change) and which measured number should move, and in which direction, if the
change works. Thresholds are the fields of `Thresholds` (docs/tuning.md explains each).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .evidence import COPY_SEGMENTS, FRONTEND_SEGMENTS, Evidence


@dataclass(frozen=True)
class Thresholds:
    min_requests: float = field(default=20, metadata={
        "help": "models with fewer traced requests in the window are not judged"})
    queue_share: float = field(default=0.5, metadata={
        "help": "queue share of end_to_end from which a model counts as queue-dominated"})
    batch_full_share: float = field(default=0.5, metadata={
        "help": "share of executions at max_batch_size from which batches count as full"})
    busy_share: float = field(default=0.7, metadata={
        "help": "share of the window the instances compute from which a queue counts as saturation"})
    delay_gap_ratio: float = field(default=4.0, metadata={
        "help": "max_queue_delay this many times the arrival gap counts as too long"})
    copy_share: float = field(default=0.2, metadata={
        "help": "compute_input + compute_output share of end_to_end that counts as copy-bound"})
    ensemble_step_share: float = field(default=0.6, metadata={
        "help": "one ensemble step's share of the ensemble's end_to_end that counts as dominating"})
    frontend_share: float = field(default=0.3, metadata={
        "help": "recv + send + frontend_overhead share of end_to_end that counts as frontend-bound"})
    large_message_bytes: float = field(default=65536, metadata={
        "help": "mean request or response message size (eBPF) that counts as large"})
    socket_queue_share: float = field(default=0.1, metadata={
        "help": "socket queue time (eBPF) as a share of end_to_end that counts as high"})
    streaming_min_responses: float = field(default=1.5, metadata={
        "help": "mean responses per request from which a model counts as streaming"})
    first_response_queue_share: float = field(default=0.5, metadata={
        "help": "queue share of first_response that counts as queue-dominated for streaming models"})

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def replace(self, values: dict[str, Any]) -> Thresholds:
        """A copy with `values` set; unknown names or non-numbers raise ValueError with the name."""
        known = set(self.names())
        out: dict[str, float] = {}
        for k, v in values.items():
            key = k.replace("-", "_")
            if key not in known:
                raise ValueError(f"unknown threshold {k!r} (known: {', '.join(sorted(known))})")
            try:
                num = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"threshold {k} must be a number, got {v!r}") from None
            if not math.isfinite(num) or num < 0:
                raise ValueError(f"threshold {k} must be a finite number >= 0, got {v!r}")
            out[key] = num
        return Thresholds(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **out})


@dataclass(frozen=True)
class Expectation:
    """What should move if the change works: a number `measure()` computes, and its direction."""

    metric: str
    direction: str  # "down" or "up"
    before: float | None


@dataclass
class Finding:
    rule: str
    model: str
    version: str
    summary: str  # the finding with its numbers, one sentence
    numbers: dict[str, float]
    change: str  # what to change, concretely
    config: dict[str, float | int | str]  # config.pbtxt keys to set (dotted), empty for client or server changes
    expect: list[Expectation]
    gain_seconds: float  # time per request the rule targets: the order of the report


def measure(e: Evidence, metric: str) -> float | None:
    """The numbers findings promise to move, computed the same way before and after."""
    if metric == "queue_p95":
        return e.queue_p95
    if metric == "queue_mean":
        return e.mean("queue")
    if metric == "end_to_end_mean":
        return e.end_to_end_mean
    if metric == "copy_share":
        return e.share(*COPY_SEGMENTS)
    if metric == "frontend_share":
        return e.share(*FRONTEND_SEGMENTS)
    if metric == "mean_batch_size":
        return e.mean_batch_size
    if metric == "throughput":
        return e.requests / e.window_seconds if e.window_seconds else None
    if metric == "socket_queue_mean":
        return e.socket_queue_mean
    if metric == "first_response_mean":
        return e.first_response_mean
    if metric == "dominant_step_share":
        total = e.end_to_end_mean
        return max(e.steps.values()) / total if e.steps and total > 0 else None
    raise KeyError(metric)


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"


def _share(v: float | None) -> str:
    return "an unknown share" if v is None else f"{v:.0%}"


def _batches(full: float | None, max_batch_size: int) -> str:
    if full is None:
        return "batch sizes unknown"
    return f"{full:.0%} of executions reach max_batch_size {max_batch_size}"


def _expect(e: Evidence, *pairs: tuple[str, str]) -> list[Expectation]:
    return [Expectation(m, d, measure(e, m)) for m, d in pairs]


def queue_rule(e: Evidence, t: Thresholds) -> Finding | None:
    """Queue-dominated: exactly one of enable batching, shorter delay, or more capacity."""
    share = e.share("queue")
    if share < t.queue_share:
        return None
    queue = e.mean("queue")
    p95 = f", p95 {_ms(e.queue_p95)}" if e.queue_p95 is not None else ""
    seen = f"requests wait in the queue for {share:.0%} of end_to_end (queue mean {_ms(queue)}{p95})"
    numbers = {"queue_share": share, "queue_mean_seconds": queue, "end_to_end_mean_seconds": e.end_to_end_mean}
    if e.queue_p95 is not None:
        numbers["queue_p95_seconds"] = e.queue_p95
    c = e.config
    if c is None:
        return Finding("queue_saturated", e.model, e.version, seen + "; model config unknown",
                       numbers, "more capacity: raise instance_group count, or enable dynamic_batching "
                       "(run diagnose with --triton URL for concrete values)", {},
                       _expect(e, ("queue_p95", "down"), ("throughput", "up")), queue)
    numbers |= {"instance_count": c.instance_count, "max_batch_size": c.max_batch_size}
    full = e.batch_share_at_least(c.max_batch_size) if c.max_batch_size > 0 else None
    if full is not None:
        numbers["full_batch_share"] = full
    mean_batch = e.mean_batch_size
    if mean_batch is not None:
        numbers["mean_batch_size"] = mean_batch
    if c.max_batch_size >= 2 and not c.dynamic_batching:
        return Finding(
            "no_dynamic_batching", e.model, e.version,
            f"{seen}; max_batch_size {c.max_batch_size} but no dynamic_batching: every execution runs one request",
            numbers, "config.pbtxt: add `dynamic_batching { max_queue_delay_microseconds: 0 }` "
            "(queued requests run together, no added wait)",
            {"dynamic_batching.max_queue_delay_microseconds": 0},
            _expect(e, ("mean_batch_size", "up"), ("queue_p95", "down")), queue)
    gap = e.arrival_gap
    busy = e.utilization
    if busy is not None:
        numbers["utilization"] = busy
    idle = busy is not None and busy < t.busy_share
    small = full is not None and full < t.batch_full_share
    if c.dynamic_batching and (small or idle) and gap is not None \
            and c.max_queue_delay_seconds >= t.delay_gap_ratio * gap:
        new_us = max(1, round(gap * 1e6))
        numbers |= {"max_queue_delay_seconds": c.max_queue_delay_seconds, "arrival_gap_seconds": gap}
        return Finding(
            "queue_delay_too_long", e.model, e.version,
            f"{seen}; {_batches(full, c.max_batch_size)}, the instances compute {_share(busy)} of the time, "
            f"while max_queue_delay {_ms(c.max_queue_delay_seconds)} is "
            f"{c.max_queue_delay_seconds / gap:.0f}x the arrival gap {_ms(gap)}",
            numbers, f"config.pbtxt: dynamic_batching {{ max_queue_delay_microseconds: {new_us} }} "
            f"(was {round(c.max_queue_delay_seconds * 1e6)}: about one arrival gap)",
            {"dynamic_batching.max_queue_delay_microseconds": new_us},
            _expect(e, ("queue_p95", "down"), ("end_to_end_mean", "down")),
            queue * (1 - new_us / 1e6 / c.max_queue_delay_seconds))
    if idle:
        return None  # waiting while the instances are mostly idle: not saturation, and no rule explains it
    new_count = c.instance_count * 2
    config: dict[str, float | int | str] = {"instance_group.count": new_count}
    if full is not None:
        batching = (f"{full:.0%} of executions at max_batch_size {c.max_batch_size}"
                    if full >= t.batch_full_share else f"batches small ({full:.0%} at max_batch_size "
                    f"{c.max_batch_size}) with a short delay")
    else:
        batching = "no batching (max_batch_size " + str(c.max_batch_size) + ")"
    change = f"config.pbtxt: instance_group [{{ count: {new_count} }}] (was {c.instance_count})"
    if full is not None and full >= t.batch_full_share:
        change += f", or max_batch_size: {c.max_batch_size * 2} (was {c.max_batch_size})"
    return Finding(
        "queue_saturated", e.model, e.version,
        f"{seen}; {c.instance_count} instance(s) computing {_share(busy)} of the time, {batching}: "
        "the model cannot take requests as fast as they come",
        numbers, change, config, _expect(e, ("queue_p95", "down"), ("throughput", "up")), queue)


def copy_rule(e: Evidence, t: Thresholds) -> Finding | None:
    share = e.share(*COPY_SEGMENTS)
    if share < t.copy_share:
        return None
    cin, cout = e.mean("compute_input"), e.mean("compute_output")
    return Finding(
        "copy_bound", e.model, e.version,
        f"moving tensors in and out of the model takes {share:.0%} of end_to_end "
        f"(compute_input {_ms(cin)}, compute_output {_ms(cout)}; compute_infer {_ms(e.mean('compute_infer'))})",
        {"copy_share": share, "compute_input_seconds": cin, "compute_output_seconds": cout},
        "client: pass inputs and outputs through shared memory (tritonclient system or CUDA shared memory) "
        "or at least binary tensor data; python backend: exchange tensors with pb_utils.Tensor.from_dlpack / "
        "to_dlpack instead of numpy copies; ensembles: keep tensors on the device between steps",
        {}, _expect(e, ("copy_share", "down"), ("end_to_end_mean", "down")), cin + cout)


def ensemble_rule(e: Evidence, t: Thresholds) -> Finding | None:
    total = e.end_to_end_mean
    if len(e.steps) < 2 or total <= 0:
        return None
    step, seconds = max(e.steps.items(), key=lambda kv: kv[1])
    share = seconds / total
    if share < t.ensemble_step_share:
        return None
    others = ", ".join(f"{s} {_ms(v)}" for s, v in sorted(e.steps.items()) if s != step)
    return Finding(
        "ensemble_step_dominates", e.model, e.version,
        f"step {step} takes {share:.0%} of the ensemble's end_to_end ({_ms(seconds)} of {_ms(total)}; {others})",
        {"step_share": share, "step_seconds": seconds, "end_to_end_mean_seconds": total},
        f"tune {step} first: run diagnose on it (its own findings apply), e.g. more instances of {step} "
        f"(instance_group count) or dynamic batching for it",
        {}, _expect(e, ("dominant_step_share", "down"), ("end_to_end_mean", "down")), seconds)


def frontend_rule(e: Evidence, t: Thresholds) -> Finding | None:
    share = e.share(*FRONTEND_SEGMENTS)
    if share < t.frontend_share:
        return None
    sizes = [b for b in (e.request_bytes_mean, e.response_bytes_mean) if b is not None]
    if sizes and max(sizes) < t.large_message_bytes:
        return None  # the frontend's time is not the payload's
    size = (f"messages average {max(sizes) / 1024:.0f} KiB" if sizes
            else "message sizes unknown (no eBPF on this input)")
    numbers = {"frontend_share": share, **{f"{s}_seconds": e.mean(s) for s in FRONTEND_SEGMENTS}}
    if sizes:
        numbers["message_bytes"] = max(sizes)
    parts = ", ".join(f"{s} {_ms(e.mean(s))}" for s in FRONTEND_SEGMENTS)
    return Finding(
        "frontend_payload", e.model, e.version,
        f"the frontend (receiving, decoding, encoding, sending) takes {share:.0%} of end_to_end ({parts}); {size}",
        numbers,
        "client: clients on Triton's node pass tensors through system shared memory "
        "(tritonclient register_system_shared_memory, InferInput.set_shared_memory, "
        "InferRequestedOutput.set_shared_memory); remote clients send and ask for binary tensor data "
        "(binary_data=True, never JSON tensors) or use gRPC, and compress over slow links",
        {}, _expect(e, ("frontend_share", "down"), ("end_to_end_mean", "down")), e.mean(*FRONTEND_SEGMENTS))


def socket_rule(e: Evidence, t: Thresholds) -> Finding | None:
    total = e.end_to_end_mean
    if e.socket_queue_mean is None or total <= 0:
        return None
    share = e.socket_queue_mean / total
    if share < t.socket_queue_share:
        return None
    return Finding(
        "socket_queue_high", e.model, e.version,
        f"data waits {_ms(e.socket_queue_mean)} on Triton's sockets before a frontend thread reads it, "
        f"{share:.0%} of this model's end_to_end (node-wide eBPF figure)",
        {"socket_queue_share": share, "socket_queue_mean_seconds": e.socket_queue_mean},
        "tritonserver: more frontend threads, e.g. --http-thread-count 16 (default 8); for gRPC raise "
        "--grpc-infer-allocation-pool-size",
        {}, _expect(e, ("socket_queue_mean", "down")), e.socket_queue_mean)


def streaming_rule(e: Evidence, t: Thresholds) -> Finding | None:
    if e.responses_mean is None or e.responses_mean < t.streaming_min_responses or not e.first_response_mean:
        return None
    queue = e.mean("queue")
    share = queue / e.first_response_mean
    if share < t.first_response_queue_share:
        return None
    c = e.config
    count = c.instance_count if c is not None else None
    change = (f"config.pbtxt: instance_group [{{ count: {count * 2} }}] (was {count})" if count
              else "more instances (instance_group count)")
    return Finding(
        "streaming_first_response_queued", e.model, e.version,
        f"the first response ({_ms(e.first_response_mean)}) is {share:.0%} queue ({_ms(queue)}) and "
        f"{1 - share:.0%} generation, over {e.responses_mean:.1f} responses per request",
        {"first_response_queue_share": share, "first_response_mean_seconds": e.first_response_mean,
         "queue_mean_seconds": queue},
        change + ": requests wait for a free instance before generating",
        {"instance_group.count": count * 2} if count else {},
        _expect(e, ("first_response_mean", "down")), queue)


RULES: tuple[Callable[[Evidence, Thresholds], Finding | None], ...] = (
    queue_rule, copy_rule, ensemble_rule, frontend_rule, socket_rule, streaming_rule,
)
# one line per rule: what to change, for places without room for the numbers (the Findings panel)
ADVICE: dict[str, str] = {
    "queue_saturated": "queue-dominated, instances busy: more instances (instance_group count) or a larger max_batch_size",
    "no_dynamic_batching": "queue-dominated, batchable model: add dynamic_batching { max_queue_delay_microseconds: 0 }",
    "queue_delay_too_long": "small batches waiting out max_queue_delay: set it to about one arrival gap",
    "copy_bound": "compute_input + compute_output large: shared memory, DLPack, binary tensor data",
    "ensemble_step_dominates": "one ensemble step dominates: tune that step first",
    "frontend_payload": "frontend time on large messages: shared memory, binary tensor data, gRPC",
    "socket_queue_high": "requests wait on the socket: more frontend threads (--http-thread-count)",
    "streaming_first_response_queued": "first response mostly queue: more instances",
}


def diagnose(evidence: list[Evidence], t: Thresholds) -> list[Finding]:
    """Every finding for every model with enough requests, each model's in order of expected gain."""
    out: list[Finding] = []
    for e in sorted(evidence, key=lambda x: (x.model, x.version)):
        if e.requests < t.min_requests:
            continue
        found = [f for rule in RULES if (f := rule(e, t)) is not None]
        out.extend(sorted(found, key=lambda f: -f.gain_seconds))
    return out
