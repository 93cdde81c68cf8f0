"""Triton-shaped OTLP payloads for the OTLP tests and bench: per request an InferRequest
root (frontend events), a model span (triton.* attributes) and a compute span, as
Triton 2.51's OpenTelemetry mode sends them; and a plain HTTP poster."""

from __future__ import annotations

import base64
import gzip
import json
import os
import urllib.error
import urllib.request
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

T0 = 1_790_000_000 * 10**9  # a plausible wall clock (2026)
BOOT = T0 - 3600 * 10**9  # where Triton puts an HTTP send it did not capture


def _span(trace_id: bytes, name: str, parent: bytes, events: list[tuple[str, int]],
          attrs: dict[str, Any] | None = None) -> Span:
    s = Span(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=parent, name=name, kind=Span.SPAN_KIND_SERVER)
    s.start_time_unix_nano = min(ns for _, ns in events)
    s.end_time_unix_nano = max(ns for _, ns in events)
    for k, v in (attrs or {}).items():
        kv = s.attributes.add(key=k)
        if isinstance(v, int):
            kv.value.int_value = v
        else:
            kv.value.string_value = v
    for n, ns in events:
        s.events.add(name=n, time_unix_nano=ns)
    return s


def request_spans(t0: int = T0, model: str = "add_sub", protocol: str = "http", *, ensemble: str | None = None,
                  responses: int = 1, boot_sends: bool = False, request_id: str = "r1",
                  trace_id: bytes | None = None) -> list[Span]:
    """One request's spans, children first (the order Triton exports them)."""
    tid = trace_id or os.urandom(16)
    us = 1000
    front: list[tuple[str, int]] = []
    if protocol == "http":
        front += [("HTTP_RECV_START", t0), ("HTTP_RECV_END", t0 + 10 * us)]
    elif protocol == "grpc":
        front += [("GRPC_WAITREAD_START", t0 - 50 * us), ("GRPC_WAITREAD_END", t0)]
    start = t0 + 20 * us
    core = [("REQUEST_START", start), ("QUEUE_START", start + 5 * us)]
    comp = [("COMPUTE_START", start + 30 * us), ("COMPUTE_INPUT_END", start + 40 * us)]
    t = start + 40 * us
    for _ in range(responses):
        t += 100 * us
        front.append(("INFER_RESPONSE_COMPLETE", t))
        if protocol == "http":
            s0, s1 = (BOOT, BOOT) if boot_sends else (t + 5 * us, t + 15 * us)
            front += [("HTTP_SEND_START", s0), ("HTTP_SEND_END", s1)]
        elif protocol == "grpc":
            front += [("GRPC_SEND_START", t + 5 * us), ("GRPC_SEND_END", t + 15 * us)]
    comp += [("COMPUTE_OUTPUT_START", t - 50 * us), ("COMPUTE_END", t + 20 * us)]
    core.append(("REQUEST_END", t + 30 * us))
    root = _span(tid, "InferRequest", b"", front) if front else None
    top_model = ensemble or model
    top = _span(tid, top_model, root.span_id if root else b"", core,
                {"triton.model_name": top_model, "triton.model_version": 1, "triton.trace_id": 1,
                 "triton.trace_parent_id": 0, "triton.request_id": request_id})
    out: list[Span] = []
    if ensemble:
        child_core = [(n, ns + us) for n, ns in core[:2]] + [("REQUEST_END", core[2][1] - us)]
        child = _span(tid, model, top.span_id, child_core,
                      {"triton.model_name": model, "triton.model_version": 1, "triton.trace_id": 2,
                       "triton.trace_parent_id": 1, "triton.request_id": request_id})
        out += [_span(tid, "compute", child.span_id, comp), child]
    else:
        out.append(_span(tid, "compute", top.span_id, comp))
    out.append(top)
    if root is not None:
        out.append(root)
    return out


def export_request(spans: list[Span]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    ss.scope.name = "triton-server"
    ss.spans.extend(spans)
    return req


def to_json(req: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as Triton writes it: ids in hex."""
    doc = json_format.MessageToDict(req)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        s[k] = base64.b64decode(s[k]).hex()
    return json.dumps(doc).encode()


def post(url: str, body: bytes, content_type: str = "application/x-protobuf", encoding: str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    h = {"Content-Type": content_type, **(headers or {})}
    if encoding == "gzip":
        body = gzip.compress(body)
        h["Content-Encoding"] = "gzip"
    req = urllib.request.Request(url, data=body, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def span_dicts(body: bytes) -> list[dict[str, Any]]:
    """The spans of an OTLP/JSON body, read with nothing but json: the tests' own decode."""
    out: list[dict[str, Any]] = []
    for rs in json.loads(body).get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                attrs = {a["key"]: next(iter(a["value"].values())) for a in s.get("attributes", [])}
                out.append({"trace": s["traceId"], "id": s["spanId"], "parent": s.get("parentSpanId", ""),
                            "name": s["name"], "attrs": attrs,
                            "events": [(e["name"], int(e["timeUnixNano"])) for e in s.get("events", [])]})
    return out


def trace_file_objects(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Triton's trace file would hold for these spans: one trace per model span, its
    compute and (top level) frontend events; an HTTP send before the receive is the 0
    (not captured) Triton converted to the wall clock at boot."""
    by_id = {s["id"]: s for s in spans}
    models = [s for s in spans if "triton.model_name" in s["attrs"]]
    ids = {s["id"]: i + 1 for i, s in enumerate(models)}
    out: list[dict[str, Any]] = []
    for s in models:
        head: dict[str, Any] = {"id": ids[s["id"]], "model_name": s["attrs"]["triton.model_name"],
                                "model_version": int(s["attrs"]["triton.model_version"])}
        if s["attrs"].get("triton.request_id"):
            head["request_id"] = s["attrs"]["triton.request_id"]
        events = list(s["events"])
        parent = by_id.get(s["parent"])
        if parent is not None and parent["id"] in ids:
            head["parent_id"] = ids[parent["id"]]
        elif parent is not None:
            recv = min((ns for n, ns in parent["events"] if n == "HTTP_RECV_START"), default=0)
            events += [(n, 0 if n.startswith("HTTP_SEND") and ns < recv else ns) for n, ns in parent["events"]]
        for c in spans:
            if c["parent"] == s["id"] and c["id"] not in ids:
                events += c["events"]
        out.append(head)
        out.append({"id": ids[s["id"]], "timestamps": [{"name": n, "ns": ns} for n, ns in events]})
    return out
