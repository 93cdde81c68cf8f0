"""Triton server: what Triton's own counters, statistics API and model configs say."""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    ValueMap,
    ValueMappingResult,
)

from exporter.triton.metrics_text import STAGES as TRITON_COUNTER_STAGES

from .panels import (
    P,
    PanelBuilder,
    VariableBuilder,
    base_dashboard,
    datasource_variable,
    label_variable,
    mean_over_range,
    merge_columns,
    query,
    target_variables,
)
from .selectors import TARGET

UID = "inference-profiler-triton"
T = P + "triton_"
SEL = f'{TARGET}, target=~"$target", model=~"$model"'
TRACE_SEL = f'{TARGET}, model=~"$model"'
# the stages of Triton's duration counters, as the exporter names them
TRITON_STAGES = "|".join(TRITON_COUNTER_STAGES)


def variables() -> list[VariableBuilder]:
    return [
        datasource_variable(),
        *target_variables(),
        label_variable("target", "Triton", f'{T}up{{{TARGET}}}',
                       description="Triton servers (the exporter's --triton URLs)"),
        label_variable("model", "Model", f'{T}requests_total{{{TARGET}, target=~"$target"}}'),
    ]


def status_panels() -> list[PanelBuilder]:
    up = (
        stat.Panel().title("Triton reachable").unit("none").height(4).span(8)
        .description("Whether the exporter could fetch each Triton's /metrics and APIs on its last scrape.")
        .mappings([ValueMap(options={
            "0": ValueMappingResult(text="down", color="red"),
            "1": ValueMappingResult(text="up", color="green")})])
        .with_target(query(f'{T}up{{{TARGET}, target=~"$target"}}', "{{target}}"))
    )
    scrape = (
        timeseries.Panel().title("Triton fetch duration").unit("s").height(4).span(8)
        .description("How long one fetch of Triton's /metrics, statistics and config took; near the "
                     "timeout means Triton is overloaded or far away.")
        .with_target(query(f'{T}scrape_duration_seconds{{{TARGET}, target=~"$target"}}',
                           "{{target}}"))
    )
    batch = (
        timeseries.Panel().title("Average batch size").unit("short").height(4).span(8)
        .description("Inferences per model execution: how well dynamic batching fills batches.")
        .with_target(query(
            f"sum by (model) (rate({T}inferences_total{{{SEL}}}[$__rate_interval]))\n"
            f"/ sum by (model) (rate({T}executions_total{{{SEL}}}[$__rate_interval]))", "{{model}}"))
    )
    return [up, scrape, batch]


def traffic_panels() -> list[PanelBuilder]:
    throughput = (
        timeseries.Panel().title("Throughput").unit("reqps").height(8).span(8)
        .description("Requests and inferences (batch items) completed per second, per model.")
        .with_target(query(f"sum by (model) (rate({T}requests_total{{{SEL}}}[$__rate_interval]))",
                           "{{model}} requests", "A"))
        .with_target(query(f"sum by (model) (rate({T}inferences_total{{{SEL}}}[$__rate_interval]))",
                           "{{model}} inferences", "B"))
    )
    outcome = (
        timeseries.Panel().title("Requests by outcome").unit("reqps").height(8).span(8)
        .description("Successful and failed requests per second, failures by Triton's reason: REJECTED "
                     "(the queue policy refused them: add capacity), CANCELED, BACKEND, OTHER.")
        .with_target(query(
            f"sum by (model, outcome, reason) (rate({T}requests_total{{{SEL}}}[$__rate_interval]))",
            "{{model}} {{outcome}} {{reason}}"))
    )
    pending = (
        timeseries.Panel().title("Pending requests").unit("short").height(8).span(8)
        .description("Requests queued in Triton waiting for a model instance: growth means overload.")
        .with_target(query(f"sum by (model) ({T}pending_requests{{{SEL}}})", "{{model}}"))
    )
    return [throughput, outcome, pending]


def stage_panels() -> list[PanelBuilder]:
    counters = (
        f"sum by (stage) (increase({T}stage_seconds_total{{{SEL}, stage=~\"{TRITON_STAGES}\"}}[$__range]))\n"
        f"/ scalar(sum(increase({T}requests_total{{{SEL}, outcome=\"success\"}}[$__range])))"
    )
    traces = mean_over_range(f"{P}stage_duration_seconds", f'{TRACE_SEL}, stage=~"{TRITON_STAGES}"', "stage")
    side = (
        barchart.Panel().title("Mean time per request by stage: Triton counters beside traces").unit("s")
        .height(8).span(12)
        .description("The same stages measured two ways over the range: Triton's cumulative duration "
                     "counters divided by successful requests, and the trace files' means. A large gap "
                     "means traces are sampled unevenly or a counter is mis-read.")
        .x_field("stage")
        .show_value(common.VisibilityMode.AUTO)
        .with_target(query(counters, "Triton counters", "A", instant=True, table=True))
        .with_target(query(traces, "traces", "B", instant=True, table=True))
        .transformations(merge_columns({"A": "Triton counters", "B": "traces"}))
    )
    over_time = (
        timeseries.Panel().title("Mean time per request by stage over time (Triton counters)").unit("s")
        .height(8).span(12)
        .description("Triton's own per-request stage times over time, per model.")
        .with_target(query(
            f"sum by (model, stage) (rate({T}stage_seconds_total{{{SEL}, stage=~\"{TRITON_STAGES}\"}}[$__rate_interval]))\n"
            f"/ on (model) group_left sum by (model) (rate({T}requests_total{{{SEL}, outcome=\"success\"}}[$__rate_interval]))",
            "{{model}} {{stage}}"))
    )
    return [side, over_time]


def batch_panels() -> list[PanelBuilder]:
    dist = (
        barchart.Panel().title("Batch size distribution").unit("short").height(8).span(12)
        .description("How many executions ran at each batch size over the range (statistics API).")
        .x_field("batch_size")
        .show_value(common.VisibilityMode.AUTO)
        .with_target(query(
            f"sum by (batch_size) (increase({T}batch_executions_total{{{SEL}}}[$__range]))",
            "executions", "A", instant=True, table=True))
        .transformations(merge_columns({"A": "executions"}))
    )
    per_batch = (
        timeseries.Panel().title("Compute time per execution by batch size").unit("s").height(8).span(12)
        .description("Mean compute_infer time of one execution at each batch size: the cost of bigger batches.")
        .with_target(query(
            f"sum by (batch_size) (rate({T}batch_stage_seconds_total{{{SEL}, stage=\"compute_infer\"}}[$__rate_interval]))\n"
            f"/ sum by (batch_size) (rate({T}batch_executions_total{{{SEL}}}[$__rate_interval]))",
            "batch {{batch_size}}"))
    )
    return [dist, per_batch]


def config_table() -> table.Panel:
    labels = "target, model, version, platform, max_batch_size, dynamic_batching, max_queue_delay_seconds, instance_count"
    return (
        table.Panel().title("Model configuration").unit("none").height(7).span(24)
        .description("Each loaded model version's configuration as Triton reports it.")
        .with_target(query(f"max by ({labels}) ({T}model_config_info{{{SEL}}})", "", "A",
                           instant=True, table=True))
        .transformations(merge_columns({}, exclude=("Time", "Value")))
    )


def dashboard() -> db.Dashboard:
    d = (
        base_dashboard("Triton server", UID,
                       "Triton Inference Server's own counters, statistics API and model configs (inference-profiler).",
                       ["inference-profiler", "triton"], variables())
        .with_row(db.Row("Status"))
    )
    for p in status_panels():
        d = d.with_panel(p)
    d = d.with_row(db.Row("Traffic"))
    for p in traffic_panels():
        d = d.with_panel(p)
    d = d.with_row(db.Row("Stages"))
    for p in stage_panels():
        d = d.with_panel(p)
    d = d.with_row(db.Row("Batching and configuration"))
    for p in batch_panels():
        d = d.with_panel(p)
    return d.with_panel(config_table())
