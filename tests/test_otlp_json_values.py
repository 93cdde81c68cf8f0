"""OTLP/JSON attribute values: proto3 JSON writes an int64 as a number or as decimal text. Text that
is not a number (a real Triton 2.51 sent one under load) costs that attribute only: the body is
decoded, and a span left without triton.model_version is rejected alone."""

from __future__ import annotations

import json
import time
from collections import Counter

from exporter.otlp.decode import decode
from exporter.otlp.spans import spans_of


def _body(versions: list[object]) -> bytes:
    spans = [{"traceId": "11" * 16, "spanId": f"{i + 1:016x}", "parentSpanId": "", "name": "add_sub",
              "attributes": [{"key": "triton.model_name", "value": {"stringValue": "add_sub"}},
                             {"key": "triton.model_version", "value": {"intValue": v}}]}
             for i, v in enumerate(versions)]
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).encode()


def test_int_values_as_numbers_or_text_and_unreadable_ones_reject_their_span_only() -> None:
    records, _ = decode(_body([1, "2", "-3", "007", "", "x", " 5", "²"]), "application/json", None)
    assert [r.attrs.get("triton.model_version") for r in records] == ["1", "2", "-3", "7", None, None, None, None]
    rejected: Counter[str] = Counter()
    kept = list(spans_of(records, lambda reason, n: rejected.update({reason: n}), time.time_ns()))
    assert len(kept) == 4 and rejected == {"missing_attribute": 4}
