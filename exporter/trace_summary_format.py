"""`summary --format trace_summary`: the layout and numbers of Triton's qa/common/trace_summary.py.

Same spans and arithmetic as its current version, and its `Data Flow:` block (trace_summary_flow) (sums of integer ns divided by
count*1000, printed with Python's default float formatting), per file, HTTP then
GRPC; GRPC infer starts at GRPC_WAITREAD_END as in docs/metrics.md. One difference, on purpose:
a negative span is skipped where trace_summary.py stops with ValueError, and a trace
without a header is skipped where it stops with KeyError.
"""

from __future__ import annotations

import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from .inputs import open_input
from .stages import COLUMN, SPANS
from .trace_summary_flow import Shape, write_dataflow
from .traces.assembly import Trace, TraceBatch
from .traces.records import ChunkEnd, Header, ReadResult, Stamps, read_records
from .traces.scanner import FileScan

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
    with open_input(path) as fp:
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


def _frontend_of(t: Trace) -> str | None:
    """The frontend a top-level trace is summed under (trace_summary.py's marks)."""
    for frontend, (mark, _, _) in FRONTENDS.items():
        if mark in t.stamps:
            return frontend
    return None


def _accumulate(models: dict[tuple[str, str], _Model], frontend: str, t: Trace,
                wanted: set[str] | None) -> bool:
    """Add one matched trace's spans to its model's sums; False when it is not summed."""
    ts = t.stamps
    if "REQUEST_START" not in ts or "REQUEST_END" not in ts or t.model is None:
        return False
    if wanted is not None and t.model not in wanted:
        return False
    key = (t.model, t.version or "")
    m = models.get(key)
    if m is None:
        m = models[key] = _Model(t.id)
    m.first_id = min(m.first_id, t.id)
    m.count += 1
    _, front_spans, _ = FRONTENDS[frontend]
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
    return True


def summarize(frontend: str, traces: dict[int, Trace], raw: list[tuple[int, str, int]],
              first_parent: set[int], show_trace: bool, out: TextIO,
              wanted: set[str] | None = None) -> int:
    """trace_summary.py's pass over a whole file held in memory (needed for -t); traces summed."""
    mark, _, _ = FRONTENDS[frontend]
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
        if not _accumulate(models, frontend, t, wanted):
            continue
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
    write_models(frontend, models, out)
    return sum(m.count for m in models.values())


def write_models(frontend: str, models: dict[tuple[str, str], _Model], out: TextIO) -> None:
    """The summary blocks, models in the order of their lowest trace id (as trace_summary.py)."""
    for (model, version), m in sorted(models.items(), key=lambda kv: kv[1].first_id):
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


WINDOW = 16384  # traces held open while a file streams, as the daemon's default
RECENT = 1 << 15  # frontends remembered for children that finish after their parent
MAX_WAITING = 10000  # children waiting for a parent not finished yet


class StreamedFile:
    """The same sums as summarize(), fed one finished trace at a time: memory stays bounded
    by the merge window, not the file. Children take their top-level parent's frontend; a
    child whose parent never shows up is not summed (as in trace_summary.py)."""

    def __init__(self, wanted: set[str] | None) -> None:
        self.wanted = wanted
        self.models: dict[str, dict[tuple[str, str], _Model]] = {f: {} for f in FRONTENDS}
        self.frontend: OrderedDict[int, str | None] = OrderedDict()
        self.waiting: OrderedDict[int, list[Trace]] = OrderedDict()

    def add(self, t: Trace) -> None:
        if t.parent_id is not None:
            if t.parent_id not in self.frontend:
                self.waiting.setdefault(t.parent_id, []).append(t)
                _trim(self.waiting, MAX_WAITING)
                return
            self._resolve(t, self.frontend[t.parent_id])
        else:
            self._resolve(t, _frontend_of(t))

    def add_batch(self, batch: TraceBatch) -> None:
        """Top-level traces summed column-wise; children (ensembles, BLS) one by one."""
        if not len(batch):
            return
        stamps = batch.stamps
        top = batch.parents < 0
        frontend_of: dict[int, str | None] = dict.fromkeys(batch.ids[top].tolist())
        for f, (mark, _, _) in reversed(FRONTENDS.items()):  # reversed: http wins, as _frontend_of
            rows = np.flatnonzero(top & (stamps[:, COLUMN[mark]] >= 0))
            self._sum_rows(f, batch, rows)
            frontend_of.update(dict.fromkeys(batch.ids[rows].tolist(), f))
        # children in this batch or later ones look their parent's frontend up
        self.frontend.update(frontend_of)
        _trim(self.frontend, RECENT)
        for pid in [p for p in self.waiting if p in frontend_of]:
            for child in self.waiting.pop(pid):
                self._resolve(child, frontend_of[pid])
        for i in np.flatnonzero(~top).tolist():
            self.add(batch.trace(i))

    def _sum_rows(self, frontend: str, batch: TraceBatch, rows: npt.NDArray[np.intp]) -> None:
        """_accumulate() over many top-level traces of one frontend at once (exact integer sums)."""
        st = batch.stamps
        has = st >= 0
        rows = rows[batch.hdr[rows] >= 0]
        rows = rows[has[rows, COLUMN["REQUEST_START"]] & has[rows, COLUMN["REQUEST_END"]]]
        if self.wanted is not None:
            keep = [i for i, (m, _) in enumerate(batch.headers) if m in self.wanted]
            rows = rows[np.isin(batch.hdr[rows], keep)]
        if not len(rows):
            return
        hdr = batch.hdr[rows]
        groups, gidx = np.unique(hdr, return_inverse=True)
        n = len(groups)
        r_st, r_has = st[rows], has[rows]
        _, front_spans, _ = FRONTENDS[frontend]
        gate_a, gate_b = FRONTEND_GATE[frontend]
        gate = r_has[:, COLUMN[gate_a]] & r_has[:, COLUMN[gate_b]]
        parts = r_has[:, [COLUMN[c] for c in ("COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_START",
                                               "COMPUTE_END")]].all(axis=1)
        spans: list[tuple[str, str, str, npt.NDArray[np.bool_]]] = []
        for name, a, b in front_spans:
            spans.append((name, a, b, gate))
        for name, a, b in CORE + QUEUE_COMPUTE:
            spans.append((name, a, b, np.ones(len(rows), dtype=bool)))
        for name, a, b in COMPUTE_PARTS:
            spans.append((name, a, b, parts))
        counts = np.bincount(gidx, minlength=n)
        firsts = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(firsts, gidx, batch.ids[rows])
        models = self.models[frontend]
        out: list[_Model] = []
        for g, h in enumerate(groups.tolist()):
            model, version = batch.headers[h]
            key = (model, version or "")
            m = models.get(key)
            if m is None:
                m = models[key] = _Model(int(firsts[g]))
            m.first_id = min(m.first_id, int(firsts[g]))
            m.count += int(counts[g])
            out.append(m)
        for name, a, b, cond in spans:
            ok = cond & r_has[:, COLUMN[a]] & r_has[:, COLUMN[b]]
            if not ok.any():
                continue
            d = np.where(ok, np.maximum(r_st[:, COLUMN[b]] - r_st[:, COLUMN[a]], 0), 0)
            sums = np.zeros(n, dtype=np.int64)
            np.add.at(sums, gidx, d)
            present = np.bincount(gidx, weights=ok, minlength=n) > 0
            for g in np.flatnonzero(present).tolist():
                out[g].spans[name] += int(sums[g])  # a negative span adds 0 but the key exists

    def _resolve(self, t: Trace, frontend: str | None) -> None:
        todo = [(t, frontend)]
        while todo:
            tr, f = todo.pop()
            self.frontend[tr.id] = f
            _trim(self.frontend, RECENT)
            if f is not None:
                _accumulate(self.models[f], f, tr, self.wanted)
            todo.extend((c, f) for c in self.waiting.pop(tr.id, []))

    def write(self, out: TextIO) -> int:
        for f in FRONTENDS:
            write_models(f, self.models[f], out)
        return sum(m.count for models in self.models.values() for m in models.values())


def _trim(d: OrderedDict[int, Any], bound: int) -> None:
    while len(d) > bound:
        d.popitem(last=False)


def stream_file(path: str, wanted: set[str] | None, out: TextIO) -> int:
    """One file summarized as it is read (the daemon's scanner, columns summed with numpy), then
    its Data Flow block."""
    summed = StreamedFile(wanted)
    shape = Shape()
    scan = FileScan(WINDOW, lambda r: None)
    with open_input(path) as fp:
        for batch in scan.batches(fp, ReadResult(), salvage_tail=True, on_tensor=shape.tensor):
            summed.add_batch(batch)
            shape.add_batch(batch)
    n = summed.write(out)
    write_dataflow(path, out, shape)
    return n


def run_trace_summary(paths: list[str], show_trace: bool, out: TextIO, models: list[str] | None = None) -> int:
    wanted = set(models) if models else None
    summed = 0
    for path in paths:
        out.write(f"File: {path}\n")
        if not show_trace:
            summed += stream_file(path, wanted, out)
            continue
        # -t prints traces in id order with their timestamps in file order: the whole file is needed
        traces, raw, first_parent = load_file(path)
        summed += summarize("http", traces, raw, first_parent, show_trace, out, wanted)
        summed += summarize("grpc", traces, raw, first_parent, show_trace, out, wanted)
        write_dataflow(path, out)
    if not summed:
        what = f"for model {', '.join(sorted(wanted))}" if wanted else f"in {', '.join(paths)}"
        print(f"inference-profiler: no complete traces found {what}", file=sys.stderr)
        return 1
    return 0

