"""Inference stage timeline: where one model's request time goes, stage by stage.

Replaces the matplotlib timeline notebook: the stages in request order as one
stacked bar of mean durations, their percentiles over time, a heatmap per stage
and each stage's share of the request.
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

from .panels import (
    REFS,
    P,
    PanelBuilder,
    VariableBuilder,
    base_dashboard,
    datasource_variable,
    heatmap_buckets,
    hidden_label_variable,
    label_variable,
    mean,
    mean_over_range,
    merge_columns,
    quantile,
    query,
)

UID = "inference-stage-timeline"
STAGE = P + "stage_duration_seconds"
SEL = 'instance=~"$instance", model="$model", version=~"$version", protocol=~"$protocol"'
SOCKET = P + "tcp_socket_queue_seconds"

# (segment title, stage regex) in the order a request passes through Triton.
# grpc_waitread is left out: it holds idle connection time (SPEC), not request time.
SEGMENTS: tuple[tuple[str, str], ...] = (
    ("frontend recv", "http_recv"),
    ("queue", "queue"),
    ("compute input", "compute_input"),
    ("compute infer", "compute_infer"),
    ("compute output", "compute_output"),
    ("handler overhead", "handler_overhead"),
    ("frontend send", "http_send|grpc_send"),
    ("frontend overhead", "frontend_overhead"),
)
SOCKET_TITLE = "socket queue (eBPF)"


def segment_queries() -> tuple[list[prometheus.Dataquery], dict[str, str]]:
    """Instant mean per segment over the range, each one table row keyed by model."""
    # eBPF has no model label: it is labelled with the chosen model so it joins the row.
    socket = (
        f'label_replace(\n  sum(increase({SOCKET}_sum{{instance=~"$instance"}}[$__range]))\n'
        f'  / sum(increase({SOCKET}_count{{instance=~"$instance"}}[$__range])),\n'
        f'  "model", "$model", "", "")'
    )
    targets = [query(socket, SOCKET_TITLE, REFS[0], instant=True, table=True)]
    names = {REFS[0]: SOCKET_TITLE}
    for i, (title, stages) in enumerate(SEGMENTS, start=1):
        expr = mean_over_range(STAGE, f'{SEL}, stage=~"{stages}"', "model")
        targets.append(query(expr, title, REFS[i], instant=True, table=True))
        names[REFS[i]] = title
    return targets, names


def variables() -> list[VariableBuilder]:
    return [
        datasource_variable(),
        label_variable("instance", "Exporter", P + "build_info",
                       description="exporter instances (one per node) whose traces are shown"),
        label_variable("model", "Model", f'{STAGE}_count{{instance=~"$instance"}}', multi=False),
        label_variable("version", "Version", f'{STAGE}_count{{instance=~"$instance", model="$model"}}'),
        label_variable("protocol", "Protocol",
                       f'{STAGE}_count{{instance=~"$instance", model="$model", version=~"$version"}}'),
        hidden_label_variable("stage", "stage", f'{STAGE}_count{{{SEL}}}'),
    ]


def overview_panels() -> list[PanelBuilder]:
    req = f'{SEL}, stage="request"'
    traces = stat.Panel().title("Traced requests per second").unit("reqps").height(5).span(6).description(
        "How many traced requests of this model Triton completes per second (counted from trace files)."
    ).with_target(query(
        f'sum(rate({P}traces_total{{{SEL}}}[$__rate_interval]))', "traces/s"))
    mean_req = stat.Panel().title("Mean request time (handler)").unit("s").height(5).span(6).description(
        "Mean time inside Triton's request handler (REQUEST_START to REQUEST_END) over the time range."
    ).with_target(query(mean_over_range(STAGE, req, "model"), "mean", instant=True))
    p99 = stat.Panel().title("p99 request time (handler)").unit("s").height(5).span(6).description(
        "99th percentile of the request stage: the handler time that 1 in 100 requests exceeds."
    ).with_target(query(quantile(0.99, STAGE, req, ""), "p99"))
    e2e = stat.Panel().title("Mean frontend time (recv to send)").unit("s").height(5).span(6).description(
        "Mean end-to-end server time as the frontend sees it (http_infer or grpc_infer)."
    ).with_target(query(mean_over_range(STAGE, f'{SEL}, stage=~"http_infer|grpc_infer"', "model"),
                        "mean", instant=True))
    return [traces, mean_req, p99, e2e]


def timeline_bar() -> barchart.Panel:
    targets, names = segment_queries()
    p = (
        barchart.Panel()
        .title("Request timeline: mean time per stage, in request order")
        .description(
            "Where an average request of this model spends its time, stage by stage in the order a "
            "request passes through (socket queue from eBPF, then Triton's trace stages), as one "
            "stacked bar of mean durations over the selected range; the replacement of the "
            "matplotlib timeline. A stage's mean is over the requests that have it (frontend recv is "
            "HTTP only)."
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
        .title("Share of request time per stage")
        .description(
            "Which stage dominates: each stage's mean as a share of the whole timeline above "
            "(the same numbers, as fractions)."
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
        .title("Mean time per stage over time (stacked)")
        .description("How the timeline changes over time: each stage's mean, stacked in request order.")
        .unit("s")
        .height(9)
        .span(16)
        .fill_opacity(60)
        .stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    )
    for i, (title, stages) in enumerate(SEGMENTS):
        p = p.with_target(query(mean(STAGE, f'{SEL}, stage=~"{stages}"', "model"), title, REFS[i]))
    return p


def stage_row() -> list[PanelBuilder]:
    sel = f'{SEL}, stage="$stage"'
    pct = (
        timeseries.Panel()
        .title("$stage: p50 / p95 / p99 and mean")
        .description("The spread of this stage over time: median, tail percentiles and mean.")
        .unit("s")
        .height(8)
        .span(12)
        .with_target(query(quantile(0.5, STAGE, sel, ""), "p50", "A"))
        .with_target(query(quantile(0.95, STAGE, sel, ""), "p95", "B"))
        .with_target(query(quantile(0.99, STAGE, sel, ""), "p99", "C"))
        .with_target(query(mean(STAGE, sel, "model"), "mean", "D"))
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
    d = d.with_panel(timeline_bar()).with_panel(share_pie()).with_panel(means_over_time())
    d = d.with_row(db.Row("Stage $stage").repeat("stage"))
    for p in stage_row():
        d = d.with_panel(p)
    return d
