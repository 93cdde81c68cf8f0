"""`summary --format trace_summary`: the layout and numbers of Triton's qa/common/trace_summary.py.

Same spans and arithmetic as its current version (sums of integer ns divided by
count*1000, printed with Python's default float formatting), per file, HTTP then
GRPC; GRPC infer starts at GRPC_WAITREAD_END as in docs/metrics.md. One difference, on purpose:
a negative span is skipped where trace_summary.py stops with ValueError, and a trace
without a header is skipped where it stops with KeyError.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from .stages import SPANS
from .traces.assembly import Trace
from .traces.records import ChunkEnd, Header, ReadResult, Stamps, read_records

_SPAN = {stage.upper(): (a, b) for stage, a, b in SPANS}  # trace_summary.py's names are ours upper-cased


def _spans(*names: str) -> tuple[tuple[str, str, str], ...]:
    return tuple((n, *_SPAN[n]) for n in names)


FRONTENDS = {
    "http": ("HTTP_RECV_START", _spans("HTTP_INFER", "HTTP_RECV", "HTTP_SEND"), "HTTP_SEND_END"),
    "grpc": ("GRPC_WAITREAD_START", _spans("GRPC_INFER", "GRPC_SEND"), "GRPC_SEND_END"),
}
# the span whose two ends must both be present for the frontend's spans to be summed
FRONTEND_GATE = {"http": _SPAN["HTTP_INFER"], "grpc": _SPAN["GRPC_INFER"]}
CORE = _spans("REQUEST")
QUEUE_COMPUTE = _spans("QUEUE", "COMPUTE")
COMPUTE_PARTS = _spans("COMPUTE_INPUT", "COMPUTE_INFER", "COMPUTE_OUTPUT")


@dataclass
class _Model:
    first_id: int
    count: int = 0
    spans: Counter[str] = field(default_factory=Counter)


def _add(spans: Counter[str], ts: dict[str, int], name: str, a: str, b: str) -> None:
    if ts[b] >= ts[a]:
        spans[name] += ts[b] - ts[a]
    else:
        spans[name] += 0  # trace_summary.py raises here; we skip the span but keep the key


def load_file(path: str) -> tuple[dict[int, Trace], list[tuple[int, str, int]], set[int]]:
    """Traces of one file merged by id, every timestamp in file order (for -t), and the ids
    whose first object names the parent."""
    first_parent: set[int] = set()
    traces: dict[int, Trace] = {}
    raw: list[tuple[int, str, int]] = []
    rejected: Counter[str] = Counter()
    with open(path, "rb") as fp:
        for rec in read_records(fp, lambda r: rejected.update([r]), ReadResult(), salvage_tail=True):
            if isinstance(rec, ChunkEnd):
                continue
            t = traces.get(rec.id)
            if t is None:
                t = traces[rec.id] = Trace(rec.id)
                # trace_summary.py shows 'parent id' only when the id's first object carries it
                if isinstance(rec, Header) and rec.parent_id is not None:
                    first_parent.add(rec.id)
            if isinstance(rec, Stamps):
                for name, ns in rec.stamps:
                    t.stamps[name] = ns
                    raw.append((rec.id, name, ns))
            else:
                t.model, t.version = rec.model, rec.version
                t.request_id, t.parent_id = rec.request_id, rec.parent_id
    return traces, raw, first_parent


def summarize(frontend: str, traces: dict[int, Trace], raw: list[tuple[int, str, int]],
              first_parent: set[int], show_trace: bool, out: TextIO) -> None:
    mark, front_spans, _ = FRONTENDS[frontend]
    matched: set[int] = set()
    for tid in sorted(traces):
        t = traces[tid]
        if t.parent_id is None:
            if mark in t.stamps:
                matched.add(tid)
        elif t.parent_id in matched:
            matched.add(tid)
    models: dict[tuple[str, str], _Model] = {}
    by_id: dict[int, list[tuple[str, int]]] = {}
    if show_trace:
        for tid, name, ns in raw:
            by_id.setdefault(tid, []).append((name, ns))
    for tid in sorted(matched):
        t = traces[tid]
        ts = t.stamps
        if "REQUEST_START" not in ts or "REQUEST_END" not in ts or t.model is None:
            continue
        key = (t.model, t.version or "")
        m = models.setdefault(key, _Model(tid))
        m.count += 1
        gate_a, gate_b = FRONTEND_GATE[frontend]
        if gate_a in ts and gate_b in ts:
            for name, a, b in front_spans:
                if a in ts and b in ts:
                    _add(m.spans, ts, name, a, b)
        for name, a, b in CORE:
            _add(m.spans, ts, name, a, b)
        for name, a, b in QUEUE_COMPUTE:
            if a in ts and b in ts:
                _add(m.spans, ts, name, a, b)
        if "COMPUTE_INPUT_END" in ts and "COMPUTE_OUTPUT_START" in ts and "COMPUTE_START" in ts \
                and "COMPUTE_END" in ts:
            for name, a, b in COMPUTE_PARTS:
                _add(m.spans, ts, name, a, b)
        if show_trace:
            out.write(f"{t.model} ({t.version}):\n")
            out.write(f"\tid: {tid}\n")
            if t.parent_id is not None and tid in first_parent:
                out.write(f"\tparent id: {t.parent_id}\n")
            now: int | None = None
            shown = [x for x in by_id.get(tid, []) if not x[0].startswith("GRPC_WAITREAD")]
            for name, ns in sorted(shown, key=lambda x: x[1]):
                if now is not None:
                    out.write(f"\t\t{(ns - now) / 1000}us\n")
                out.write(f"\t{name}\n")
                now = ns
    for (model, version), m in models.items():
        cnt, sp = m.count, m.spans
        out.write(f"Summary for {model} ({version}): trace count = {cnt}\n")
        infer = f"{frontend.upper()}_INFER"
        if infer in sp and frontend == "http":
            res = f"HTTP infer request (avg): {sp[infer] / (cnt * 1000)}us\n"
            res += f"\tReceive (avg): {sp['HTTP_RECV'] / (cnt * 1000)}us\n"
            res += f"\tSend (avg): {sp['HTTP_SEND'] / (cnt * 1000)}us\n"
            res += f"\tOverhead (avg): {(sp[infer] - sp['REQUEST'] - sp['HTTP_RECV'] - sp['HTTP_SEND']) / (cnt * 1000)}us\n"
            out.write(res + "\n")
        elif infer in sp:
            res = f"GRPC infer request (avg): {sp[infer] / (cnt * 1000)}us\n"
            res += f"\tSend (avg): {sp['GRPC_SEND'] / (cnt * 1000)}us\n"
            out.write(res + "\n")
        out.write(f"\tHandler (avg): {sp['REQUEST'] / (cnt * 1000)}us\n")
        if "QUEUE" in sp and "COMPUTE" in sp:
            out.write(f"\t\tOverhead (avg): {(sp['REQUEST'] - sp['QUEUE'] - sp['COMPUTE']) / (cnt * 1000)}us\n")
            out.write(f"\t\tQueue (avg): {sp['QUEUE'] / (cnt * 1000)}us\n")
            out.write(f"\t\tCompute (avg): {sp['COMPUTE'] / (cnt * 1000)}us\n")
        if "COMPUTE_INPUT" in sp and "COMPUTE_OUTPUT" in sp:
            out.write(f"\t\t\tInput (avg): {sp['COMPUTE_INPUT'] / (cnt * 1000)}us\n")
            out.write(f"\t\t\tInfer (avg): {sp['COMPUTE_INFER'] / (cnt * 1000)}us\n")
            out.write(f"\t\t\tOutput (avg): {sp['COMPUTE_OUTPUT'] / (cnt * 1000)}us\n")


def dataflow(traces: dict[int, Trace], out: TextIO) -> None:
    """The 'Data Flow' block trace_summary.py prints for ensembles (tensor dumps need level TENSORS)."""
    children: dict[int, list[int]] = {}
    for tid in sorted(traces):
        p = traces[tid].parent_id
        if p is not None:
            children.setdefault(p, []).append(tid)
    if not children:
        return
    out.write("Data Flow:\n")
    root = next(iter(children))

    def depth_of(tid: int) -> int:
        return 1 + max((depth_of(c) for c in children.get(tid, [])), default=-1) if tid in children else 0

    depth = depth_of(root)

    def show(tid: int, step: int) -> None:
        tabs = "\t" * (step + 1)
        line = "=" * (50 + 8 * (depth - step))
        out.write(f"{tabs}{line}\n")
        t = traces.get(tid)
        if t is not None and t.model is not None and t.stamps:
            out.write(f"{tabs}Name:   {t.model}\n{tabs}Version:{t.version}\n")
        out.write(f"{tabs}{line}\n")
        for c in children.get(tid, []):
            show(c, step + 1)

    show(root, 0)


def run_trace_summary(paths: list[str], show_trace: bool, out: TextIO) -> int:
    for path in paths:
        traces, raw, first_parent = load_file(path)
        out.write(f"File: {path}\n")
        summarize("http", traces, raw, first_parent, show_trace, out)
        summarize("grpc", traces, raw, first_parent, show_trace, out)
        dataflow(traces, out)
    return 0
