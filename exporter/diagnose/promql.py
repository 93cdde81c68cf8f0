"""The tuning rules in PromQL, generated from the rule table and `Thresholds` of rules.py, so
Prometheus judges what `diagnose` judges with the same numbers:
`python -m exporter.diagnose.promql` writes prometheus/rules/tuning.rules.yml,
`--check` exits 1 when the committed file differs from what this gives."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from pathlib import Path

from .rules import ADVICE, Thresholds

OUT = Path(__file__).resolve().parents[2] / "prometheus" / "rules" / "tuning.rules.yml"
FINDING = "model_version_rule:inference_profiler_tuning_finding:5m"

# why a rule of the table has no PromQL twin
NOT_IN_PROMQL = {
    "ensemble_step_dominates": "the steps of one ensemble request are in its traces, not in the metrics",
}

# per rule of the table: (a comment, the expression); <name> is a threshold of Thresholds, or one of
# `derived` below. The order is the file's.
FINDINGS: dict[str, tuple[str, str]] = {
    "queue_saturated": (
        "queue-dominated, no batching possible or batches full: more instances (or a larger batch)",
        """\
max by (model, version) (model_version_segment:inference_profiler_timeline:share_5m{segment="queue"}) >= <queue_share>
and on (model, version)
(
  max by (model, version) (inference_profiler_triton_model_config_info{max_batch_size=~"0|1"})
  or on (model, version)
  (model_version:inference_profiler_triton_full_batches:ratio_5m >= <batch_full_share>)
)
"""),
    "no_dynamic_batching": (
        "queue-dominated, the model could batch but dynamic batching is off",
        """\
max by (model, version) (model_version_segment:inference_profiler_timeline:share_5m{segment="queue"}) >= <queue_share>
and on (model, version)
inference_profiler_triton_model_config_info{dynamic_batching="false", max_batch_size!~"0|1"}
"""),
    "queue_delay_too_long": (
        "queue-dominated, small batches, and (Little's law) <queued_requests> or more requests queued on\n"
        "average: a mean wait of <queued_requests> arrival gaps or more, what a delay of <delay_gap_ratio> gaps gives",
        """\
max by (model, version) (model_version_segment:inference_profiler_timeline:share_5m{segment="queue"}) >= <queue_share>
and on (model, version)
(model_version:inference_profiler_triton_full_batches:ratio_5m < <batch_full_share>)
and on (model, version)
inference_profiler_triton_model_config_info{dynamic_batching="true", max_queue_delay_seconds!="0"}
and on (model, version)
(max by (model, version) (model_version_segment:inference_profiler_timeline_seconds:rate5m{segment="queue"}) >= <queued_requests>)
"""),
    "copy_bound": (
        "compute_input + compute_output share of end_to_end",
        """\
sum by (model, version) (
  model_version_segment:inference_profiler_timeline:share_5m{segment=~"compute_input|compute_output"}
) >= <copy_share>
"""),
    "frontend_payload": (
        "frontend-bound, unless eBPF shows the messages are small",
        """\
sum by (model, version) (
  model_version_segment:inference_profiler_timeline:share_5m{segment=~"recv|send|frontend_overhead"}
) >= <frontend_share>
unless on ()
(
  max(
    (
      sum by (direction) (rate(inference_profiler_tcp_message_bytes_sum{role="server"}[5m])) / sum by (direction) (rate(inference_profiler_tcp_message_bytes_count{role="server"}[5m]))
      or sum by (direction) (histogram_sum(rate(inference_profiler_tcp_message_bytes{role="server"}[5m]))) / sum by (direction) (histogram_count(rate(inference_profiler_tcp_message_bytes{role="server"}[5m])))
    )
  ) < <large_message_bytes>
)
"""),
    "socket_queue_high": (
        "node-wide socket queue time per read against the model's end_to_end",
        """\
scalar(
  (
    sum (rate(inference_profiler_tcp_socket_queue_seconds_sum[5m])) / sum (rate(inference_profiler_tcp_socket_queue_seconds_count[5m]))
    or sum (histogram_sum(rate(inference_profiler_tcp_socket_queue_seconds[5m]))) / sum (histogram_count(rate(inference_profiler_tcp_socket_queue_seconds[5m])))
  )
)
/ model_version:inference_profiler_end_to_end_seconds:mean_5m >= <socket_queue_share>
"""),
    "streaming_first_response_queued": (
        "streaming models whose first response is mostly queue",
        """\
(
  max by (model, version) (model_version_segment:inference_profiler_timeline_seconds:rate5m{segment="queue"})
    / model_version:inference_profiler_traces:rate5m
)
/ (
  (
    sum by (model, version) (rate(inference_profiler_stage_duration_seconds_sum{stage="first_response"}[5m])) / sum by (model, version) (rate(inference_profiler_stage_duration_seconds_count{stage="first_response"}[5m]))
    or sum by (model, version) (histogram_sum(rate(inference_profiler_stage_duration_seconds{stage="first_response"}[5m]))) / sum by (model, version) (histogram_count(rate(inference_profiler_stage_duration_seconds{stage="first_response"}[5m])))
  )
) >= <first_response_queue_share>
and on (model, version)
(
  (
    sum by (model, version) (rate(inference_profiler_responses_per_request_sum[5m])) / sum by (model, version) (rate(inference_profiler_responses_per_request_count[5m]))
    or sum by (model, version) (histogram_sum(rate(inference_profiler_responses_per_request[5m]))) / sum by (model, version) (histogram_count(rate(inference_profiler_responses_per_request[5m])))
  ) >= <streaming_min_responses>
)
"""),
}

HEADER = """\
# Generated by `python -m exporter.diagnose.promql` from exporter/diagnose/rules.py: edit the rules
# and Thresholds there, then run it (a test fails while this file is stale).
# The tuning rules of `inference-profiler diagnose` (docs/tuning.md) over 5-minute rates.
# Each finding is one series of model_version_rule:inference_profiler_tuning_finding:5m
# {model, version, rule} whose value is the share the rule judged; the Findings panel of
# the stage timeline dashboard lists them and an info alert fires after 15 minutes.
# Thresholds are diagnose's defaults (--set changes diagnose's, not these).
groups:
"""

INPUTS = """\
  - name: inference-profiler-tuning-inputs
    rules:
      - record: model_version_segment:inference_profiler_timeline_seconds:rate5m
        expr: sum by (model, version, segment) (rate(inference_profiler_timeline_seconds_total[5m]))
      - record: model_version:inference_profiler_traces:rate5m
        expr: sum by (model, version) (rate(inference_profiler_traces_total[5m]))
      # the segments add up to end_to_end, so this is each segment's share of it
      - record: model_version_segment:inference_profiler_timeline:share_5m
        expr: |
          model_version_segment:inference_profiler_timeline_seconds:rate5m
            / ignoring (segment) group_left ()
          sum by (model, version) (model_version_segment:inference_profiler_timeline_seconds:rate5m)
      - record: model_version:inference_profiler_end_to_end_seconds:mean_5m
        expr: |
          sum by (model, version) (model_version_segment:inference_profiler_timeline_seconds:rate5m)
            / model_version:inference_profiler_traces:rate5m
      # executions that ran a batch of max_batch_size (the label joined as a batch_size)
      - record: model_version:inference_profiler_triton_full_batches:ratio_5m
        expr: |
          (
            sum by (model, version) (
              sum by (model, version, batch_size) (rate(inference_profiler_triton_batch_executions_total[5m]))
                * on (model, version, batch_size) group_left ()
              max by (model, version, batch_size) (
                label_replace(inference_profiler_triton_model_config_info, "batch_size", "$1", "max_batch_size", "(.+)")
              )
            )
            or
            0 * sum by (model, version) (rate(inference_profiler_triton_batch_executions_total[5m]))
          )
          / sum by (model, version) (rate(inference_profiler_triton_batch_executions_total[5m]))
"""

ALERTS = """\
  - name: inference-profiler-tuning-alerts
    rules:
      - alert: InferenceTuningFinding
        expr: model_version_rule:inference_profiler_tuning_finding:5m
        for: 15m
        labels:
          severity: info
        annotations:
          summary: "Model {{ $labels.model }} (version {{ $labels.version }}): tuning finding {{ $labels.rule }} ({{ $value | humanizePercentage }})"
          description: "The {{ $labels.rule }} rule of docs/tuning.md has held for 15 minutes. Run `inference-profiler diagnose --prometheus-url <this Prometheus> --model {{ $labels.model }}` for the numbers, the change to make and what should move."
"""


def derived(t: Thresholds) -> dict[str, float]:
    """Numbers the PromQL compares with that follow from the thresholds."""
    # Little's law: a delay of delay_gap_ratio arrival gaps keeps half as many requests queued on average
    return {"queued_requests": t.delay_gap_ratio / 2}


def _number(v: float) -> str:
    return f"{v:g}"


def render(t: Thresholds | None = None) -> str:
    """The rules file's text for these thresholds (diagnose's defaults when None)."""
    t = t or Thresholds()
    values = {**{f.name: getattr(t, f.name) for f in fields(t)}, **derived(t)}

    def fill(text: str) -> str:
        return re.sub(r"<([a-z_]+)>", lambda m: _number(values[m.group(1)]), text)

    out = [HEADER, INPUTS, "\n", "  - name: inference-profiler-tuning-findings\n    rules:\n"]
    for name, (comment, expr) in FINDINGS.items():
        out.extend(f"      # {line}\n" for line in fill(comment).splitlines())
        out.append(f"      - record: {FINDING}\n        expr: |\n")
        out.extend(f"          {line}\n" for line in fill(expr).splitlines())
        out.append(f"        labels:\n          rule: {name}\n")
    out += ["\n", ALERTS]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exporter.diagnose.promql", description=__doc__)
    ap.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    ap.add_argument("--out", type=Path, default=OUT, help="the rules file to write")
    args = ap.parse_args(argv)
    missing = set(ADVICE) - set(FINDINGS) - set(NOT_IN_PROMQL)
    if missing:
        print(f"rules without PromQL: {', '.join(sorted(missing))}", file=sys.stderr)
        return 1
    text = render()
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"out of date (run python -m exporter.diagnose.promql): {args.out}", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
