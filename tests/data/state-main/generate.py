"""Run with the code of main before the aggregator/store split (`python generate.py CHECKOUT OUTDIR`):
writes a state directory and expected.json. Written with main's code: trace files of two pods (ensemble children
waiting across files), OTLP requests (some held), journal records on top of a snapshot."""
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])  # the checkout of the version that writes the state
from exporter.histogram import DEFAULT_STAGE_BUCKETS
from exporter.otlp.receiver import OtlpIngest
from exporter.traces.source import bounds_ns
from exporter.traces.tailer import TailerSettings, TraceTailer
from tests import tracegen
from tests.otlp_payloads import T0, export_request, request_spans

out = Path(sys.argv[2])
work = Path("/tmp/structure/gen")
shutil.rmtree(work, ignore_errors=True)
for pod in "ab":
    (work / pod).mkdir(parents=True)
objs = list(tracegen.traces(600, ensemble_every=3, models=("m1", "m2"), streaming_every=7))
t = TraceTailer(TailerSettings([str(work / "{pod}" / "trace.json")], str(out), bounds_ns(list(DEFAULT_STAGE_BUCKETS)),
                               settle_seconds=0.0, child_hold_seconds=10**9))
for i in range(6):
    tracegen.write_file(str(work / "ab"[i % 2] / f"trace.json.{i // 2}"), objs[i * 37:(i + 1) * 37])
    t.poll()
otlp = OtlpIngest(t, 100, 10**9)
for i in range(3):
    otlp.ingest(export_request([s for r in range(4) for s in request_spans(T0 + (i * 4 + r) * 10**6, request_id=f"r{i}-{r}",
                                                                         protocol="grpc" if r % 2 else "http")]))
# a request whose root has not come yet: held
spans = request_spans(T0 + 10**9, request_id="held")
otlp.ingest(export_request([s for s in spans if s.parent_span_id]))
# no clean close: the journal stays beside the state file, as after a kill
tr = sum(t.live.traces.values())
pend = sum(len(s.pending) for s in t.streams.values())
print(json.dumps({"traces": tr, "pending": pend, "held": len(otlp.held), "journal_records": t.journal.records,
                  "files": len(t.entries), "seen": len(otlp.seen)}))
v = t.live.to_json()
expected = {"traces": sorted([list(row[0]), row[1]] for row in v["traces"]), "files": v["files"], "rejected": v["rejected"],
            "histogram_counts": sum(row[3] for row in v["histograms"]),
            "entries": sorted(os.path.relpath(p, work) for p in t.entries), "pending": pend, "held_traces": len(otlp.held),
            "seen_spans": len(otlp.seen)}
(out.parent / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
