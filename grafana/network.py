"""Network (eBPF): socket-level latency, queueing, message sizes, RTT and the probes' own cost."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models.dashboard import (
    ValueMap,
    ValueMappingResult,
)

from .panels import (
    P,
    PanelBuilder,
    VariableBuilder,
    base_dashboard,
    datasource_variable,
    heatmap_buckets,
    hidden_label_variable,
    histogram_series,
    label_variable,
    mean,
    merge_columns,
    pod_variables,
    quantile,
    query,
    target_variables,
)
from .selectors import POD, TARGET

UID = "inference-profiler-network"
LAT = P + "tcp_latency_seconds"
SQ = P + "tcp_socket_queue_seconds"
STAGE = P + "stage_duration_seconds"  # traced requests, whose buckets carry exemplars
MSG = P + "tcp_message_bytes"
RTT = P + "tcp_srtt_seconds"
SEL = f'{TARGET}, {POD}, port=~"$port", role=~"$role"'
POD_PORT_SEL = f'{TARGET}, {POD}, port=~"$port"'
EBPF_SEL = TARGET


def variables() -> list[VariableBuilder]:
    return [
        datasource_variable(),
        *target_variables(),
        *pod_variables(LAT, histogram=True),
        label_variable("port", "Port", histogram_series(LAT, TARGET),
                       description="the watched Triton ports (--ebpf-port)"),
        label_variable("role", "Role", histogram_series(LAT, f'{TARGET}, port=~"$port"'),
                       description="server: the port is local (Triton's side); client: the port is remote"),
        hidden_label_variable("heatport", "port", histogram_series(LAT, f'{TARGET}, port=~"$port"')),
        hidden_label_variable("heatrole", "role", histogram_series(LAT, f'{TARGET}, port=~"$port", role=~"$role"')),
    ]


def _heat(title: str, description: str, expr: str, unit: str) -> heatmap.Panel:
    return (
        heatmap.Panel().title(title).description(description).unit(unit).height(8).span(12)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(unit))
        .cell_values(heatmap.CellValues().unit("short"))
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Blues")
               .scale(hm.HeatmapColorScale.EXPONENTIAL).exponent(0.5).steps(64))
        .with_target(query(expr, "{{le}}", heatmap=True))
    )


def status_panels() -> list[PanelBuilder]:
    up = (
        stat.Panel().title("eBPF programs loaded").unit("none").height(4).span(12)
        .description("Whether each BPF program is loaded and attached on each node (0: not running).")
        .mappings([ValueMap(options={
            "0": ValueMappingResult(text="down", color="red"),
            "1": ValueMappingResult(text="up", color="green")})])
        .with_target(query(f"{P}ebpf_up{{{EBPF_SEL}}}", "{{instance}} {{program}}"))
    )
    attach = (
        table.Panel().title("Attach method").unit("none").height(4).span(12)
        .description("How each program is attached (tracepoint, kprobe, fentry) on each node.")
        .with_target(query(f"max by (instance, program, method) ({P}ebpf_attach_info{{{EBPF_SEL}}})",
                           "", "A", instant=True, table=True))
        .transformations(merge_columns({}, exclude=("Time", "Value")))
    )
    return [up, attach]


def latency_heatmap() -> heatmap.Panel:
    return _heat(
        "Socket latency on port $heatport ($heatrole)",
        "Request-to-response time seen on the sockets of this port: server = first recv of a request "
        "to first send of its response, client = first send to first recv. Bands are typical latencies.",
        heatmap_buckets(LAT, f'{TARGET}, {POD}, port="$heatport", role="$heatrole"'), "s",
    ).repeat("heatport").repeat_direction("h")


def latency_panels() -> list[PanelBuilder]:
    pct = (
        timeseries.Panel().title("Socket latency p50 / p99 by port and role").unit("s").height(8).span(24)
        .description("Percentiles of socket request-to-response time, and the traced requests' "
                     "end_to_end p99 (its exemplar dots open a slow request's trace): the server role "
                     "above the traced line is time spent outside Triton.")
        .with_target(query(quantile(0.5, LAT, SEL, "port, role"), "{{port}} {{role}} p50", "A"))
        .with_target(query(quantile(0.99, LAT, SEL, "port, role"), "{{port}} {{role}} p99", "B"))
        # the traced requests' own p99 beside it: its exemplars open the slow request's trace
        .with_target(query(quantile(0.99, STAGE, f'{TARGET}, {POD}, stage="end_to_end"', ""),
                           "traced end_to_end p99", "C"))
    )
    return [pct]


def socket_panels() -> list[PanelBuilder]:
    heat = _heat(
        "Socket queue time",
        "Time data waited in the kernel socket buffer before the application read it: high values "
        "mean Triton's frontend threads are not keeping up.",
        heatmap_buckets(SQ, POD_PORT_SEL), "s",
    )
    pct = (
        timeseries.Panel().title("Socket queue time p99 and mean by port").unit("s").height(8).span(12)
        .description("Tail and mean of the time received data sits unread in the socket.")
        .with_target(query(quantile(0.99, SQ, POD_PORT_SEL, "port"), "{{port}} p99", "A"))
        .with_target(query(mean(SQ, POD_PORT_SEL, "port"), "{{port}} mean", "B"))
    )
    return [heat, pct]


def traffic_panels() -> list[PanelBuilder]:
    size = (
        timeseries.Panel().title("Message size p50 / p99").unit("bytes").height(8).span(8)
        .description("Bytes per send/recv call on the watched ports: large payloads explain long recv/send stages.")
        .with_target(query(quantile(0.5, MSG, SEL, "port, role, direction"),
                           "{{port}} {{role}} {{direction}} p50", "A"))
        .with_target(query(quantile(0.99, MSG, SEL, "port, role, direction"),
                           "{{port}} {{role}} {{direction}} p99", "B"))
    )
    rate = (
        timeseries.Panel().title("Bytes per second").unit("Bps").height(8).span(8)
        .description("Traffic volume on the watched ports by role and direction.")
        .with_target(query(
            f"sum by (port, role, direction) (rate({P}tcp_bytes_total{{{SEL}}}[$__rate_interval]))",
            "{{port}} {{role}} {{direction}}"))
    )
    rtt = (
        timeseries.Panel().title("Smoothed RTT p50 / p99").unit("s").height(8).span(8)
        .description("The kernel's smoothed round-trip time on these connections: network distance to clients.")
        .with_target(query(quantile(0.5, RTT, POD_PORT_SEL, "port"), "{{port}} p50", "A"))
        .with_target(query(quantile(0.99, RTT, POD_PORT_SEL, "port"), "{{port}} p99", "B"))
    )
    retrans = (
        timeseries.Panel().title("Retransmits").unit("pps").height(8).span(12)
        .description("TCP segments retransmitted per second: loss or congestion between clients and Triton.")
        # ports with traffic but no retransmit yet have no series: they show as an explicit 0
        .with_target(query(
            f"sum by (port) (rate({P}tcp_retransmits_total{{{POD_PORT_SEL}}}[$__rate_interval]))\n"
            f"or sum by (port) (rate({P}tcp_bytes_total{{{POD_PORT_SEL}}}[$__rate_interval])) * 0",
            "{{port}}"))
    )
    return [size, rate, rtt, retrans]


def cost_panels() -> list[PanelBuilder]:
    cpu = (
        timeseries.Panel().title("eBPF CPU cost").unit("percentunit").height(8).span(12)
        .description("CPU time the BPF programs take in the kernel, as a fraction of one core "
                     "(needs kernel.bpf_stats_enabled=1).")
        .with_target(query(f"sum by (program) (rate({P}ebpf_run_seconds_total{{{EBPF_SEL}}}[$__rate_interval]))",
                           "{{program}}"))
    )
    per_run = (
        timeseries.Panel().title("eBPF time per run").unit("s").height(8).span(12)
        .description("Mean time of one program run: what each traced send/recv costs.")
        .with_target(query(
            f"sum by (program) (rate({P}ebpf_run_seconds_total{{{EBPF_SEL}}}[$__rate_interval]))\n"
            f"/ sum by (program) (rate({P}ebpf_run_count_total{{{EBPF_SEL}}}[$__rate_interval]))",
            "{{program}}"))
    )
    return [cpu, per_run]


def dashboard() -> db.Dashboard:
    d = (
        base_dashboard("Network (eBPF)", UID,
                       "Socket-level view of Triton's ports from in-kernel eBPF histograms (inference-profiler).",
                       ["inference-profiler", "triton", "ebpf"], variables())
    )
    for group, panels in (("Probes", status_panels()), ("Socket latency", latency_panels()),
                          ("Socket queue", socket_panels()), ("Traffic", traffic_panels()),
                          ("eBPF self-cost", cost_panels())):
        d = d.with_row(db.Row(group))
        for p in panels:
            d = d.with_panel(p)
        if group == "Socket latency":
            # one row per role, one heatmap per port inside it
            d = d.with_row(db.Row("Socket latency heatmaps: $heatrole").repeat("heatrole"))
            d = d.with_panel(latency_heatmap())
    return d
