"""The advisor's output: a text report per model, or the same as JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TextIO

from .evidence import Evidence
from .rules import Finding, Thresholds

ARROW = {"down": "should go down", "up": "should go up"}


def format_value(metric: str, v: float | None) -> str:
    if v is None:
        return "not measured here"
    if metric.endswith("_share"):
        return f"{v:.0%}"
    if metric in ("mean_batch_size",):
        return f"{v:.2f}"
    if metric == "throughput":
        return f"{v:.1f}/s"
    return f"{v * 1e3:.2f} ms"


def print_report(evidence: list[Evidence], findings: list[Finding], source: str, out: TextIO) -> None:
    out.write(f"diagnose: {source}\n")
    for e in evidence:
        mine = [f for f in findings if (f.model, f.version) == (e.model, e.version)]
        head = (f"\n{e.model} (version {e.version or '-'}): {e.requests:.0f} requests, "
                f"end_to_end mean {e.end_to_end_mean * 1e3:.2f} ms")
        if not mine:
            out.write(f"{head}: nothing to change\n")
            continue
        out.write(f"{head}: {len(mine)} finding{'s' if len(mine) > 1 else ''}, largest expected gain first\n")
        for i, f in enumerate(mine, 1):
            out.write(f"  {i}. [{f.rule}] {f.summary}\n")
            out.write(f"     change: {f.change}\n")
            for x in f.expect:
                out.write(f"     check:  {x.metric} {ARROW[x.direction]} (now {format_value(x.metric, x.before)})\n")
    if not evidence:
        out.write("no models found in this input\n")


def as_json(evidence: list[Evidence], findings: list[Finding], source: str, t: Thresholds) -> dict[str, Any]:
    return {
        "source": source,
        "thresholds": asdict(t),
        "models": [
            {
                "model": e.model, "version": e.version, "requests": e.requests,
                "end_to_end_mean_seconds": e.end_to_end_mean,
                "evidence": asdict(e) | {"config": asdict(e.config) if e.config else None},
                "findings": [asdict(f) for f in findings if (f.model, f.version) == (e.model, e.version)],
            }
            for e in evidence
        ],
        "unit": "seconds",
    }
