"""Inference stage timeline: where one model's request time goes, part by part.

Replaces the matplotlib timeline notebook: the request's exclusive segments in request
order as one stacked bar that adds up to the mean end-to-end time, their share and their
evolution, a streaming row (time to first response, time between responses, responses per
request), and each stage's percentiles (with its SLO) and heatmap.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import (
    barchart,
    heatmap,
    piechart,
    prometheus,
    stat,
    timeseries,
)
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import piechart as pie

from exporter.stages import SEGMENT_ORDER

from .findings import findings_panel
from .panels import (
    REFS,
    SLO_STYLE,
    P,
    PanelBuilder,
    VariableBuilder,
    base_dashboard,
    count_by,
    count_rate,
    datasource_variable,
    heatmap_buckets,
    hidden_label_variable,
    histogram_series,
    label_variable,
    mean,
    mean_over_range,
    merge_columns,
    pod_variables,
    quantile,
    query,
    slo,
    target_variables,
)
from .selectors import POD, TARGET

UID = "inference-stage-timeline"
STAGE = P + "stage_duration_seconds"
TIMELINE = P + "timeline_seconds_total"
TRACES = P + "traces_total"
REQUESTS = P + "requests_total"
RESPONSES = P + "responses_per_request"
SEL = f'{TARGET}, {POD}, model="$model", version=~"$version", protocol=~"$protocol"'
SOCKET = P + "tcp_socket_queue_seconds"
# requests with a timeline: every trace but the cancelled ones (docs/traces.md, "Outcomes")
TIMED = f'{SEL}, stage="end_to_end"'

# (title, segment) in the order a request passes through Triton: the exporter's own table,
# whose segments are exclusive (each instant of a request in exactly one) and add up to end_to_end;
# where the socket join runs (eBPF), the wire's segments before and after it: then they add up to wire
SEGMENTS: tuple[tuple[str, str], ...] = (
    ("socket wait", "socket_wait"),
    *((s.replace("_", " "), s) for s in SEGMENT_ORDER),
    ("ack wait", "ack_wait"),
)

# a range query's series only while some request of the model had more than one response
STREAMING = count_rate(STAGE, f'{SEL}, stage="inter_response"') + " > 0"
NOT_STREAMING = ("No streaming: no request of this model had more than one response in this time range "
                 "(these panels fill for decoupled models)")


def segment_queries() -> tuple[list[prometheus.Dataquery], dict[str, str]]:
    """Per segment, its time per traced request over the range: one table row keyed by model.

    Divided by every request with a timeline (not by the traces that have the segment), so the
    parts add up to the mean end-to-end time."""
    targets, names = [], {}
    for i, (title, segment) in enumerate(SEGMENTS):
        expr = (
            f'sum by (model) (increase({TIMELINE}{{{SEL}, segment="{segment}"}}[$__range]))\n'
            f"/ {count_by(STAGE, TIMED, 'model', 'increase', '$__range')}"
        )
        targets.append(query(expr, title, REFS[i], instant=True, table=True))
        names[REFS[i]] = title
    return targets, names


def variables() -> list[VariableBuilder]:
    return [
        datasource_variable(),
        *target_variables("exporter instances (one per node) whose traces are shown"),
        *pod_variables(STAGE, histogram=True),
        label_variable("model", "Model", histogram_series(STAGE, TARGET), multi=False),
        label_variable("version", "Version", histogram_series(STAGE, f'{TARGET}, model="$model"')),
        label_variable("protocol", "Protocol",
                       histogram_series(STAGE, f'{TARGET}, model="$model", version=~"$version"')),
        hidden_label_variable("stage", "stage", histogram_series(STAGE, SEL)),
    ]


def overview_panels() -> list[PanelBuilder]:
    e2e = f'{SEL}, stage="end_to_end"'
    traces = stat.Panel().title("Traced requests per second").unit("reqps").height(5).span(6).description(
        "How many traced requests of this model Triton completes per second (counted from trace files)."
    ).with_target(query(f'sum(rate({TRACES}{{{SEL}}}[$__rate_interval]))', "traces/s"))
    mean_e2e = stat.Panel().title("Mean end-to-end time").unit("s").height(5).span(6).description(
        "Mean time from the request's arrival at Triton's frontend to its last response out, over the "
        "time range: the length of the stacked bar below."
    ).with_target(query(mean_over_range(STAGE, e2e, "model"), "mean", instant=True))
    p99 = stat.Panel().title("p99 end-to-end time").unit("s").height(5).span(6).description(
        "99th percentile of end_to_end: the time 1 in 100 requests exceeds, arrival to last response."
    ).with_target(query(quantile(0.99, STAGE, e2e, ""), "p99"))
    socket = stat.Panel().title("Mean socket queue before Triton reads (eBPF)").unit("s").height(5).span(6).description(
        "Time request data waits in the kernel socket before Triton reads it (eBPF, all models on the "
        "watched ports). Before arrival and overlapping the frontend's receive, so not part of the bar."
    ).with_target(query(mean_over_range(SOCKET, f"{TARGET}, {POD}", ""), "mean", instant=True))
    return [traces, mean_e2e, p99, socket]


def outcome_panels() -> list[PanelBuilder]:
    """What became of the requests, beside their latency: cancellations are a latency symptom."""
    by_outcome = timeseries.Panel().title("Requests by outcome").unit("reqps").height(7).span(16).description(
        "Traced requests per second by outcome: answered, cancelled (the client gave up or its deadline "
        "passed before any response went out; such requests are left out of the latency panels), cache hit "
        "(answered from Triton's response cache, its own segment in the timeline), failed (where the source "
        "says so: the OTLP span status)."
    ).fill_opacity(40).stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL)).with_target(
        query(f'sum by (outcome) (rate({REQUESTS}{{{SEL}}}[$__rate_interval]))', "{{outcome}}"))
    cancelled = stat.Panel().title("Cancelled share").unit("percentunit").height(7).span(8).description(
        "Share of this model's traced requests cancelled before any response went out, over the time range: "
        "clients timing out or giving up. A rising share fires InferenceProfilerCancelledShareRising."
    ).with_target(query(
        f'(sum(increase({REQUESTS}{{{SEL}, outcome="cancelled"}}[$__range])) or vector(0))\n'
        f'/ sum(increase({REQUESTS}{{{SEL}}}[$__range]))', "cancelled", instant=True))
    return [by_outcome, cancelled]


def timeline_bar() -> barchart.Panel:
    targets, names = segment_queries()
    p = (
        barchart.Panel()
        .title("Request timeline: mean time per segment, in request order")
        .description(
            "Where an average request of this model spends its time, as one stacked bar that adds up to "
            "the mean end-to-end time (arrival at the frontend to the last response out) over the selected "
            "range; the replacement of the matplotlib timeline. The segments are exclusive: each instant of "
            "a request belongs to exactly one, the innermost span open then (compute parts over queue, over "
            "send, over the handler, over recv, over the rest of the frontend; between responses is a "
            "streaming request's time after the handler released it). Each part is its total time divided "
            "by all traced requests with a timeline (cancelled requests have none). Where the exporter joins "
            "requests to their socket turns (eBPF), the bar starts and ends at the wire: socket wait (the "
            "request's first byte in the server socket until Triton reads it) first, ack wait (Triton's last "
            "send until the client acknowledged the last byte) last; for joined requests the segments then add "
            "up to the wire time."
        )
        .unit("s")
        .height(7)
        .span(24)
        .orientation(common.VizOrientation.HORIZONTAL)
        .stacking(common.StackingMode.NORMAL)
        .show_value(common.VisibilityMode.ALWAYS)
        .x_field("model")
        .legend(cb.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM))
        .transformations(merge_columns(names))
    )
    for t in targets:
        p = p.with_target(t)
    return p


def share_pie() -> piechart.Panel:
    targets, names = segment_queries()
    p = (
        piechart.Panel()
        .title("Share of request time per segment")
        .description(
            "Which segment dominates: each segment's part of the end-to-end time (the bar above, as fractions)."
        )
        .unit("s")
        .height(9)
        .span(8)
        .pie_type(pie.PieChartType.DONUT)
        .display_labels([pie.PieChartLabels.PERCENT])
        .reduce_options(cb.ReduceDataOptions().values(False).calcs(["lastNotNull"]))
        .transformations(merge_columns(names, exclude=("Time", "model")))
    )
    for t in targets:
        p = p.with_target(t)
    return p


def means_over_time() -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title("Mean time per segment over time (stacked)")
        .description("How the timeline changes over time: each segment's time per request, stacked in request "
                     "order; the top of the stack is the mean end-to-end time.")
        .unit("s")
        .height(9)
        .span(16)
        .fill_opacity(60)
        .stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    )
    for i, (title, segment) in enumerate(SEGMENTS):
        p = p.with_target(query(
            f'sum by (model) (rate({TIMELINE}{{{SEL}, segment="{segment}"}}[$__rate_interval]))\n'
            f"/ {count_by(STAGE, TIMED, 'model', 'rate', '$__rate_interval')}", title, REFS[i]))
    return p


def frontend_wait() -> timeseries.Panel:
    """socket_wait beside Triton's own http_recv and queue: requests waiting for a frontend thread."""
    p = (
        timeseries.Panel()
        .title("Waiting for a frontend thread: socket wait against Triton's recv and queue")
        .description(
            "Mean time per joined request that its bytes sat in the server socket before Triton began "
            "reading them (socket_wait, eBPF joined to the trace), beside Triton's own http_recv (reading the "
            "request) and queue (waiting for a model instance). Triton's trace starts only when a frontend "
            "thread reads: a socket wait that grows while recv and queue stay flat is time the client sees "
            "and Triton's trace cannot, requests waiting for a busy frontend thread (raise the HTTP thread "
            "count, or add replicas). Empty where the socket join does not run."
        )
        .unit("s")
        .height(8)
        .span(24)
    )
    for i, stage in enumerate(("socket_wait", "http_recv", "queue", "ack_wait")):
        p = p.with_target(query(mean(STAGE, f'{SEL}, stage="{stage}"', "model"), stage.replace("_", " "), REFS[i]))
    return p


def streaming(expr: str) -> str:
    """`expr` only while the model streams, so a unary model's row shows the no-streaming text."""
    return f"({expr})\nand on () ({STREAMING})"


def streaming_panels() -> list[PanelBuilder]:
    first = f'{SEL}, stage="first_response"'
    gaps = f'{SEL}, stage="inter_response"'
    ttfr = (
        timeseries.Panel()
        .title("Time to first response: p50 / p95 / p99 and SLO")
        .description(
            "first_response: arrival at the frontend to the first response out (time to first token for "
            "LLMs), with the p99 SLO of prometheus/rules/slo.rules.yml (dashed)."
        )
        .unit("s")
        .height(8)
        .span(8)
        .no_value(NOT_STREAMING)
        .with_target(query(streaming(quantile(0.5, STAGE, first, "")), "p50", "A"))
        .with_target(query(streaming(quantile(0.95, STAGE, first, "")), "p95", "B"))
        .with_target(query(streaming(quantile(0.99, STAGE, first, "")), "p99", "C"))
        .with_target(query(streaming(slo("first_response")), "SLO (p99)", "D"))
        .override_by_query("D", SLO_STYLE)
    )
    between = (
        heatmap.Panel()
        .title("Time between responses: distribution")
        .description(
            "inter_response: every gap between two consecutive responses of a request (time per output "
            "token when a response carries one token), by duration bucket over time."
        )
        .unit("s")
        .height(8)
        .span(8)
        .calculate(False)
        .no_value(NOT_STREAMING)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .cell_values(heatmap.CellValues().unit("short"))
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Blues")
               .scale(hm.HeatmapColorScale.EXPONENTIAL).exponent(0.5).steps(64).fill("dark-blue"))
        .with_target(query(streaming(heatmap_buckets(STAGE, gaps)), "{{le}}", heatmap=True))
    )
    count = (
        timeseries.Panel()
        .title("Responses per request: mean and p99")
        .description("How many responses a request of this model gets (tokens or chunks of a stream).")
        .unit("short")
        .height(8)
        .span(8)
        .no_value(NOT_STREAMING)
        .with_target(query(streaming(mean(RESPONSES, SEL, "")), "mean", "A"))
        .with_target(query(streaming(quantile(0.99, RESPONSES, SEL, "")), "p99", "B"))
    )
    return [ttfr, between, count]


def stage_row() -> list[PanelBuilder]:
    sel = f'{SEL}, stage="$stage"'
    pct = (
        timeseries.Panel()
        .title("$stage: p50 / p95 / p99, mean and SLO")
        .description("The spread of this stage over time: median, tail percentiles and mean, with the "
                     "stage's p99 SLO of prometheus/rules/slo.rules.yml (dashed) where one is set.")
        .unit("s")
        .height(8)
        .span(12)
        .with_target(query(quantile(0.5, STAGE, sel, ""), "p50", "A"))
        .with_target(query(quantile(0.95, STAGE, sel, ""), "p95", "B"))
        .with_target(query(quantile(0.99, STAGE, sel, ""), "p99", "C"))
        .with_target(query(mean(STAGE, sel, "model"), "mean", "D"))
        .with_target(query(slo("$stage"), "SLO (p99)", "E"))
        .override_by_query("E", SLO_STYLE)
    )
    heat = (
        heatmap.Panel()
        .title("$stage: distribution over time")
        .description("Every observation of this stage by duration bucket: bands show modes, outliers show tails.")
        .unit("s")
        .height(8)
        .span(12)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .cell_values(heatmap.CellValues().unit("short"))
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges")
               .scale(hm.HeatmapColorScale.EXPONENTIAL)
               .exponent(0.5).steps(64).fill("dark-orange"))
        .with_target(query(heatmap_buckets(STAGE, sel), "{{le}}", heatmap=True))
    )
    return [pct, heat]


def dashboard() -> db.Dashboard:
    d = (
        base_dashboard("Inference stage timeline", UID,
                       "Per-stage latency of Triton requests from trace files (inference-profiler).",
                       ["inference-profiler", "triton"], variables())
        .with_row(db.Row("Overview"))
    )
    for p in overview_panels():
        d = d.with_panel(p)
    for p in outcome_panels():
        d = d.with_panel(p)
    d = d.with_panel(timeline_bar()).with_panel(share_pie()).with_panel(means_over_time())
    d = d.with_panel(frontend_wait())
    d = d.with_panel(findings_panel('model="$model", version=~"$version"'))
    d = d.with_row(db.Row("Streaming (decoupled models)"))
    for p in streaming_panels():
        d = d.with_panel(p)
    d = d.with_row(db.Row("Stage $stage").repeat("stage"))
    for p in stage_row():
        d = d.with_panel(p)
    return d
