"""`summary --socket-turns FILE`: trace files joined with recorded socket turns, per model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from ..histogram import QuantileSketch
from ..stages import PROTOCOLS, SEGMENT, SEGMENT_ORDER, SEGMENTS
from ..traces.assembly import TraceBatch
from .join import JOIN_RESULTS, WIRE_STAGES, Request, join
from .requests import requests_of
from .turns import Turn

GroupKey = tuple[str, str, str]  # model, version, protocol
Batch = tuple[TraceBatch, npt.NDArray[np.int8]]


@dataclass
class WireGroup:
    results: Counter[str] = field(default_factory=lambda: Counter({r: 0 for r in JOIN_RESULTS}))
    stages: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in WIRE_STAGES})
    segments: list[int] = field(default_factory=lambda: [0] * len(SEGMENTS))  # joined requests only

    @property
    def joined(self) -> int:
        return self.results["joined"]


def wire_groups(batches: Iterable[Batch], turns: Sequence[Turn],
                ports: Mapping[str, frozenset[int]]) -> dict[GroupKey, WireGroup]:
    """Join every usable trace of `batches` (the summary pipeline's) with `turns`, per group.
    One join over all traces, so a turn is matched once across batch boundaries."""
    keyed: list[tuple[GroupKey, list[int]]] = []
    requests: list[Request] = []
    for batch, codes in batches:
        rows = np.flatnonzero(batch.usable(lambda _reason, _n: None))
        if not len(rows):
            continue
        an = batch.anatomy(rows)
        requests.extend(requests_of(batch.stamps[rows], codes[rows], an))
        for j, i in enumerate(rows.tolist()):
            model, version = batch.headers[int(batch.hdr[i])]
            seg = an.segments[j].tolist() if an.timed[j] else [0] * len(SEGMENTS)
            keyed.append(((model, version, PROTOCOLS[int(codes[i])]), seg))
    groups: dict[GroupKey, WireGroup] = {}
    for (key, seg), (result, w) in zip(keyed, join(requests, turns, ports), strict=True):
        g = groups.setdefault(key, WireGroup())
        g.results[result] += 1
        if w is None:
            continue
        g.stages["socket_wait"].append(w.socket_wait_ns)
        g.stages["ack_wait"].append(w.ack_wait_ns)
        g.stages["wire"].append(w.wire_ns)
        g.segments = [a + b for a, b in zip(g.segments, seg, strict=True)]
    return groups


def _sketch(values: list[int]) -> QuantileSketch:
    sk = QuantileSketch()
    sk.add_many(np.asarray(values, dtype=np.int64))
    return sk


def print_wire(groups: Mapping[GroupKey, WireGroup], out: TextIO) -> None:
    """Per group: how its traces joined, and socket_wait, ack_wait and wire of the joined ones."""
    for (model, version, protocol), g in sorted(groups.items()):
        total = sum(g.results.values())
        shares = ", ".join(f"{r} {g.results[r]} ({g.results[r] / total:.1%})" for r in JOIN_RESULTS)
        out.write(f"\n{model} (version {version}) over {protocol}, joined with socket turns: {shares}\n")
        if not g.joined:
            continue
        out.write(f"  {'stage':<18}{'count':>8}{'mean ms':>11}{'p50 ms':>11}{'p90 ms':>11}{'p99 ms':>11}\n")
        for stage in WIRE_STAGES:
            sk = _sketch(g.stages[stage])
            out.write(f"  {stage:<18}{sk.count:>8} {sk.mean / 1e6:10.3f} {sk.quantile(0.5) / 1e6:10.3f} "
                      f"{sk.quantile(0.9) / 1e6:10.3f} {sk.quantile(0.99) / 1e6:10.3f}\n")


def wire_timeline(g: WireGroup) -> list[tuple[str, float]]:
    """Mean ms per exclusive segment of the joined requests, from the wire to the wire: they add
    up to the mean `wire`."""
    n = g.joined
    rows = [("socket_wait", sum(g.stages["socket_wait"]) / n / 1e6)]
    rows += [(s, g.segments[SEGMENT[s]] / n / 1e6) for s in SEGMENT_ORDER if g.segments[SEGMENT[s]]]
    rows.append(("ack_wait", sum(g.stages["ack_wait"]) / n / 1e6))
    return rows


def print_wire_timeline(groups: Mapping[GroupKey, WireGroup], out: TextIO) -> None:
    width = 40
    for (model, version, protocol), g in sorted(groups.items()):
        if not g.joined:
            continue
        rows = wire_timeline(g)
        total = sum(ms for _, ms in rows)
        out.write(f"\n{model} (version {version}) over {protocol}: from the wire to the wire, {g.joined} joined "
                  f"traces (exclusive segments; they add up to wire)\n")
        out.write(f"  {'segment':<20}{'mean ms':>11}{'share':>8}  \n")
        offset = 0.0
        for seg, ms in rows:
            start = int(width * offset / total) if total else 0
            bar = " " * start + "#" * max(1, round(width * ms / total) if total else 0)
            out.write(f"  {seg:<20}{ms:11.3f}{ms / total if total else 0:8.1%}  |{bar[:width]:<{width}}|\n")
            offset += ms
        out.write(f"  {'wire':<20}{total:11.3f}{1:8.1%}\n")


def summarise_wire(args: Any, paths: list[str], out: TextIO) -> None:
    """The --socket-turns part of `summary`: the same traces read again, joined with the turns file."""
    from ..summary import Progress, iter_batches
    from .turns import latest, read_turns

    rejected: dict[str, int] = {}
    with open(args.socket_turns, encoding="utf-8", errors="replace") as fp:
        turns = latest(read_turns(fp, rejected))
    ports = {"http": frozenset(args.http_port or [8000]), "grpc": frozenset(args.grpc_port or [8001])}
    groups = wire_groups(iter_batches(paths, Counter(), Progress(0, False)), turns, ports)
    if args.timeline:
        print_wire_timeline(groups, out)
    else:
        print_wire(groups, out)
    out.write(f"\nsocket turns: {len(turns)} from {args.socket_turns}"
              + (f", {rejected['bad_turn_line']} line(s) that are not a turn skipped" if rejected else "") + "\n")
