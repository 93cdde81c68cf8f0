"""An independent, deliberately plain implementation of the stage math of docs/metrics.md.

json.load everything, merge by id, compute the stage table: the yardstick the
exporter's streaming pipeline is tested against, and the baseline of bench/.
It shares no code with exporter/.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from typing import Any

SPANS = [
    ("http_infer", "HTTP_RECV_START", "HTTP_SEND_END"),
    ("http_recv", "HTTP_RECV_START", "HTTP_RECV_END"),
    ("http_send", "HTTP_SEND_START", "HTTP_SEND_END"),
    ("grpc_infer", "GRPC_WAITREAD_END", "GRPC_SEND_END"),
    ("grpc_waitread", "GRPC_WAITREAD_START", "GRPC_WAITREAD_END"),
    ("grpc_send", "GRPC_SEND_START", "GRPC_SEND_END"),
    ("request", "REQUEST_START", "REQUEST_END"),
    ("queue", "QUEUE_START", "COMPUTE_START"),
    ("compute", "COMPUTE_START", "COMPUTE_END"),
    ("compute_input", "COMPUTE_START", "COMPUTE_INPUT_END"),
    ("compute_infer", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
    ("compute_output", "COMPUTE_OUTPUT_START", "COMPUTE_END"),
]


REPEATED = {"GRPC_SEND_START", "GRPC_SEND_END", "HTTP_SEND_START", "HTTP_SEND_END", "INFER_RESPONSE_COMPLETE"}
KNOWN = {n for _, a, b in SPANS for n in (a, b)} | {"INFER_RESPONSE_COMPLETE", "CUSTOM_ACTIVITY"}
# segment priority: the first whose interval holds an instant owns it; the rest is the frontend's
SEGMENT_PRIORITY = ["compute_input", "compute_infer", "compute_output", "queue", "send", "cache_hit",
                    "between_responses", "model_after_release", "handler_overhead", "recv"]
# a tensor record with what separates it from the next object (its data may hold anything)
TENSOR_RECORD = re.compile(rb'\{"id":\d+,"activity":"TENSOR_\w+","tensor":\{"name":".*?","data":".*?",'
                           rb'"shape":"[0-9,]*","dtype":"[A-Z0-9_]+"\}\},?', re.DOTALL)
SENDS = ("HTTP_SEND_START", "HTTP_SEND_END", "GRPC_SEND_START", "GRPC_SEND_END")


def load_traces(paths: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """Every trace, with every occurrence of each timestamp name (0 ns: not captured, left out)."""
    traces: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        base = path.rsplit(".", 1)[0] if path.rsplit(".", 1)[-1].isdigit() else path
        with open(path, "rb") as f:
            raw = f.read()
        try:
            data = json.loads(raw)
        except ValueError:  # trace level TENSORS: Triton writes UINT8 and BYTES tensor data unescaped
            data = json.loads(TENSOR_RECORD.sub(b"", raw).replace(b",]", b"]").replace(b"[,", b"["))
        for obj in data:
            t = traces.setdefault((base, obj["id"]), {"all": defaultdict(list)})
            for stamp in obj.get("timestamps", []):
                if stamp["ns"]:
                    t["all"][stamp["name"]].append(stamp["ns"])
            for k in ("model_name", "model_version", "parent_id", "request_id"):
                if k in obj:
                    t[k] = obj[k]
    for t in traces.values():  # spans take the last: the latest of a repeated name, else the last written
        t["ts"] = {n: (max(v) if n in REPEATED else v[-1]) for n, v in t["all"].items() if n in KNOWN}
    return traces
def protocol(traces: dict[tuple[str, int], dict[str, Any]], key: tuple[str, int]) -> str:
    t = traces[key]
    while "parent_id" in t and (key[0], t["parent_id"]) in traces:
        key = (key[0], t["parent_id"])
        t = traces[key]
    if "parent_id" in t:
        return "none"
    names = t["ts"]
    if any(n.startswith("HTTP_") for n in names):
        return "http"
    if any(n.startswith("GRPC_") for n in names):
        return "grpc"
    return "none"


def responses_out(t: dict[str, Any]) -> list[int]:
    a = t["all"]
    sends = sorted(a.get("HTTP_SEND_END", []) + a.get("GRPC_SEND_END", []))
    return sends or sorted(a.get("INFER_RESPONSE_COMPLETE", [])) or [t["ts"]["REQUEST_END"]]


def segments(t: dict[str, Any], lo: int, hi: int) -> dict[str, int]:
    """Who owns each elementary piece of [lo, hi] between consecutive interval ends."""
    ts, a = t["ts"], t["all"]
    iv: list[tuple[str, int, int]] = []

    def span(seg: str, x: str, y: str) -> None:
        if x in ts and y in ts:
            iv.append((seg, ts[x], ts[y]))

    span("compute_input", "COMPUTE_START", "COMPUTE_INPUT_END")
    span("compute_infer", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START")
    span("compute_output", "COMPUTE_OUTPUT_START", "COMPUTE_END")
    span("queue", "QUEUE_START", "COMPUTE_START")
    for x, y in (("HTTP_SEND_START", "HTTP_SEND_END"), ("GRPC_SEND_START", "GRPC_SEND_END")):
        for s0, e0 in zip(sorted(a.get(x, [])), sorted(a.get(y, [])), strict=False):
            iv.append(("send", s0, e0))
    if not any(n.startswith("COMPUTE_") for n in ts):
        span("cache_hit", "QUEUE_START", "REQUEST_END")
    iv.append(("between_responses", max(ts["REQUEST_END"], responses_out(t)[0]), hi))
    if a.get("INFER_RESPONSE_COMPLETE"):
        iv.append(("model_after_release", ts["REQUEST_END"], min(a["INFER_RESPONSE_COMPLETE"])))
    span("handler_overhead", "REQUEST_START", "REQUEST_END")
    span("recv", "HTTP_RECV_START", "HTTP_RECV_END")
    points = sorted({lo, hi} | {min(max(p, lo), hi) for _, x, y in iv for p in (x, y)})
    out: dict[str, int] = defaultdict(int)
    for x, y in itertools.pairwise(points):
        owners = [seg for seg, s0, e0 in iv if s0 <= x and y <= e0 and e0 > s0]
        owner = min(owners, key=SEGMENT_PRIORITY.index) if owners else "frontend_overhead"
        out[owner] += y - x
    return out


def outcome(t: dict[str, Any], failed: bool = False) -> str:
    """answered, cancelled (a top-level request that sent nothing; over HTTP, that did not complete a
    response either), cache_hit (queued, never computed), failed (the source says so)."""
    names = t["ts"]
    http = any(n.startswith("HTTP_") for n in names)
    grpc = any(n.startswith("GRPC_") for n in names)
    if failed:
        return "failed"
    if (http or grpc) and not any(n in names for n in SENDS) and not (http and "INFER_RESPONSE_COMPLETE" in names):
        return "cancelled"
    if "QUEUE_START" in names and not any(n.startswith("COMPUTE_") for n in names):
        return "cache_hit"
    return "answered"


class Observed:
    """One countable trace's labels and what it gives."""

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.outcome = "answered"
        self.durations: list[tuple[str, int]] = []  # (stage, ns), one per observation
        self.negative = 0
        self.responses = 0
        self.segments: dict[str, int] = {}


def observe(traces: dict[tuple[str, int], dict[str, Any]], key: tuple[str, int]) -> Observed | None:
    """The stage table over one trace; None where it does not count."""
    t = traces[key]
    ts = t["ts"]
    if "model_name" not in t or "REQUEST_START" not in ts or "REQUEST_END" not in ts:
        return None
    o = Observed((t["model_name"], str(t["model_version"]), protocol(traces, key)))
    o.outcome = outcome(t)
    for stage, a, b in SPANS:
        if a in ts and b in ts:
            d = ts[b] - ts[a]
            if d < 0:
                o.negative += 1
                continue
            o.durations.append((stage, d))
    if o.outcome == "cancelled":  # no response: no response stages, no timeline
        add_customs(o, t)
        return o
    arrival = ts.get("HTTP_RECV_START", ts.get("GRPC_WAITREAD_END", ts["REQUEST_START"]))
    outs = responses_out(t)
    ends = [ts[n] for n in ("HTTP_SEND_END", "GRPC_SEND_END", "INFER_RESPONSE_COMPLETE") if n in ts]
    end = max(ends) if ends else ts["REQUEST_END"]
    o.responses = len(outs)
    if end < arrival:
        o.negative += 1
        return o
    o.durations.append(("end_to_end", end - arrival))
    if outs[0] >= arrival:
        o.durations.append(("first_response", outs[0] - arrival))
    else:
        o.negative += 1
    o.durations.extend(("inter_response", y - x) for x, y in itertools.pairwise(outs))
    o.segments = segments(t, arrival, end)
    o.durations.append(("handler_overhead", o.segments.get("handler_overhead", 0)))
    if any(n.startswith(("HTTP_", "GRPC_")) for n in ts):  # its own frontend (children have none)
        o.durations.append(("frontend_overhead", o.segments.get("frontend_overhead", 0)))
    add_customs(o, t)
    return o


def add_customs(o: Observed, t: dict[str, Any]) -> None:
    customs: dict[str, list[int]] = {}
    for name, v in t["all"].items():
        if name not in KNOWN and (name.endswith("_START") or name.endswith("_END")):
            base, _, edge = name.rpartition("_")
            customs.setdefault("custom_" + base.lower(), [-1, -1])[edge == "END"] = max(v)
    o.durations.extend((stage, e0 - s0) for stage, (s0, e0) in customs.items() if s0 >= 0 and e0 >= s0)


def stage_stats(paths: list[str]) -> dict[str, Any]:
    """{'traces': {(model, version, protocol): n}, 'stages': {(model, version, protocol, stage): [count, sum_ns]},
    'negative': n, 'responses': {(model, version, protocol): [count, sum]},
    'timeline': {(model, version, protocol, segment): ns}, 'outcomes': {(model, version, protocol, outcome): n}}"""
    traces = load_traces(paths)
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    stages: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    responses: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    timeline: dict[tuple[str, str, str, str], int] = defaultdict(int)
    outcomes: dict[tuple[str, str, str, str], int] = defaultdict(int)
    negative = 0
    for key in traces:
        o = observe(traces, key)
        if o is None:
            continue
        counts[o.labels] += 1
        outcomes[(*o.labels, o.outcome)] += 1
        negative += o.negative
        if o.outcome != "cancelled":
            responses[o.labels][0] += 1
            responses[o.labels][1] += o.responses
        for stage, d in o.durations:
            s = stages[(*o.labels, stage)]
            s[0] += 1
            s[1] += d
        for seg, ns in o.segments.items():
            timeline[(*o.labels, seg)] += ns
    return {"traces": dict(counts), "stages": dict(stages), "negative": negative,
            "responses": dict(responses), "timeline": {k: v for k, v in timeline.items() if v},
            "outcomes": dict(outcomes)}


def dataflow(path: str) -> str:
    """The `Data Flow:` block of trace_summary.py for a file json.load reads, by its rules: objects
    in id order; the tree of the parent of the lowest child id (else the lowest id with a tensor);
    a box per node with its name where the trace came through a frontend, and its tensors."""
    import csv

    import numpy as np

    with open(path) as f:
        objs = sorted(json.load(f), key=lambda o: o.get("id", -1))
    kids: dict[int, list[int]] = {}
    for o in objs:
        if "parent_id" in o:
            kids.setdefault(o["parent_id"], []).append(o["id"])
    matched: set[int] = set()
    for o in objs:
        if "parent_id" in o:
            if o["parent_id"] in matched:
                matched.add(o["id"])
        elif any(s["name"] in ("HTTP_RECV_START", "GRPC_WAITREAD_START") for s in o.get("timestamps", [])):
            matched.add(o["id"])
    dtypes = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8,
              "BOOL": bool, "FP16": np.float16, "INT8": np.int8, "BYTES": np.object_}

    def box(tid: int, step: int, depth: int) -> list[str]:
        tabs = "\t" * (step + 1)
        rule = tabs + "=" * (50 + 8 * (depth - step))
        lines = [rule]
        header = next((o for o in objs if o.get("id") == tid and "model_name" in o), None)
        if header is not None and tid in matched:
            lines += [f"{tabs}Name:   {header['model_name']}", f"{tabs}Version:{header['model_version']}"]
        for o in objs:
            if o.get("id") == tid and o.get("activity", "").startswith("TENSOR_"):
                t = o["tensor"]
                values = (next(csv.reader([t["data"]], skipinitialspace=True)) if t["dtype"] == "BYTES"
                          else list(map(float, t["data"].split(","))))
                arr = np.array(values, dtype=dtypes[t["dtype"]]).reshape([int(x) for x in t["shape"].split(",")])
                lines += [f"{tabs}{o['activity'][len('TENSOR_'):]}:", f"{tabs}\t{t['name']}: {arr}"]
        return [*lines, rule]

    if not kids:
        first = next((o["id"] for o in objs if "activity" in o), None)
        return "" if first is None else "\n".join(["Data Flow:", *box(first, 0, 0)]) + "\n"
    first_child = min(c for cs in kids.values() for c in cs)
    root = next(p for p, cs in kids.items() if first_child in cs)
    depth = 0

    def walk(tid: int, step: int, out: list[tuple[int, int]]) -> None:
        nonlocal depth
        out.append((tid, step))
        if tid in kids:
            depth += 1
            for c in kids[tid]:
                walk(c, step + 1, out)

    order: list[tuple[int, int]] = []
    walk(root, 0, order)
    lines = ["Data Flow:"]
    for tid, step in order:
        lines += box(tid, step, depth)
    return "\n".join(lines) + "\n"
