"""An independent, deliberately plain implementation of SPEC's stage math.

json.load everything, merge by id, compute the stage table: the yardstick the
exporter's streaming pipeline is tested against, and the baseline of bench/.
It shares no code with exporter/.
"""

from __future__ import annotations

import json
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


def load_traces(paths: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    traces: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        base = path.rsplit(".", 1)[0] if path.rsplit(".", 1)[-1].isdigit() else path
        with open(path) as f:
            data = json.load(f)
        for obj in data:
            t = traces.setdefault((base, obj["id"]), {"ts": {}})
            for stamp in obj.get("timestamps", []):
                t["ts"][stamp["name"]] = stamp["ns"]
            for k in ("model_name", "model_version", "parent_id", "request_id"):
                if k in obj:
                    t[k] = obj[k]
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


def stage_stats(paths: list[str]) -> dict[str, Any]:
    """{'traces': {(model, version, protocol): n}, 'stages': {(model, version, protocol, stage): [count, sum_ns]},
    'negative': n}"""
    traces = load_traces(paths)
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    stages: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    negative = 0
    for key, t in traces.items():
        ts = t["ts"]
        if "model_name" not in t or "REQUEST_START" not in ts or "REQUEST_END" not in ts:
            continue
        labels = (t["model_name"], str(t["model_version"]), protocol(traces, key))
        counts[labels] += 1
        got = {}
        for stage, a, b in SPANS:
            if a in ts and b in ts:
                d = ts[b] - ts[a]
                if d < 0:
                    negative += 1
                    continue
                got[stage] = d
        if "request" in got and "queue" in got and "compute" in got:
            d = got["request"] - got["queue"] - got["compute"]
            if d < 0:
                negative += 1
            else:
                got["handler_overhead"] = d
        if all(k in got for k in ("http_infer", "request", "http_recv", "http_send")):
            d = got["http_infer"] - got["request"] - got["http_recv"] - got["http_send"]
            if d < 0:
                negative += 1
            else:
                got["frontend_overhead"] = d
        for stage, d in got.items():
            s = stages[(*labels, stage)]
            s[0] += 1
            s[1] += d
    return {"traces": dict(counts), "stages": dict(stages), "negative": negative}
