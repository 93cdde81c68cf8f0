"""prometheus/rules/tuning.rules.yml is generated from diagnose's rule table and Thresholds: the
committed file is what the code gives, every rule of the table has its PromQL (or says why not),
and every threshold the PromQL compares with follows Thresholds."""

from __future__ import annotations

import re
from dataclasses import fields

import yaml

from exporter.diagnose import promql
from exporter.diagnose.rules import ADVICE, Thresholds


def test_the_committed_file_is_what_the_rules_give() -> None:
    assert promql.OUT.read_text() == promql.render(), "stale: run python -m exporter.diagnose.promql"
    assert promql.main(["--check"]) == 0


def test_every_rule_of_the_table_is_in_promql_or_says_why_not() -> None:
    assert set(promql.FINDINGS) | set(promql.NOT_IN_PROMQL) == set(ADVICE)
    assert not set(promql.FINDINGS) & set(promql.NOT_IN_PROMQL)
    groups = yaml.safe_load(promql.render())["groups"]
    labels = [r["labels"]["rule"] for g in groups for r in g["rules"] if r.get("record") == promql.FINDING]
    assert labels == list(promql.FINDINGS)


def test_each_threshold_in_the_promql_follows_thresholds() -> None:
    used = {m for _, expr in promql.FINDINGS.values() for m in re.findall(r"<([a-z_]+)>", expr)}
    assert used <= {f.name for f in fields(Thresholds)} | set(promql.derived(Thresholds()))
    assert {"queue_share", "batch_full_share", "copy_share", "frontend_share", "large_message_bytes",
            "socket_queue_share", "first_response_queue_share", "streaming_min_responses"} <= used
    default = promql.render()
    for name in sorted(used - set(promql.derived(Thresholds()))):
        changed = promql.render(Thresholds(**{name: 123.25}))
        assert changed != default and changed.count("123.25") == default.count("123.25") + sum(
            expr.count(f"<{name}>") for _, expr in promql.FINDINGS.values()), name
    # the derived one: a delay of 6 gaps keeps 3 requests queued
    assert ">= 3)" in promql.render(Thresholds(delay_gap_ratio=6))
