"""Which series the dashboards and the alerts look at, in one place (node-mixin's `_config`).

JOB is the job every scrape config of this repository gives the exporter (prometheus/*.yml,
deploy/compose/prometheus.yml, the ServiceMonitor); the alerts in prometheus/rules use the same
selector, which tests/test_dashboards.py holds them to. To run under another job name, change
JOB here, rebuild (python -m grafana.build) and change the rules' selector with it.
"""

from __future__ import annotations

JOB = 'job="inference-profiler"'
# cluster: set where one Grafana shows several clusters (Prometheus external_labels, Thanos,
# Mimir); elsewhere the variable is empty and its "All" (.*) matches series without the label
TARGET = f'{JOB}, cluster=~"$cluster", instance=~"$instance"'
# the Triton pod: on eBPF series with --kubernetes, on trace series laid out {namespace}/{pod}
POD = 'namespace=~"$namespace", pod=~"$pod"'
# variables of labels not every setup has: empty, they stay at "All" (.*), which matches series
# without the label too
OPTIONAL_VARIABLES = ("cluster", "namespace", "pod")
