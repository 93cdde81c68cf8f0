"""The `Data Flow:` block of `summary --format trace_summary`, as Triton's trace_summary.py prints it.

Traces are taken in id order. Where some trace names a parent, the block is the tree of the
parent named by the lowest child id: each node a ruled box (longer by 8 `=` per level of the
tree above it), indented one tab per level. Otherwise it is the box of the lowest id that has
tensor records. A box holds the model's name and version where its trace came through a
frontend (HTTP or gRPC, or as a child of one), then its tensor records (trace level TENSORS) in
file order, each as a numpy array of its dtype and shape. The file is read twice (its shape,
then, where it has tensor records, the chosen traces' tensors): a name and a parent per trace are
held, never its timestamps or tensors.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from .inputs import open_input
from .stages import COLUMN
from .traces.assembly import TraceBatch
from .traces.records import ReadResult, read_records
from .traces.scanner import FileScan

WINDOW = 16384  # traces held open while a file streams, as the daemon's default

FRONTEND_MARKS = ("HTTP_RECV_START", "GRPC_WAITREAD_START")  # what makes a top-level trace a frontend's
ACTIVITIES = {"TENSOR_QUEUE_INPUT": "QUEUE_INPUT", "TENSOR_BACKEND_INPUT": "BACKEND_INPUT",
              "TENSOR_BACKEND_OUTPUT": "BACKEND_OUTPUT"}
DTYPES: dict[str, Any] = {
    "BOOL": bool, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
MAX_NODES = 1024  # boxes of one tree at most
# a tensor record Triton wrote unescaped (UINT8, BYTES): its fields by position, not by JSON
RAW_TENSOR = re.compile(rb'\{"id":(\d+),"activity":"(\w+)","tensor":\{"name":"(.*?)","data":"(.*)",'
                        rb'"shape":"([0-9,]*)","dtype":"(\w+)"\}\}', re.DOTALL)


@dataclass
class Tensor:
    id: int
    activity: str
    name: str
    data: str
    shape: str
    dtype: str


def parse_tensor(raw: bytes) -> Tensor | None:
    """A tensor record's fields; decoded as JSON where Triton wrote valid JSON."""
    try:
        obj = json.loads(raw.rstrip(b" \t\r\n,]"))
        t = obj["tensor"]
        return Tensor(int(obj["id"]), str(obj["activity"]), str(t["name"]), str(t["data"]), str(t["shape"]),
                      str(t["dtype"]))
    except (ValueError, KeyError, TypeError):
        m = RAW_TENSOR.match(raw)
        if m is None:
            return None
        name, data = (g.decode("utf-8", "replace") for g in m.group(3, 4))
        return Tensor(int(m.group(1)), m.group(2).decode(), name, data, m.group(5).decode(), m.group(6).decode())


def array_text(t: Tensor) -> str:
    """The tensor as numpy prints it; its raw data where that cannot be read (as UINT8 or BYTES
    data Triton wrote unescaped, where trace_summary.py cannot read the file at all)."""
    dtype = DTYPES.get(t.dtype)
    try:
        if dtype is None:
            raise ValueError(t.dtype)
        values = (next(csv.reader([t.data], skipinitialspace=True)) if dtype is np.object_
                  else [float(v) for v in t.data.split(",")])
        return str(np.array(values, dtype=dtype).reshape([int(s) for s in t.shape.split(",")]))
    except (ValueError, OverflowError, StopIteration, csv.Error):
        return t.data


@dataclass
class Shape:
    """What the summary's own pass over a file learns for the block: names, parents, frontends,
    and the lowest id with tensor records."""

    names: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (model, version)
    parent_of: dict[int, int] = field(default_factory=dict)
    children: dict[int, list[int]] = field(default_factory=dict)  # parent -> child ids
    frontend: set[int] = field(default_factory=set)  # top-level ids with a frontend mark
    first_tensor: int = 0  # the lowest id with a tensor record (0: none)
    tensors: int = 0

    def add_batch(self, batch: TraceBatch) -> None:
        has = batch.hdr >= 0
        headers = batch.headers
        self.names.update((i, headers[h]) for i, h in zip(batch.ids[has].tolist(), batch.hdr[has].tolist(),
                                                            strict=True))
        child = batch.parents >= 0
        for i, p in zip(batch.ids[child].tolist(), batch.parents[child].tolist(), strict=True):
            self.parent_of[i] = p
            self.children.setdefault(p, []).append(i)
        marked = (batch.stamps[:, [COLUMN[m] for m in FRONTEND_MARKS]] >= 0).any(axis=1) & ~child
        self.frontend.update(batch.ids[marked].tolist())

    def tensor(self, raw: bytes) -> None:
        m = re.match(rb'\{\s*"id"\s*:\s*(\d+)', raw)
        self.tensors += 1
        if m is not None and (self.first_tensor == 0 or int(m.group(1)) < self.first_tensor):
            self.first_tensor = int(m.group(1))

    def matched(self, tid: int) -> bool:
        """Whether trace_summary.py summed the trace under a frontend: its own mark, or a parent of a
        lower id that was."""
        for _ in range(64):
            parent = self.parent_of.get(tid)
            if parent is None:
                return tid in self.frontend
            if parent >= tid:
                return False
            tid = parent
        return False


def _records(path: str, on_tensor: Callable[[bytes], None]) -> Any:
    with open_input(path) as fp:
        yield from read_records(fp, lambda _: None, ReadResult(), salvage_tail=True, on_tensor=on_tensor)


def file_shape(path: str) -> Shape:
    """The Shape of a file, read with the daemon's scanner."""
    s = Shape()
    with open_input(path) as fp:
        for batch in FileScan(WINDOW, lambda _: None).batches(fp, ReadResult(), salvage_tail=True,
                                                               on_tensor=s.tensor):
            s.add_batch(batch)
    return s


def _tree(s: Shape) -> tuple[list[tuple[int, int]], int]:
    """The nodes to print as (id, step), in order, and the tree's depth (its nodes with children)."""
    if not s.children:
        return ([(s.first_tensor, 0)] if s.first_tensor else []), 0
    first_child = min(c for kids in s.children.values() for c in kids)
    root = next(p for p, kids in s.children.items() if first_child in kids)
    nodes: list[tuple[int, int]] = []
    depth = 0
    todo = [(root, 0)]
    while todo and len(nodes) < MAX_NODES:
        tid, step = todo.pop()
        nodes.append((tid, step))
        kids = s.children.get(tid, [])
        depth += bool(kids)
        todo.extend((k, step + 1) for k in reversed(kids))
    return nodes, depth


def write_dataflow(path: str, out: TextIO, shape: Shape | None = None) -> None:
    """The block for one file (nothing where no trace has a parent and none has tensors); `shape`
    where the caller's pass over the file gathered it already."""
    s = shape if shape is not None else file_shape(path)
    for kids in s.children.values():
        kids.sort()
    nodes, depth = _tree(s)
    if not nodes:
        return
    wanted = {tid for tid, _ in nodes}
    tensors: dict[int, list[Tensor]] = {tid: [] for tid in wanted}

    def keep(raw: bytes) -> None:
        t = parse_tensor(raw)
        if t is not None and t.id in wanted:
            tensors[t.id].append(t)

    if s.tensors:  # a second pass, only for the tensors of the chosen traces
        for _ in _records(path, keep):
            pass
    out.write("Data Flow:\n")
    for tid, step in nodes:
        tabs = "\t" * (step + 1)
        rule = f"{tabs}{'=' * (50 + 8 * (depth - step))}\n"
        out.write(rule)
        name = s.names.get(tid)
        if name is not None and s.matched(tid):
            out.write(f"{tabs}Name:   {name[0]}\n{tabs}Version:{name[1]}\n")
        for t in tensors[tid]:
            label = ACTIVITIES.get(t.activity)
            if label is not None:
                out.write(f"{tabs}{label}:\n{tabs}\t{t.name}: {array_text(t)}\n")
        out.write(rule)
