"""perf_analyzer runs: throughput against latency per concurrency, and where the latency goes."""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, prometheus, table, xychart
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import xychart as xy
from grafana_foundation_sdk.models.dashboard import DynamicConfigValue

from exporter.triton.perf_csv import STAGE_COLUMNS

from .panels import (
    REFS,
    P,
    VariableBuilder,
    base_dashboard,
    datasource_variable,
    label_variable,
    merge_columns,
    query,
    target_variables,
)
from .selectors import TARGET

UID = "inference-profiler-perf-analyzer"
PA = P + "perf_analyzer_"
SEL = f'{TARGET}, run="$run"'
# perf_analyzer's client-side breakdown, in request order (the CSV's column order)
STAGES = tuple(STAGE_COLUMNS.values())
QUANTILES = (("p50", "0.5"), ("p90", "0.9"), ("p95", "0.95"), ("p99", "0.99"))


def variables() -> list[VariableBuilder]:
    return [
        datasource_variable(),
        *target_variables(),
        label_variable("run", "Run", f'{PA}throughput{{{TARGET}}}', multi=False,
                       description="one perf_analyzer result file (--perf-analyzer-csv)"),
    ]


def throughput_query(ref: str) -> prometheus.Dataquery:
    return query(f"max by (concurrency) ({PA}throughput{{{SEL}}})", "throughput", ref,
                 instant=True, table=True)


def latency_query(q: str, ref: str) -> prometheus.Dataquery:
    return query(f'max by (concurrency) ({PA}latency_seconds{{{SEL}, quantile="{q}"}})', "", ref,
                 instant=True, table=True)


def curve() -> xychart.Panel:
    return (
        xychart.Panel().title("Throughput vs p99 latency").unit("s").height(10).span(12)
        .description("The saturation curve of the run: each point is one concurrency level; where "
                     "latency climbs while throughput stops growing the model is saturated.")
        .series_mapping(xy.SeriesMapping.AUTO)
        .dims(xychart.XYDimensionConfig().x("throughput (infer/s)"))
        .show(xy.ScatterShow.POINTS_AND_LINES)
        .point_size(cb.ScaleDimensionConfig().fixed(6).min(1).max(20))
        .with_target(throughput_query("A"))
        .with_target(latency_query("0.99", "B"))
        .transformations(merge_columns({"A": "throughput (infer/s)", "B": "p99 latency"},
                                       exclude=("Time", "concurrency")))
        .override_by_name("throughput (infer/s)", [DynamicConfigValue(id_val="unit", value="short")])
    )


def runs_table() -> table.Panel:
    t = (
        table.Panel().title("Throughput and latency per concurrency").unit("s").height(10).span(12)
        .description("The run's numbers per concurrency level: inferences per second and latency percentiles.")
        .with_target(throughput_query("A"))
    )
    names = {"A": "throughput (infer/s)"}
    for i, (title, q) in enumerate(QUANTILES, start=1):
        t = t.with_target(latency_query(q, REFS[i]))
        names[REFS[i]] = title
    return (
        t.transformations(merge_columns(names))
        .override_by_name("throughput (infer/s)", [DynamicConfigValue(id_val="unit", value="short")])
    )


def breakdown() -> barchart.Panel:
    p = (
        barchart.Panel().title("Latency breakdown per concurrency").unit("s").height(10).span(24)
        .description("Where perf_analyzer's average latency goes at each concurrency, stage by stage "
                     "in request order: growth in queue means the server is saturated, growth in "
                     "network or client stages points outside Triton.")
        .orientation(common.VizOrientation.HORIZONTAL)
        .stacking(common.StackingMode.NORMAL)
        .show_value(common.VisibilityMode.AUTO)
        .x_field("concurrency")
    )
    names: dict[str, str] = {}
    for i, stage in enumerate(STAGES):
        p = p.with_target(query(f'max by (concurrency) ({PA}stage_seconds{{{SEL}, stage="{stage}"}})',
                                stage, REFS[i], instant=True, table=True))
        names[REFS[i]] = stage
    return p.transformations(merge_columns(names))


def dashboard() -> db.Dashboard:
    return (
        base_dashboard("perf_analyzer runs", UID,
                       "Results of perf_analyzer runs (-f CSV files) exposed by inference-profiler.",
                       ["inference-profiler", "triton", "perf_analyzer"], variables(), refresh="1m", since="now-6h")
        .with_panel(curve())
        .with_panel(runs_table())
        .with_panel(breakdown())
    )
