"""The Findings panel: the tuning rules of prometheus/rules/tuning.rules.yml (the rules of
`inference-profiler diagnose`), one row per model and finding, with what to change."""

from __future__ import annotations

from grafana_foundation_sdk.builders import table
from grafana_foundation_sdk.models.dashboard import DynamicConfigValue, ValueMap, ValueMappingResult

from exporter.diagnose.rules import ADVICE

from .panels import merge_columns, query

FINDING = "model_version_rule:inference_profiler_tuning_finding:5m"


def findings_panel(selector: str = 'model=~".*"') -> table.Panel:
    """Every current finding (models matching `selector`), largest share first."""
    advice = ValueMap({rule: ValueMappingResult(text=f"{rule}: {text}") for rule, text in ADVICE.items()})
    return (
        table.Panel()
        .title("Tuning findings")
        .description(
            "What `inference-profiler diagnose` would say, from Prometheus' recording rules over the last "
            "5 minutes: one row per model and rule, with the share the rule judged (queue, copy or frontend "
            "share of end_to_end, socket queue against end_to_end, queue share of the first response) and "
            "what to change. Run `inference-profiler diagnose --prometheus-url` for the numbers behind "
            "each finding and what should move; docs/tuning.md explains each rule."
        )
        .unit("percentunit")
        .height(7)
        .span(24)
        .no_value("No findings: nothing to change")
        .show_header(True)
        .with_target(query(f"sort_desc({FINDING}{{{selector}}})", "", "A", instant=True, table=True))
        .transformations(merge_columns({"A": "share judged"}, exclude=("Time", "__name__")))
        .override_by_name("rule", [DynamicConfigValue(id_val="mappings", value=[advice]),
                                   DynamicConfigValue(id_val="custom.width", value=700)])
    )
