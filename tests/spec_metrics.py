"""The metric names SPEC.md defines, for tests that check dashboards and rules use only those."""

from __future__ import annotations

# Every family SPEC.md defines (histograms also as _bucket/_sum/_count, counters as _total).
SPEC_METRICS = {
    "stage_duration_seconds", "trace_files_total", "traces_total", "trace_records_rejected_total",
    "trace_last_ingest_timestamp_seconds", "timeline_seconds_total", "responses_per_request",
    "triton_up", "triton_scrape_duration_seconds", "triton_stage_seconds_total", "triton_requests_total",
    "triton_inferences_total", "triton_executions_total", "triton_pending_requests",
    "triton_batch_executions_total", "triton_batch_stage_seconds_total", "triton_model_config_info",
    "perf_analyzer_stage_seconds", "perf_analyzer_throughput", "perf_analyzer_latency_seconds",
    "tcp_latency_seconds", "tcp_socket_queue_seconds", "tcp_message_bytes", "tcp_srtt_seconds",
    "tcp_bytes_total", "tcp_retransmits_total", "ebpf_up", "ebpf_attach_info", "ebpf_run_seconds_total",
    "ebpf_run_count_total", "build_info", "errors_total",
}
HISTOGRAMS = {"stage_duration_seconds", "responses_per_request", "tcp_latency_seconds", "tcp_socket_queue_seconds",
              "tcp_message_bytes", "tcp_srtt_seconds"}


def spec_names() -> set[str]:
    names = {"inference_profiler_" + m for m in SPEC_METRICS}
    for h in HISTOGRAMS:
        names |= {f"inference_profiler_{h}_{s}" for s in ("bucket", "sum", "count")}
    return names
