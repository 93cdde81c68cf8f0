"""What committing the trace state costs per ingested file: the whole-state write (every
commit rewrites the state file) against the journal (a commit appends what it changed), in
the same run, on the same state.

    .venv/bin/python bench/state_writes.py [--files 2000] [--pods 4] [--commits 100]

The state is built first, in memory, by ingesting --files real-shaped trace files
(tests/tracegen.py: three models, ensembles, streaming requests) spread over --pods
rolling file sets: --files checkpoint entries, a protocol table per stream, the
histograms of every series. Each contender then starts from that state written as a
state file in bench/out/state-writes/ (a real disk, not tmpfs: fsync is part of the
cost) and ingests the same --commits new files, one commit each. The whole-state write
is the exporter's commit before the journal, kept here as the baseline (WholeStateStore). Reported per
commit: bytes written, wall time of the commit (serialising and fsync included), then
the start-up time (state file plus journal replayed) and OTLP payloads with a full
window of remembered span ids.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.histogram import DEFAULT_STAGE_BUCKETS  # noqa: E402
from exporter.otlp.receiver import OtlpIngest  # noqa: E402
from exporter.traces.aggregator import TraceAggregator  # noqa: E402
from exporter.traces.discovery import TracePattern, label_names  # noqa: E402
from exporter.traces.source import bounds_ns  # noqa: E402
from exporter.traces.store import Change, State, StateStore  # noqa: E402
from exporter.traces.tailer import TailerSettings, TraceTailer  # noqa: E402
from tests import tracegen  # noqa: E402
from tests.otlp_payloads import T0, export_request, request_spans  # noqa: E402

OUT = ROOT / "bench" / "out" / "state-writes"
BOUNDS = bounds_ns(list(DEFAULT_STAGE_BUCKETS))
MODELS = ("resnet50", "bert", "llama")


class WholeStateStore(StateStore):
    """The exporter before the journal: every commit writes the whole state."""

    def write(self, record: dict[str, Any], whole: Callable[[], dict[str, Any]]) -> None:
        self.compact(whole())


class WholeStateTailer(TraceTailer):
    def __init__(self, s: TailerSettings) -> None:
        store = WholeStateStore(s.state_dir, s.bounds_ns)
        super().__init__(s, aggregator=TraceAggregator(store, label_names([TracePattern(p) for p in s.patterns])))


class Timed:
    """Wall time of each commit of a tailer's aggregator."""

    def __init__(self, t: TraceTailer) -> None:
        self.seconds: list[float] = []
        inner = t.aggregator.commit

        def timed(*a: Any, **kw: Any) -> None:
            t0 = time.perf_counter()
            inner(*a, **kw)
            self.seconds.append(time.perf_counter() - t0)

        t.aggregator.commit = timed  # type: ignore[method-assign]


def write_files(root: Path, pods: int, start: int, n: int, traces_per: int, seed: int) -> None:
    for i in range(start, start + n):
        d = root / f"pod-{i % pods}"
        d.mkdir(parents=True, exist_ok=True)
        tracegen.write_file(str(d / f"trace.json.{i // pods}"),
                            tracegen.traces(traces_per, seed=seed + i, start_id=1 + i * 10 * traces_per,
                                            ensemble_every=5, streaming_every=9, models=MODELS))


def settings(root: Path, state: Path | None) -> TailerSettings:
    return TailerSettings([str(root / "{pod}" / "trace.json")], str(state) if state else None, BOUNDS,
                          settle_seconds=0.0)


def run(cls: type[TraceTailer], base: TraceTailer, root: Path, state: Path, first_new: int,
        args: argparse.Namespace) -> dict[str, Any]:
    """From the built state, ingest the new files one commit at a time."""
    shutil.rmtree(state, ignore_errors=True)
    t = cls(settings(root, state))
    t.aggregator.state = State(base.live, dict(base.entries), dict(base.streams))
    t.stream_labels = dict(base.stream_labels)
    t.aggregator.commit(Change())  # the starting point: one state file
    start = os.path.getsize(state / "traces-state.json")
    writes0, bytes0 = sum(t.state_writes.values()), sum(t.state_written_bytes.values())
    timed = Timed(t)
    for i in range(args.commits):
        write_files(root, args.pods, first_new + i, 1, args.traces, seed=7)
        assert t.poll() == 1
    assert len(timed.seconds) == args.commits
    written = sum(t.state_written_bytes.values()) - bytes0
    t0 = time.perf_counter()
    loaded = TraceTailer(settings(root, state))
    load = time.perf_counter() - t0
    assert loaded.live.traces == t.live.traces and loaded.entries == t.entries
    return {"state_file_bytes_at_start": start, "commits": args.commits,
            "writes": sum(t.state_writes.values()) - writes0, "snapshots": t.state_writes["snapshot"] - 1,
            "bytes_per_commit": written / args.commits,
            "commit_ms_median": 1e3 * statistics.median(timed.seconds),
            "commit_ms_mean": 1e3 * statistics.fmean(timed.seconds),
            "startup_ms": 1e3 * load, "traces": sum(t.live.traces.values())}


def otlp(cls: type[TraceTailer], state: Path, payloads: int) -> dict[str, Any]:
    """OTLP payloads of 510 spans once the receiver remembers its full window of span ids."""
    shutil.rmtree(state, ignore_errors=True)
    t = cls(TailerSettings([], str(state), BOUNDS))
    ing = OtlpIngest(t.aggregator, 60.0)
    bodies = [export_request([s for r in range(170) for s in request_spans(T0 + (i * 170 + r) * 10**6)])
              for i in range(payloads + 70)]
    for b in bodies[:70]:  # 35,700 span ids: the window of 32,768 is full
        ing.ingest(b)
    bytes0 = sum(t.state_written_bytes.values())
    timed = Timed(t)
    for b in bodies[70:]:
        ing.ingest(b)
    return {"bytes_per_commit": (sum(t.state_written_bytes.values()) - bytes0) / payloads,
            "commit_ms_median": 1e3 * statistics.median(timed.seconds)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000, help="files ingested before (checkpoint entries)")
    ap.add_argument("--pods", type=int, default=4, help="rolling file sets (streams)")
    ap.add_argument("--traces", type=int, default=40, help="top-level traces per file")
    ap.add_argument("--commits", type=int, default=100, help="new files ingested, one commit each")
    ap.add_argument("--payloads", type=int, default=40, help="OTLP payloads measured")
    args = ap.parse_args()

    root = OUT / "traces"
    shutil.rmtree(OUT, ignore_errors=True)
    t0 = time.perf_counter()
    write_files(root, args.pods, 0, args.files, args.traces, seed=1)
    base = TraceTailer(settings(root, None))
    base.poll()
    print(f"built the state in {time.perf_counter() - t0:.0f} s: {len(base.entries)} checkpoint entries, "
          f"{len(base.live.histograms)} stage series, {sum(base.live.traces.values())} traces, protocol tables "
          f"of {sorted(len(s.protocols) for s in base.streams.values())} ids", flush=True)

    results: dict[str, Any] = {}
    for name, cls in (("whole", WholeStateTailer), ("journal", TraceTailer)):
        results[name] = run(cls, base, root, OUT / f"state-{name}", args.files, args)
        for p in sorted(root.glob("*/trace.json.*")):  # the same new files for the next contender
            if int(p.name.rsplit(".", 1)[1]) * args.pods + int(p.parent.name.split("-")[1]) >= args.files:
                p.unlink()
        results[f"otlp_{name}"] = otlp(cls, OUT / f"otlp-{name}", args.payloads)
    w, j = results["whole"], results["journal"]
    ow, oj = results["otlp_whole"], results["otlp_journal"]
    print(f"\nstate file at start: {w['state_file_bytes_at_start'] / 1024:.0f} KiB; "
          f"{args.commits} files ingested, one commit each")
    print(f"{'':22}{'whole state':>14}{'journal':>14}{'ratio':>10}")
    rows = [("bytes per commit", w["bytes_per_commit"], j["bytes_per_commit"], "{:,.0f}"),
            ("commit ms (median)", w["commit_ms_median"], j["commit_ms_median"], "{:.2f}"),
            ("commit ms (mean)", w["commit_ms_mean"], j["commit_ms_mean"], "{:.2f}"),
            ("start-up ms", w["startup_ms"], j["startup_ms"], "{:.0f}"),
            ("OTLP bytes per payload", ow["bytes_per_commit"], oj["bytes_per_commit"], "{:,.0f}"),
            ("OTLP commit ms (median)", ow["commit_ms_median"], oj["commit_ms_median"], "{:.2f}")]
    for label, a, b, fmt in rows:
        print(f"{label:22}{fmt.format(a):>14}{fmt.format(b):>14}{a / b:>9.1f}x")
    print(f"journal: {j['writes']} writes of which {j['snapshots']} whole state files "
          f"(the journal outgrew the state file); traces counted {j['traces']} (whole: {w['traces']})")
    OUT.mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "state_writes.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(OUT, ignore_errors=True)
    return 0 if w["traces"] == j["traces"] else 1


if __name__ == "__main__":
    sys.exit(main())
