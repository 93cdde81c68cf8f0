"""The demo's periodic per-stage summary, from the trace pipeline's live aggregate.

Pure functions over (count, total ns) snapshots, so the table is testable without Triton.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..histogram import Histogram

# columns of the summary: the whole request (arrival to last response), its first response, then
# the handler's stages in request order
COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("end_to_end", ("end_to_end",)),
    ("first_resp", ("first_response",)),
    ("request", ("request",)),
    ("queue", ("queue",)),
    ("compute_input", ("compute_input",)),
    ("compute_infer", ("compute_infer",)),
    ("compute_output", ("compute_output",)),
    ("handler_ovh", ("handler_overhead",)),
)

RowKey = tuple[str, str]  # model, protocol


@dataclass(frozen=True)
class Snapshot:
    """Per (model, protocol, stage): (count, total ns); per (model, protocol): traces."""

    stages: Mapping[tuple[str, str, str], tuple[int, int]]
    traces: Mapping[RowKey, int]

    @property
    def total_traces(self) -> int:
        return sum(self.traces.values())


def snapshot(histograms: Mapping[tuple[str, ...], Histogram], traces: Mapping[tuple[str, ...], int]) -> Snapshot:
    """From TraceAggregate.histograms/.traces (keys end with model, version, protocol[, stage])."""
    stages: dict[tuple[str, str, str], tuple[int, int]] = {}
    for key, h in histograms.items():
        model, protocol, stage = key[-4], key[-2], key[-1]
        c0, t0 = stages.get((model, protocol, stage), (0, 0))
        stages[(model, protocol, stage)] = (c0 + h.count, t0 + h.total)
    rows: dict[RowKey, int] = {}
    for key, n in traces.items():
        rk = (key[-3], key[-1])
        rows[rk] = rows.get(rk, 0) + n
    return Snapshot(stages, rows)


def _mean_ms(prev: Snapshot, now: Snapshot, model: str, protocol: str, stages: tuple[str, ...]) -> str:
    count = total = 0
    for s in stages:
        c1, t1 = now.stages.get((model, protocol, s), (0, 0))
        c0, t0 = prev.stages.get((model, protocol, s), (0, 0))
        count += c1 - c0
        total += t1 - t0
    return f"{total / count / 1e6:.3f}" if count > 0 else "-"


def format_report(prev: Snapshot, now: Snapshot, elapsed: float) -> str:
    """Traces so far per model/protocol and each stage's mean (ms) over the last interval."""
    head = (f"[{elapsed:5.0f}s] {now.total_traces} traces counted "
            f"(+{now.total_traces - prev.total_traces}); mean ms per stage over the last interval:")
    if not now.traces:
        return head + "\n  (no traces ingested yet: Triton writes a trace file every few seconds)"
    header = ["model", "proto", "traces", *[c for c, _ in COLUMNS]]
    rows = [header]
    for model, protocol in sorted(now.traces):
        rows.append([model, protocol, str(now.traces[(model, protocol)]),
                     *[_mean_ms(prev, now, model, protocol, stages) for _, stages in COLUMNS]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [head]
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)]
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)
