"""`summary`: offline report of trace files through the same pipeline as the daemon.

Formats: a terminal table (count, mean, p50/p90/p99 per model/protocol/stage), JSON
for scripts, the layout of Triton's trace_summary.py, and a stage timeline (what the
old averaged-timestamps parser and the matplotlib notebook showed).
"""

from __future__ import annotations

import argparse
import gzip
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
from .inputs import open_input
from .stages import (
    ALL_STAGES,
    COLUMN,
    INTER_RESPONSE,
    KNOWN_TIMESTAMPS,
    OUTCOMES,
    PROTOCOLS,
    REPEATED,
    SEGMENT,
    SEGMENT_ORDER,
    SEGMENTS,
    STAGES,
    Extra,
    occurrences,
    response_times,
)
from .traces.assembly import StreamState, Trace, TraceBatch
from .traces.discovery import stream_of
from .traces.pipeline import Batch, file_batches, released
from .traces.records import TENSOR_RECORD, ReadResult

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


def iter_batches(paths: list[str], rejected: Counter[str], progress: Progress) -> Iterator[Batch]:
    """Batches of finished traces with their protocols: the daemon's pipeline, file by file."""
    streams: dict[str, StreamState] = {}

    def reject(reason: str) -> None:
        rejected[reason] += 1

    now = time.time()
    for path in paths:
        stream = streams.setdefault(stream_of(path), StreamState())
        result = ReadResult()
        with open_input(path) as fp:
            reader = _CountingReader(fp, progress)
            yield from file_batches(reader, result, stream, reject, now, salvage_tail=True)  # type: ignore[arg-type]
        if not result.complete:
            rejected["truncated_file"] += 1
    for stream in streams.values():  # the input is all there is: nobody else is coming
        yield from released(stream, now, 0, force=True)


@dataclass
class Group:
    traces: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # traces by outcome
    stages: dict[str, QuantileSketch] = field(default_factory=dict)
    responses: QuantileSketch = field(default_factory=QuantileSketch)
    segments: list[int] = field(default_factory=lambda: [0] * len(SEGMENTS))  # ns per segment
    timed: int = 0  # traces with a timeline
    first_arrival_ns: int = -1  # REQUEST_START of the earliest trace: the span traffic covered
    last_arrival_ns: int = -1
    batches: Counter[int] = field(default_factory=Counter)  # COMPUTE_START -> requests: one dynamic batch
    parents: Counter[str] = field(default_factory=Counter)  # model of each child trace's parent (ensembles)

    def add(self, stage: str, values: npt.NDArray[np.int64]) -> None:
        if len(values):
            sk = self.stages.get(stage)
            if sk is None:
                sk = self.stages[stage] = QuantileSketch()
            sk.add_many(values)


def collect(paths: list[str], models: list[str] | None, progress: Progress, show_trace: bool = False,
            out: TextIO = sys.stdout, shapes: bool = False) -> tuple[dict[GroupKey, Group], Counter[str]]:
    """Per (model, version, protocol): stage sketches, responses, the timeline's segments; with
    `shapes`, also the arrival span, dynamic batches and parents' models (for `diagnose`)."""
    rejected: Counter[str] = Counter()
    groups: dict[GroupKey, Group] = {}
    model_of: dict[int, str] = {}  # recent trace ids -> model, to name a child's parent
    for batch, codes in iter_batches(paths, rejected, progress):
        ok = batch.usable(lambda reason, n: rejected.update({reason: n}))
        if models:
            wanted = [i for i, (m, _) in enumerate(batch.headers) if m in models]
            ok &= np.isin(batch.hdr, wanted)
        rows = np.flatnonzero(ok)
        keys, gidx = batch.groups(rows, codes)
        an = batch.anatomy(rows)
        if shapes:
            model_of.update(zip(batch.ids[rows].tolist(),
                                (batch.headers[h][0] for h in batch.hdr[rows].tolist()), strict=True))
        if len(model_of) > MODEL_OF_KEEP:  # children are written next to their parents: recent ids suffice
            for tid in list(model_of)[: len(model_of) - MODEL_OF_KEEP // 2]:
                del model_of[tid]
        rejected["negative_span"] += int(an.negative.sum())
        rejected["implausible_span"] += int(an.implausible.sum())
        for k, (model, version, code) in enumerate(keys):
            g = groups.setdefault((model, version, PROTOCOLS[code]), Group())
            sel = gidx == k
            g.traces += int(sel.sum())
            for code, n in enumerate(np.bincount(an.outcome[sel], minlength=len(OUTCOMES)).tolist()):
                if n:
                    g.outcomes[OUTCOMES[code]] += n
            by_stage = an.durations.T  # [stages, rows], a stage's values contiguous
            for j, stage in enumerate(STAGES):
                d = by_stage[j] if len(keys) == 1 else by_stage[j][sel]
                g.add(stage, d[d >= 0])
            g.add(INTER_RESPONSE, an.gaps[sel[an.gap_rows]])
            g.responses.add_many(an.responses[sel & (an.outcome != OUTCOMES.index("cancelled"))])
            timed = sel & an.timed
            g.timed += int(timed.sum())
            g.segments = [a + int(b) for a, b in zip(g.segments, an.segments[timed].sum(axis=0), strict=True)]
            if shapes:
                add_shape(g, batch, rows[sel], model_of)
        for k_row, stage, ns in batch.custom_spans(rows):
            model, version, code = keys[int(gidx[k_row])]
            groups[(model, version, PROTOCOLS[code])].add(stage, np.array([ns], dtype=np.int64))
        if show_trace:
            for i in rows.tolist():
                t = batch.trace(i)
                print_trace(t, PROTOCOLS[int(codes[i])], batch.stamps[i], batch.repeats(i), out)
    return groups, +rejected


MODEL_OF_KEEP = 1 << 16


def add_shape(g: Group, batch: TraceBatch, rows: npt.NDArray[np.intp], model_of: dict[int, str]) -> None:
    """Arrival span, dynamic batches (requests of one batch share COMPUTE_START) and parents' models."""
    if not len(rows):
        return
    starts = batch.stamps[rows, COLUMN["REQUEST_START"]]
    lo, hi = int(starts.min()), int(starts.max())
    g.first_arrival_ns = lo if g.first_arrival_ns < 0 else min(g.first_arrival_ns, lo)
    g.last_arrival_ns = max(g.last_arrival_ns, hi)
    compute = batch.stamps[rows, COLUMN["COMPUTE_START"]]
    g.batches.update(compute[compute >= 0].tolist())
    for p in batch.parents[rows].tolist():
        if p >= 0:
            g.parents[model_of.get(p, "")] += 1


def print_trace(t: Trace, protocol: str, row: npt.NDArray[np.int64], repeats: Extra, out: TextIO) -> None:
    """One trace's timestamps in time order with the gap before each; every response of a
    stream, and custom activities, included."""
    parent = f" parent {t.parent_id}" if t.parent_id is not None else ""
    responses = response_times(row, repeats)
    out.write(f"{t.model} ({t.version}) id {t.id}{parent} [{protocol}]"
              f"{f' {len(responses)} responses' if len(responses) > 1 else ''}\n")
    events = [(ns, name) for name, ns in t.stamps.items() if name in KNOWN_TIMESTAMPS and name not in REPEATED]
    for name in REPEATED:
        every = occurrences(row, repeats, name)
        events.extend((ns, f"{name} {k}/{len(every)}" if len(every) > 1 else name)
                      for k, ns in enumerate(every, start=1))
    events.extend((ns, name) for name, ns in t.extra if name not in REPEATED)
    prev: int | None = None
    for ns, name in sorted(events):
        gap = "" if prev is None else f"+{(ns - prev) / 1000:.1f}us"
        out.write(f"    {name:<30}{gap:>14}\n")
        prev = ns


def stage_stats(sk: QuantileSketch, scale: float = 1e9) -> dict[str, float]:
    """count, exact mean and p50/p90/p99 (within 0.5%), in seconds (scale 1: as counted)."""
    return {
        "count": sk.count,
        "mean": sk.mean / scale,
        "p50": sk.quantile(0.50) / scale,
        "p90": sk.quantile(0.90) / scale,
        "p99": sk.quantile(0.99) / scale,
    }


def timeline(g: Group) -> list[dict[str, float | str]]:
    """Mean time per exclusive segment, in request order: the rows add up to the mean end_to_end."""
    rows: list[dict[str, float | str]] = []
    offset = 0.0
    total = sum(g.segments)
    for seg in SEGMENT_ORDER:
        ns = g.segments[SEGMENT[seg]]
        if not ns:
            continue
        mean = ns / g.timed / 1e9
        rows.append({"segment": seg, "offset": offset, "mean": mean, "share": ns / total})
        offset += mean
    return rows


def _ms(v: float) -> str:
    return f"{v * 1e3:10.3f}"


def print_table(groups: dict[GroupKey, Group], rejected: Counter[str], out: TextIO) -> None:
    for (model, version, protocol), g in sorted(groups.items()):
        others = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in sorted(g.outcomes.items()) if o != "answered")
        out.write(f"\n{model} (version {version}) over {protocol}: {g.traces} traces"
                  f"{f' ({others})' if others else ''}\n")
        out.write(f"  {'stage':<18}{'count':>8}{'mean ms':>11}{'p50 ms':>11}{'p90 ms':>11}{'p99 ms':>11}\n")
        for stage in sorted(g.stages, key=_stage_order):
            st = stage_stats(g.stages[stage])
            out.write(f"  {stage:<18}{int(st['count']):>8} {_ms(st['mean'])} {_ms(st['p50'])} "
                      f"{_ms(st['p90'])} {_ms(st['p99'])}\n")
        if g.responses.count and g.responses.quantile(1.0) > 1:
            r = stage_stats(g.responses, 1)
            out.write(f"  {'responses':<18}{int(r['count']):>8} {r['mean']:10.2f} {r['p50']:10.0f} "
                      f"{r['p90']:10.0f} {r['p99']:10.0f}   (per request)\n")
    if not groups:
        out.write("no complete traces found (traces need REQUEST_START and REQUEST_END)\n")
    tensors = rejected.get(TENSOR_RECORD, 0)
    bad = {k: v for k, v in rejected.items() if k != TENSOR_RECORD}
    if tensors:
        out.write(f"\ntensor records (trace level TENSORS) skipped: {tensors}\n")
    if bad:
        out.write("\nrejected: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())) + "\n")


def _stage_order(stage: str) -> tuple[int, str]:
    return (ALL_STAGES.index(stage), "") if stage in ALL_STAGES else (len(ALL_STAGES), stage)


def print_timeline(groups: dict[GroupKey, Group], out: TextIO) -> None:
    width = 40
    for (model, version, protocol), g in sorted(groups.items()):
        rows = timeline(g)
        total = sum(float(r["mean"]) for r in rows)
        out.write(f"\n{model} (version {version}) over {protocol}: where the time of {g.timed} traces goes "
                  f"(exclusive segments; they add up to end_to_end)\n")
        out.write(f"  {'segment':<20}{'mean ms':>11}{'share':>8}  \n")
        for r in rows:
            off, mean = float(r["offset"]), float(r["mean"])
            start = int(width * off / total) if total else 0
            bar = " " * start + "#" * max(1, round(width * mean / total) if total else 0)
            out.write(f"  {r['segment']!s:<20}{mean * 1e3:11.3f}{float(r['share']):8.1%}  |{bar[:width]:<{width}}|\n")
        out.write(f"  {'end_to_end':<20}{total * 1e3:11.3f}{1:8.1%}\n")


def as_json(groups: dict[GroupKey, Group], rejected: Counter[str], files: int) -> dict[str, Any]:
    return {
        "files": files,
        "groups": [
            {
                "model": m, "version": v, "protocol": p, "traces": g.traces,
                "outcomes": {o: g.outcomes.get(o, 0) for o in OUTCOMES},
                "stages": {s: stage_stats(g.stages[s]) for s in sorted(g.stages, key=_stage_order)},
                "responses": stage_stats(g.responses, 1),
                "timeline": timeline(g),
            }
            for (m, v, p), g in sorted(groups.items())
        ],
        "rejected": dict(sorted((k, v) for k, v in rejected.items() if k != TENSOR_RECORD)),
        "tensor_records": rejected.get(TENSOR_RECORD, 0),
        "unit": "seconds",
    }


def _usage_error(message: str) -> int:
    print(f"inference-profiler: error: {message}", file=sys.stderr)
    return 2


def run_summary(args: argparse.Namespace) -> int:
    paths: list[str] = args.files
    if args.format == "json" and args.show_trace:
        return _usage_error("-t/--show-trace prints text; it cannot go with --format json")
    if args.timeline and args.format != "table":
        return _usage_error(f"--timeline is a layout of its own; it cannot go with --format {args.format}")
    if getattr(args, "socket_turns", None):
        if args.format != "table":
            return _usage_error(f"--socket-turns prints text; it cannot go with --format {args.format}")
        if not os.path.isfile(args.socket_turns):
            return _usage_error(f"--socket-turns: {args.socket_turns} is not a readable file")
    if paths.count("-") > 1:
        return _usage_error("standard input ('-') can be given once")
    for p in paths:
        if p != "-" and not os.path.isfile(p):
            return _usage_error(f"{p} is not a readable file")
    try:
        return _summary(args, paths)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): cli exits quietly
    except gzip.BadGzipFile as e:
        return _usage_error(f"cannot read a gzip file: {e}")
    except EOFError:
        return _usage_error("a gzip file ends early (truncated)")
    except OSError as e:
        return _usage_error(f"cannot read {e.filename or 'input'}: {e.strerror or e}")


def _summary(args: argparse.Namespace, paths: list[str]) -> int:
    empty = [p for p in paths if p != "-" and os.path.getsize(p) == 0]
    readable = [p for p in paths if p not in empty]
    if args.format == "trace_summary":
        from .trace_summary_format import run_trace_summary

        return run_trace_summary(paths, args.show_trace, sys.stdout, args.model)
    progress = Progress(sum(os.path.getsize(p) for p in readable if p != "-"), not args.no_progress)
    try:
        groups, rejected = collect(readable, args.model, progress, args.show_trace)
    finally:
        progress.close()
    if empty:
        rejected["empty_file"] += len(empty)
    if args.format == "json":
        json.dump(as_json(groups, rejected, len(paths)), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.timeline:
        print_timeline(groups, sys.stdout)
    else:
        print_table(groups, rejected, sys.stdout)
    if getattr(args, "socket_turns", None):
        from .wire.report import summarise_wire

        summarise_wire(args, readable, sys.stdout)
    if not groups:
        what = f"for model {', '.join(args.model)}" if args.model else f"in {', '.join(paths)}"
        print(f"inference-profiler: no complete traces found {what}", file=sys.stderr)
        return 1
    return 0
