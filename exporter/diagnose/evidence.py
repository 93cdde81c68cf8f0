"""The evidence the tuning rules read: per model, plain numbers, filled by the sources.

Every time is seconds per request (a mean over the window the source covers); a value
a source cannot give is None, and a rule that needs it does not fire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FRONTEND_SEGMENTS = ("recv", "send", "frontend_overhead")
COPY_SEGMENTS = ("compute_input", "compute_output")
COMPUTE_SEGMENTS = ("compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ModelConfig:
    """The parts of a model's config.pbtxt the rules reason about."""

    platform: str = ""
    max_batch_size: int = 0
    dynamic_batching: bool = False
    max_queue_delay_seconds: float = 0.0
    instance_count: int = 1


@dataclass
class Evidence:
    model: str
    version: str = ""
    requests: float = 0.0  # traces counted in the window
    window_seconds: float | None = None  # how long the traffic took (arrival gap = window / requests)
    segments: dict[str, float] = field(default_factory=dict)  # mean seconds per request per exclusive segment
    queue_p95: float | None = None  # of the queue stage
    first_response_mean: float | None = None
    responses_mean: float | None = None  # responses per request (> 1: streaming)
    batch_executions: dict[int, float] = field(default_factory=dict)  # batch size -> executions
    config: ModelConfig | None = None
    request_bytes_mean: float | None = None  # per message on Triton's ports (eBPF; node-wide)
    response_bytes_mean: float | None = None
    socket_queue_mean: float | None = None  # per read on Triton's ports (eBPF; node-wide)
    steps: dict[str, float] = field(default_factory=dict)  # ensemble step -> its seconds per parent request

    @property
    def end_to_end_mean(self) -> float:
        return sum(self.segments.values())

    def share(self, *segments: str) -> float:
        """Fraction of end_to_end spent in these segments (0 without a timeline)."""
        total = self.end_to_end_mean
        return sum(self.segments.get(s, 0.0) for s in segments) / total if total > 0 else 0.0

    def mean(self, *segments: str) -> float:
        return sum(self.segments.get(s, 0.0) for s in segments)

    @property
    def arrival_gap(self) -> float | None:
        """Mean time between two requests arriving, from the window the requests came in."""
        if self.window_seconds is None or self.requests < 2:
            return None
        return self.window_seconds / self.requests

    @property
    def executions(self) -> float:
        return sum(self.batch_executions.values())

    @property
    def mean_batch_size(self) -> float | None:
        n = self.executions
        return sum(b * c for b, c in self.batch_executions.items()) / n if n else None

    @property
    def utilization(self) -> float | None:
        """Fraction of the window the model's instances were computing: executions x compute per
        execution (the requests of one batch share one compute span) / (window x instances)."""
        if self.config is None or self.window_seconds is None or self.window_seconds <= 0 or not self.requests:
            return None
        batch = self.mean_batch_size or 1.0
        compute = self.mean(*COMPUTE_SEGMENTS)
        return self.requests / batch * compute / (self.window_seconds * max(self.config.instance_count, 1))

    def batch_share_at_least(self, size: int) -> float | None:
        """Fraction of executions that ran a batch of `size` requests or more."""
        n = self.executions
        return sum(c for b, c in self.batch_executions.items() if b >= size) / n if n else None
