"""Which series the dashboards and the alerts look at, in one place (node-mixin's `_config`).

JOB is the job every scrape config of this repository gives the exporter (prometheus/*.yml,
deploy/compose/prometheus.yml, the ServiceMonitor); the alerts in prometheus/rules use that
selector, which tests/test_dashboards.py holds them to. The dashboards select by their `job`
variable instead, whose default is that job: under another job name, pick it there (and change
the rules' selector).
"""

from __future__ import annotations

JOB_NAME = "inference-profiler"
JOB = f'job="{JOB_NAME}"'  # the alerts' and rules' selector
# the dashboards take the job from their `job` variable (default JOB_NAME), so a setup scraping
# under another job name picks it in Grafana instead of editing the JSON
DASHBOARD_JOB = 'job=~"$job"'
# cluster: set where one Grafana shows several clusters (Prometheus external_labels, Thanos,
# Mimir); elsewhere the variable is empty and its "All" (.*) matches series without the label
TARGET = f'{DASHBOARD_JOB}, cluster=~"$cluster", instance=~"$instance"'
# the Triton pod: on eBPF series with --kubernetes, on trace series laid out {namespace}/{pod}
POD = 'namespace=~"$namespace", pod=~"$pod"'
# variables of labels not every setup has: empty, they stay at "All" (.*), which matches series
# without the label too
OPTIONAL_VARIABLES = ("cluster", "namespace", "pod")
