"""`summary`: offline report of trace files through the same pipeline as the daemon.

Formats: a terminal table (count, mean, p50/p90/p99 per model/protocol/stage), JSON
for scripts, the layout of Triton's trace_summary.py, and a stage timeline (what the
old averaged-timestamps parser and the matplotlib notebook showed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from .histogram import QuantileSketch
from .stages import COLUMN, COLUMNS, PROTOCOLS, STAGES, stage_matrix
from .traces.assembly import StreamState, Trace, TraceBatch, release_pending, resolve
from .traces.records import ReadResult
from .traces.scanner import FileScan

GroupKey = tuple[str, str, str]  # model, version, protocol


class Progress:
    """A one-line progress bar on stderr for large inputs (only on a terminal)."""

    def __init__(self, total: int, enabled: bool, out: TextIO | None = None) -> None:
        out = out or sys.stderr
        self.total = max(total, 1)
        self.enabled = enabled and out.isatty() and total > 16 << 20
        self.out = out
        self.done = 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last > 0.2:
            self._last = now
            frac = min(self.done / self.total, 1.0)
            rate = self.done / max(now - self.t0, 1e-9) / 1e6
            bar = "#" * int(frac * 30)
            self.out.write(f"\r[{bar:<30}] {frac:6.1%} {self.done / 1e6:8.1f} MB {rate:6.1f} MB/s")
            self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\r" + " " * 72 + "\r")
            self.out.flush()


class _CountingReader:
    """Wraps a binary file to feed the progress bar as bytes are read."""

    def __init__(self, fp: Any, progress: Progress) -> None:
        self.fp = fp
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.fp.read(n)
        self.progress.advance(len(data))
        return data

    def seek(self, pos: int) -> int:
        return int(self.fp.seek(pos))


def iter_batches(paths: list[str], rejected: Counter[str],
                 progress: Progress) -> Iterator[tuple[TraceBatch, npt.NDArray[np.int8]]]:
    """Batches of countable-or-not finished traces with their protocols, in the daemon's semantics."""
    streams: dict[str, StreamState] = {}

    def reject(reason: str) -> None:
        rejected[reason] += 1

    pushed_out: list[Trace] = []
    now = time.time()
    for path in paths:
        base = path.rsplit(".", 1)[0] if path.rsplit(".", 1)[-1].isdigit() else path
        state = streams.setdefault(base, StreamState())
        scan = FileScan(16384, reject)
        result = ReadResult()
        with open(path, "rb") as fp:
            reader = _CountingReader(fp, progress)
            for batch in scan.batches(reader, result, salvage_tail=True):  # type: ignore[arg-type]
                yield resolve(batch, state, scan.lookup, now, pushed_out.append)
        if not result.complete:
            rejected["truncated_file"] += 1
        released, codes = release_pending(state, lambda _: None, 1e18, now)
        if released:
            yield TraceBatch.from_traces(released), np.array(codes, dtype=np.int8)
    for state in streams.values():
        left, codes = release_pending(state, lambda _: None, 0, now, force=True)
        pushed_out.extend(left)
    if pushed_out:
        yield TraceBatch.from_traces(pushed_out), np.zeros(len(pushed_out), dtype=np.int8)


@dataclass
class Group:
    traces: int = 0
    stages: dict[str, QuantileSketch] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # timeline: sum of offsets per timestamp
    offset_counts: Counter[str] = field(default_factory=Counter)


def collect(paths: list[str], models: list[str] | None, progress: Progress,
            show_trace: bool = False, out: TextIO = sys.stdout) -> tuple[dict[GroupKey, Group], Counter[str]]:
    rejected: Counter[str] = Counter()
    groups: dict[GroupKey, Group] = {}
    wait_col = COLUMN["GRPC_WAITREAD_START"]
    for batch, codes in iter_batches(paths, rejected, progress):
        ok = batch.usable(lambda reason, n: rejected.update({reason: n}))
        if models:
            wanted = [i for i, (m, _) in enumerate(batch.headers) if m in models]
            ok &= np.isin(batch.hdr, wanted)
        rows = np.flatnonzero(ok)
        keys, gidx = batch.groups(rows, codes)
        for k, (model, version, code) in enumerate(keys):
            key = (model, version, PROTOCOLS[code])
            g = groups.get(key)
            if g is None:
                g = groups[key] = Group()
            sel = rows[gidx == k]
            stamps = batch.stamps[sel]
            g.traces += len(sel)
            durations, negative = stage_matrix(stamps)
            rejected["negative_span"] += int(negative.sum())
            for j, stage in enumerate(STAGES):
                d = durations[:, j]
                d = d[d >= 0]
                if len(d):
                    sk = g.stages.get(stage)
                    if sk is None:
                        sk = g.stages[stage] = QuantileSketch()
                    sk.add_many(d)
            # timeline: offsets from each trace's first timestamp (idle gRPC wait excluded)
            st = stamps.copy()
            st[:, wait_col] = -1
            present = st >= 0
            first = np.where(present, st, np.iinfo(np.int64).max).min(axis=1)
            offs = np.where(present, st - first[:, None], 0)
            for col in np.flatnonzero(present.any(axis=0)).tolist():
                name = COLUMNS[col]
                g.offsets[name] = g.offsets.get(name, 0) + int(offs[:, col].sum())
                g.offset_counts[name] += int(present[:, col].sum())
        if show_trace:
            for i in rows.tolist():
                t = batch.trace(i)
                print_trace(t.model or "", t.version or "", t.id, t.parent_id, PROTOCOLS[int(codes[i])],
                            t.stamps, out)
    return groups, +rejected


def print_trace(model: str, version: str, tid: int, parent: int | None, protocol: str,
                stamps: dict[str, int], out: TextIO) -> None:
    out.write(f"{model} ({version}) id {tid}{f' parent {parent}' if parent is not None else ''} [{protocol}]\n")
    prev: int | None = None
    for name, ns in sorted(stamps.items(), key=lambda kv: kv[1]):
        gap = "" if prev is None else f"+{(ns - prev) / 1000:.1f}us"
        out.write(f"    {name:<24}{gap:>14}\n")
        prev = ns


def stage_stats(sk: QuantileSketch) -> dict[str, float]:
    """count, exact mean and p50/p90/p99 (within 0.5%) in seconds."""
    return {
        "count": sk.count,
        "mean": sk.mean / 1e9,
        "p50": sk.quantile(0.50) / 1e9,
        "p90": sk.quantile(0.90) / 1e9,
        "p99": sk.quantile(0.99) / 1e9,
    }


def timeline(g: Group) -> list[dict[str, float | str]]:
    means = sorted(((g.offsets[n] / g.offset_counts[n], n) for n in g.offsets), key=lambda x: x[0])
    rows: list[dict[str, float | str]] = []
    prev = 0.0
    for mean, name in means:
        rows.append({"timestamp": name, "offset": mean / 1e9, "interval": (mean - prev) / 1e9})
        prev = mean
    return rows


def _ms(v: float) -> str:
    return f"{v * 1e3:10.3f}"


def print_table(groups: dict[GroupKey, Group], rejected: Counter[str], out: TextIO) -> None:
    for (model, version, protocol), g in sorted(groups.items()):
        out.write(f"\n{model} (version {version}) over {protocol}: {g.traces} traces\n")
        out.write(f"  {'stage':<18}{'count':>8}{'mean ms':>11}{'p50 ms':>11}{'p90 ms':>11}{'p99 ms':>11}\n")
        for stage in STAGES:
            if stage not in g.stages:
                continue
            st = stage_stats(g.stages[stage])
            out.write(f"  {stage:<18}{int(st['count']):>8} {_ms(st['mean'])} {_ms(st['p50'])} "
                      f"{_ms(st['p90'])} {_ms(st['p99'])}\n")
    if not groups:
        out.write("no complete traces found (traces need REQUEST_START and REQUEST_END)\n")
    if rejected:
        out.write("\nrejected: " + ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())) + "\n")


def print_timeline(groups: dict[GroupKey, Group], out: TextIO) -> None:
    for (model, version, protocol), g in sorted(groups.items()):
        rows = timeline(g)
        total = float(rows[-1]["offset"]) if rows else 0.0
        out.write(f"\n{model} (version {version}) over {protocol}: mean timeline of {g.traces} traces\n")
        out.write(f"  {'timestamp':<24}{'offset ms':>11}{'interval ms':>13}  \n")
        for r in rows:
            off, itv = float(r["offset"]), float(r["interval"])
            width = 40
            start = int(width * (off - itv) / total) if total else 0
            bar = " " * start + "#" * max(1 if itv > 0 else 0, int(width * itv / total) if total else 0)
            out.write(f"  {r['timestamp']!s:<24}{off * 1e3:11.3f}{itv * 1e3:13.3f}  |{bar:<{width}}|\n")


def as_json(groups: dict[GroupKey, Group], rejected: Counter[str], files: int) -> dict[str, Any]:
    return {
        "files": files,
        "groups": [
            {
                "model": m, "version": v, "protocol": p, "traces": g.traces,
                "stages": {s: stage_stats(g.stages[s]) for s in STAGES if s in g.stages},
                "timeline": timeline(g),
            }
            for (m, v, p), g in sorted(groups.items())
        ],
        "rejected": dict(sorted(rejected.items())),
        "unit": "seconds",
    }


def run_summary(args: argparse.Namespace) -> int:
    paths: list[str] = args.files
    for p in paths:
        if not os.path.isfile(p):
            print(f"inference-profiler: error: {p} is not a readable file", file=sys.stderr)
            return 2
    if args.format == "trace_summary":
        from .trace_summary_format import run_trace_summary

        return run_trace_summary(paths, args.show_trace, sys.stdout)
    progress = Progress(sum(os.path.getsize(p) for p in paths), not args.no_progress)
    try:
        groups, rejected = collect(paths, args.model, progress, args.show_trace and args.format != "json")
    except OSError as e:
        progress.close()
        print(f"inference-profiler: error: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    progress.close()
    if args.format == "json":
        json.dump(as_json(groups, rejected, len(paths)), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.timeline:
        print_timeline(groups, sys.stdout)
    else:
        print_table(groups, rejected, sys.stdout)
    return 0
