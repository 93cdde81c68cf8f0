"""Grafana dashboards as code (grafana-foundation-sdk); `python -m grafana.build` writes the JSON."""
