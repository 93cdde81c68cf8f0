"""OTLP/JSON attribute values: proto3 JSON writes an int64 as a number or as decimal text. Text that
is not a number, or a null attribute or event (a real Triton 2.51 sent both under load), costs that
item only: the body is decoded, and a span left without triton.model_version is rejected alone."""

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


def test_null_attributes_and_events_are_skipped() -> None:
    doc = json.loads(_body([1, 2]))
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans[0]["attributes"].insert(1, None)
    spans[0]["events"] = [None, {"name": "REQUEST_START", "timeUnixNano": "1790000000000000000"}]
    spans[1]["attributes"][1] = None
    records, _ = decode(json.dumps(doc).encode(), "application/json", None)
    assert records[0].attrs == {"triton.model_name": "add_sub", "triton.model_version": "1"}
    assert records[0].events == [("REQUEST_START", 1_790_000_000 * 10**9)]
    assert records[1].attrs == {"triton.model_name": "add_sub"}
