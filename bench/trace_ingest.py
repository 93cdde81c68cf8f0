"""Trace ingest throughput and peak RSS: the daemon's ingest path and `summary`, side by
side with a straightforward json.load-everything implementation of the same stage math.

    .venv/bin/python bench/trace_ingest.py [--traces 160000] [--runs 3]
    .venv/bin/python bench/trace_ingest.py --traces 180000 --against DIR [--trace-summary PATH]

With --against, `summary` of this checkout and of DIR (a checkout of an older commit with its C
scanner built, e.g. `git worktree add --detach DIR 3661e04` and a build of its _scan) run in turn
on the same file, pairs of processes: CPU seconds (user + system, from wait4) and peak RSS of
each, their stage figures checked equal; with --trace-summary, Triton's trace_summary.py (give
its path) on the same file in the same run, for the ratio.

Writes real-shaped rolling-trace files (tests/tracegen.py, the object layout of Triton
2.51) of N and N/2 traces under bench/out/, runs every contender as its own process
(wall time and the process's own peak RSS from wait4), and prints medians and ratios.
The RSS column at two file sizes shows whether memory grows with the input.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
PY = sys.executable

# Each contender prints the traces it counted and the seconds its work took (after imports).
BASELINE = (
    "import sys, time; from tests.reference import stage_stats; t0 = time.perf_counter();"
    "r = stage_stats([sys.argv[1]]); print(sum(r['traces'].values()), time.perf_counter() - t0)"
)
SUMMARY = (
    "import io, sys, time, contextlib; from exporter.cli import main; t0 = time.perf_counter(); out = io.StringIO()\n"
    "with contextlib.redirect_stdout(out): main(['summary', '--format', 'json', '--no-progress', sys.argv[1]])\n"
    "import json; g = json.loads(out.getvalue())['groups']; print(sum(x['traces'] for x in g), time.perf_counter() - t0)"
)
# Every contender runs under this wrapper, which prints the process's own peak RSS (VmHWM) on
# stderr at exit: wait4's ru_maxrss would include the forking parent's peak.
WRAP = (
    "import atexit, sys;"
    "atexit.register(lambda: print([l.split()[1] for l in open('/proc/self/status')"
    " if l.startswith('VmHWM')][0], file=sys.stderr));"
    "code = sys.argv.pop(1); exec(compile(code, '<bench>', 'exec'))"
)
DAEMON = (
    "import sys, tempfile, time; from exporter.traces.tailer import TailerSettings, TraceTailer;"
    "from exporter.traces.source import bounds_ns; from exporter.histogram import DEFAULT_STAGE_BUCKETS;"
    "t = TraceTailer(TailerSettings([sys.argv[1]], tempfile.mkdtemp(), bounds_ns(list(DEFAULT_STAGE_BUCKETS))));"
    "t0 = time.perf_counter(); t.poll(); print(sum(t.live.traces.values()), time.perf_counter() - t0)"
)


def make_file(path: Path, n: int) -> None:
    from tests import tracegen

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tracegen.write_file(str(tmp), tracegen.traces(n, seed=1, ensemble_every=10))
    tmp.rename(path)


def measure(code: str, path: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> tuple[float, int, str]:
    """(process wall seconds, peak RSS in MB of that process, its stdout) of one contender on one file."""
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-c", WRAP, code, str(path)], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"contender failed with {r.returncode}: {r.stderr[-1000:]}")
    return wall, int(r.stderr.split()[-1]) // 1024, r.stdout


# `summary --format json` printed whole, for the pairs: its stage figures must be equal
SUMMARY_JSON = (
    "import sys; from exporter.cli import main; main(['summary', '--format', 'json', '--no-progress', sys.argv[1]])"
)


def pairs(path: Path, against: Path, trace_summary: str | None, runs: int) -> None:
    """summary here and in `against`, in turn; Triton's script beside them."""
    import json
    import resource

    def run(argv: list[str], cwd: Path, pythonpath: str | None) -> tuple[float, int, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode:
            raise SystemExit(f"{argv[:4]} in {cwd} failed: {r.stderr[-1000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rss = int(r.stderr.split()[-1]) // 1024 if r.stderr.split() else 0
        return cpu, rss, r.stdout

    wrap = [PY, "-c", WRAP]
    rows: dict[str, list[tuple[float, int]]] = {"this checkout": [], f"{against}": [], "trace_summary.py": []}
    outs: dict[str, str] = {}
    for _ in range(runs):
        for name, cwd in (("this checkout", ROOT), (f"{against}", against)):
            cpu, rss, out = run([*wrap, SUMMARY_JSON, str(path)], cwd, str(cwd))
            rows[name].append((cpu, rss))
            outs[name] = out
        if trace_summary:
            cpu, rss, _ = run([*wrap, f"import runpy, sys; sys.argv = [{trace_summary!r}, sys.argv[1]]; "
                               f"runpy.run_path({trace_summary!r}, run_name='__main__')", str(path)], ROOT, None)
            rows["trace_summary.py"].append((cpu, rss))

    def figures(out: str) -> dict[str, tuple[int, dict[str, object]]]:
        return {f"{g['model']}/{g['protocol']}": (g["traces"], g["stages"]) for g in json.loads(out)["groups"]}

    # every figure the older code prints, printed the same (the newer prints more stages)
    new, old = figures(outs["this checkout"]), figures(outs[f"{against}"])
    same = new.keys() == old.keys() and all(
        new[k][0] == t and all(new[k][1].get(stage) == v for stage, v in stages.items())
        for k, (t, stages) in old.items())
    print(f"input: {path.name} {path.stat().st_size / 1e6:.0f} MB; {runs} pairs in turn, medians "
          f"(CPU: user + system seconds of the whole process)\n")
    print(f"{'contender':<44}{'CPU s':>8}{'RSS MB':>8}{'x trace_summary.py':>20}")
    ref = statistics.median(c for c, _ in rows["trace_summary.py"]) if rows["trace_summary.py"] else None
    for name, got in rows.items():
        if not got:
            continue
        cpu = statistics.median(c for c, _ in got)
        rss = statistics.median(r for _, r in got)
        ratio = f"{ref / cpu:20.1f}" if ref else ""
        print(f"{'summary, ' + name if name != 'trace_summary.py' else name:<44}{cpu:8.2f}{rss:8.0f}{ratio}")
    print(f"\nevery figure of the older summary (traces, each stage's count, mean, p50, p90, p99) equal: {same}")
    if not same:
        print("(where the older commit's request model differs, e.g. before the exclusive timeline, compare the "
              "output with a checkout of this change's parent instead)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=160000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", type=Path, help="a checkout of an older commit: summary pairs against it")
    ap.add_argument("--trace-summary", help="Triton's qa/common/trace_summary.py, timed on the same file")
    args = ap.parse_args()
    if args.against is not None:
        big = OUT / f"trace-{args.traces}.json"
        print(f"writing input under {OUT} ...", flush=True)
        make_file(big, args.traces)
        pairs(big, args.against.resolve(), args.trace_summary, args.runs)
        return
    big, half = OUT / f"trace-{args.traces}.json", OUT / f"trace-{args.traces // 2}.json"
    print(f"writing inputs under {OUT} ...", flush=True)
    make_file(big, args.traces)
    make_file(half, args.traces // 2)
    traces = {}
    for f in (big, half):
        traces[f] = int(measure(BASELINE, f)[2].split()[0])
    contenders = [
        ("baseline: json.load + stage math", BASELINE, None),
        ("daemon ingest (C scanner)", DAEMON, None),
        ("daemon ingest (pure Python)", DAEMON, {"INFPROF_PURE_PYTHON_SCANNER": "1"}),
        ("summary (C scanner)", SUMMARY, None),
    ]
    size_mb = big.stat().st_size / 1e6
    print(f"input: {big.name} {size_mb:.0f} MB, {traces[big]} traces counted; {half.name} "
          f"{half.stat().st_size / 1e6:.0f} MB; {args.runs} runs each, interleaved, medians\n")
    results: dict[str, dict[Path, list[tuple[float, float, int]]]] = {
        name: {big: [], half: []} for name, _, _ in contenders}
    for _ in range(args.runs):
        for name, code, env in contenders:
            for f in (big, half):
                wall, rss, out = measure(code, f, env)
                counted, work = out.split()
                if int(counted) != traces[f]:
                    raise SystemExit(f"{name} counted {counted} traces in {f.name}, the baseline {traces[f]}")
                results[name][f].append((float(work), wall, rss))
    base_work = statistics.median(w for w, _, _ in results[contenders[0][0]][big])
    base_wall = statistics.median(w for _, w, _ in results[contenders[0][0]][big])
    print(f"{'contender':<32}{'work s':>8}{'traces/s':>10}{'x base':>8}{'process s':>11}{'x base':>8}"
          f"{'RSS MB':>8}{'RSS (half)':>12}")
    for name, _, _ in contenders:
        work = statistics.median(w for w, _, _ in results[name][big])
        wall = statistics.median(w for _, w, _ in results[name][big])
        rss = statistics.median(r for _, _, r in results[name][big])
        rss_half = statistics.median(r for _, _, r in results[name][half])
        print(f"{name:<32}{work:8.2f}{traces[big] / work:10.0f}{base_work / work:8.1f}{wall:11.2f}"
              f"{base_wall / wall:8.1f}{rss:8d}{rss_half:12d}")
    print("\nwork: seconds inside the process after imports (a daemon pays its start once);"
          " process: the whole process, start and imports included; traces/s from work;"
          " every contender's trace count is checked against the baseline's")


if __name__ == "__main__":
    main()
