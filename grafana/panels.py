"""Pieces every dashboard shares: the datasource, queries, variables, table merges."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Panel,
    VariableHide,
    VariableModel,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from .selectors import DASHBOARD_JOB, JOB_NAME, TARGET

P = "inference_profiler_"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
REFS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PanelBuilder = Builder[Panel]
VariableBuilder = Builder[VariableModel]


TAG = "inference-profiler"  # every dashboard of ours carries it; the links between them select on it


def dashboard_links() -> db.DashboardLink:
    """Links to the other dashboards, carrying the variables (model, instance, ...) and the time range."""
    return (
        db.DashboardLink("Inference Profiler").type(DashboardLinkType.DASHBOARDS).tags([TAG])
        .as_dropdown(False).include_vars(True).keep_time(True)
        .tooltip("The other Inference Profiler dashboards, same model and time range")
    )


def restart_annotations() -> list[db.AnnotationQuery]:
    """Marks where an exporter or a Triton restarted: a step in a latency line often starts there."""
    return [
        db.AnnotationQuery().name("Exporter restarts").datasource(DATASOURCE).enable(True).icon_color("orange")
        .expr(f"changes(process_start_time_seconds{{{TARGET}}}[$__interval]) > 0"),
        # Triton's counters start again from 0 when it restarts
        db.AnnotationQuery().name("Triton restarts").datasource(DATASOURCE).enable(True).icon_color("red")
        .expr(f"sum by (target) (resets({P}triton_requests_total{{{TARGET}}}[$__interval])) > 0"),
    ]


def base_dashboard(title: str, uid: str, description: str, tags: list[str], variables: list[VariableBuilder],
                   *, refresh: str = "30s", since: str = "now-30m") -> db.Dashboard:
    """What every dashboard of ours sets the same way: identity, refresh, range, shared crosshair, links,
    restart annotations."""
    return (
        db.Dashboard(title).uid(uid).description(description).tags([TAG, *(t for t in tags if t != TAG)])
        .refresh(refresh).time(since, "now").tooltip(DashboardCursorSync.CROSSHAIR).variables(variables)
        .link(dashboard_links()).annotations(restart_annotations())
    )


# the family whose buckets carry exemplars (trace_id, request_id: docs/otlp.md)
EXEMPLAR_FAMILY = "inference_profiler_stage_duration_seconds"


def query(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
          table: bool = False, heatmap: bool = False) -> prometheus.Dataquery:
    """One PromQL target; instant table queries feed bar charts and tables."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    q = q.instant() if instant else q.range()
    if not instant and EXEMPLAR_FAMILY in expr and ("histogram_quantile(" in expr or heatmap):
        q = q.exemplar(True)  # points that open the slow request's trace (the trace_id exemplar label)
    if table:
        q = q.format(PromQueryFormat.TABLE)
    elif heatmap:
        q = q.format(PromQueryFormat.HEATMAP)
    return q


def datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def label_variable(name: str, title: str, metric: str, *, multi: bool = True,
                   description: str = "", label: str = "") -> db.QueryVariable:
    """A variable holding the values of label `label` (default: `name`) on `metric`,
    already filtered by earlier variables."""
    v = (
        db.QueryVariable(name)
        .label(title)
        .query(f"label_values({metric}, {label or name})")
        .datasource(DATASOURCE)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    if multi:
        v = v.all_value(".*")
    if description:
        v = v.description(description)
    return v


def job_variable() -> db.QueryVariable:
    """The scrape job of the exporters, default the repository's own (grafana/selectors.py)."""
    return (
        label_variable("job", "Job", f"{P}build_info", multi=False,
                       description=f"the Prometheus job scraping the exporters (ours: {JOB_NAME})")
        .current(VariableOption(text=JOB_NAME, value=JOB_NAME, selected=True))
    )


def target_variables(description: str = "exporter instances (one per node)") -> list[VariableBuilder]:
    """the job, cluster (optional: empty without the label) and the exporter instances of the job."""
    return [
        job_variable(),
        label_variable("cluster", "Cluster", f"{P}build_info{{{DASHBOARD_JOB}}}",
                       description="the cluster label Prometheus adds where one Grafana shows several; "
                                   "empty (All) where it adds none"),
        label_variable("instance", "Exporter", f'{P}build_info{{{DASHBOARD_JOB}, cluster=~"$cluster"}}',
                       description=description),
    ]


def pod_variables(metric: str, histogram: bool = False) -> list[VariableBuilder]:
    """namespace and pod of the Triton pods `metric` (a family carrying both labels) has series of;
    a histogram's series are matched in either storage (histogram_series)."""
    def series(selector: str) -> str:
        return histogram_series(metric, selector) if histogram else f"{metric}{{{selector}}}"

    return [
        label_variable("namespace", "Namespace", series(TARGET),
                       description="Kubernetes namespace of the Triton pod (empty outside Kubernetes)"),
        label_variable("pod", "Pod", series(f'{TARGET}, namespace=~"$namespace"'),
                       description="the Triton pod (eBPF: owner of the socket; traces: its trace directory)"),
    ]


def hidden_label_variable(name: str, label: str, metric: str) -> db.QueryVariable:
    """A variable only used to repeat rows/panels (one per value of `label`); not shown."""
    return (
        label_variable(name, name, metric, label=label)
        .hide(VariableHide.HIDE_VARIABLE)
        .current(VariableOption(text="All", value="$__all", selected=True))
    )


def merge_columns(names: dict[str, str], exclude: tuple[str, ...] = ("Time",)) -> list[DataTransformerConfig]:
    """Merge instant table queries into one row per key and name each value column.

    `names` maps query refId to the column title (dict order is column order)."""
    rename = {f"Value #{ref}": title for ref, title in names.items()}
    order = {title: i + 1 for i, title in enumerate(names.values())}
    return [
        DataTransformerConfig(id_val="merge", options={}),
        DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": dict.fromkeys(exclude, True),
                "renameByName": rename,
                "indexByName": order,
            },
        ),
    ]


# Every histogram query works on classic and on native storage: the classic form `or` the native one.
# A Prometheus keeps one form of a series (native where it scrapes protobuf with native histograms
# on), so one side is empty; while both exist, e.g. just after switching, both sides show.

def histogram_series(metric: str, selector: str) -> str:
    """A series selector of a histogram stored either way: its classic _count or its native series."""
    return f'{{__name__=~"{metric}(_count)?", {selector}}}'


def _mean(metric: str, selector: str, by: str, fn: str, window: str) -> str:
    return (
        f"(sum by ({by}) ({fn}({metric}_sum{{{selector}}}[{window}]))\n"
        f"/ sum by ({by}) ({fn}({metric}_count{{{selector}}}[{window}])))\n"
        f"or (sum by ({by}) (histogram_sum({fn}({metric}{{{selector}}}[{window}])))\n"
        f"/ sum by ({by}) (histogram_count({fn}({metric}{{{selector}}}[{window}]))))"
    )


def mean(metric: str, selector: str, by: str, window: str = "$__rate_interval") -> str:
    """Mean observation of a histogram: rate of its sum over rate of its count."""
    return _mean(metric, selector, by, "rate", window)


def mean_over_range(metric: str, selector: str, by: str) -> str:
    """Mean observation over the dashboard's whole time range."""
    return _mean(metric, selector, by, "increase", "$__range")


def count_by(metric: str, selector: str, by: str, fn: str, window: str) -> str:
    """Observations of a histogram in the window (fn: rate or increase) per `by`, either form."""
    return (f"(sum by ({by}) ({fn}({metric}_count{{{selector}}}[{window}]))\n"
            f"or sum by ({by}) (histogram_count({fn}({metric}{{{selector}}}[{window}]))))")


def count_rate(metric: str, selector: str, window: str = "$__rate_interval") -> str:
    """Observations per second of a histogram (summed)."""
    return (f"(sum(rate({metric}_count{{{selector}}}[{window}]))\n"
            f"or sum(histogram_count(rate({metric}{{{selector}}}[{window}]))))")


def quantile(q: float, metric: str, selector: str, by: str) -> str:
    by_le = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({by_le}) "
        f"(rate({metric}_bucket{{{selector}}}[$__rate_interval])))\n"
        f"or histogram_quantile({q}, sum by ({by}) (rate({metric}{{{selector}}}[$__rate_interval])))"
    )


def slo(stage: str) -> str:
    """The p99 SLO of `stage` for $model from the recording rules: the model's own, else the default."""
    return (
        f'max(inference_profiler:stage_p99_slo_seconds{{model="$model", stage="{stage}"}})\n'
        f'or max(inference_profiler:stage_p99_slo_seconds{{model="*", stage="{stage}"}})'
    )


SLO_STYLE = [  # a dashed red line, never filled or stacked
    DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
    DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
    DynamicConfigValue(id_val="custom.fillOpacity", value=0),
]


def heatmap_buckets(metric: str, selector: str) -> str:
    """A heatmap's buckets: classic le series, or the native histogram Grafana draws as its buckets."""
    return (f"sum by (le) (increase({metric}_bucket{{{selector}}}[$__rate_interval]))\n"
            f"or sum(increase({metric}{{{selector}}}[$__rate_interval]))")
