"""`diagnose` before and after, on a real Triton (the nvidia-pytriton wheel).

For each scenario of exporter/demo/tuning.py: run its load, diagnose this phase's trace
files (with the model config read from Triton), apply exactly the change the finding
prints (config.pbtxt + a reload through the repository API, or the client change),
run the same load again, and print what moved, side by side. A healthy model is run
too: it must have no finding.

    .venv/bin/python bench/advisor_before_after.py [--scenario sleepy] [--workdir DIR]

Exit code 1 when a scenario's rule was not found or a promised number did not move.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from exporter.demo.tuning import SCENARIOS, BeforeAfter, before_after, measure_phase, start_server
from exporter.diagnose import Thresholds
from exporter.diagnose.report import format_value


def table(results: list[BeforeAfter]) -> list[str]:
    rows = [("scenario", "rule found", "change applied", "number", "before", "after", "predicted", "moved")]
    for r in results:
        f = r.finding
        if f is None:
            rows.append((r.scenario.name, f"NOT FOUND ({r.scenario.rule})", "-", "-", "-", "-", "-", "-"))
            continue
        change = ", ".join(f"{k}={v}" for k, v in f.config.items()) or "client: shared memory"
        for i, x in enumerate(f.expect):
            rows.append((r.scenario.name if i == 0 else "", f.rule if i == 0 else "", change if i == 0 else "",
                         x.metric, format_value(x.metric, r.value(x.metric, "before")),
                         format_value(x.metric, r.value(x.metric, "after")), x.direction,
                         "yes" if r.moved(x.metric, x.direction) else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", action="append", choices=[n for n, s in SCENARIOS.items() if s.rule],
                    help="only this scenario (repeatable; default: all)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep models, traces and logs here")
    args = ap.parse_args(argv)
    chosen = [SCENARIOS[n] for n in args.scenario or [n for n, s in SCENARIOS.items() if s.rule]]
    found_only = [s for s in chosen if s.steps]  # an ensemble's finding points at a step: nothing to apply here
    chosen = [s for s in chosen if not s.steps]
    calm = SCENARIOS["calm"]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="advisor-"))
    t = Thresholds()
    server = start_server(workdir, [calm, *chosen, *found_only])
    seen: set[Path] = set()
    results: list[BeforeAfter] = []
    ok_found = True
    try:
        healthy = measure_phase(server, calm, seen, t)
        for s in found_only:
            phase = measure_phase(server, s, seen, t)
            f = next((x for x in phase.findings if x.rule == s.rule), None)
            print(f"\n{s.name}: diagnose said\n  " + (f"[{f.rule}] {f.summary}\n  change: {f.change}" if f
                                                      else f"NOT FOUND ({s.rule})"))
            ok_found = ok_found and f is not None
        for s in chosen:
            r = before_after(server, s, seen, t)
            results.append(r)
            if r.finding is not None:
                print(f"\n{s.name}: diagnose said\n  [{r.finding.rule}] {r.finding.summary}\n"
                      f"  change: {r.finding.change}")
                print(f"  after the change: {[f.rule for f in r.after.findings] or 'no findings'}")
    finally:
        server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    e = healthy.evidence
    print(f"\nhealthy model {calm.name}: {e.requests:.0f} requests, end_to_end mean {e.end_to_end_mean * 1e3:.2f} ms, "
          f"findings: {[f.rule for f in healthy.findings] or 'none'}\n")
    print("\n".join(table(results)))
    ok = ok_found and not healthy.findings and all(
        r.finding is not None and all(r.moved(x.metric, x.direction) for x in r.finding.expect) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
