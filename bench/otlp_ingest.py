"""OTLP receiver throughput: spans per second per core, against decoding the same
payloads with the plain protobuf library in a loop.

    .venv/bin/python bench/otlp_ingest.py [--payloads 40] [--spans 512] [--http]

Payloads are Triton-shaped (tests/otlp_payloads.py: InferRequest, model and compute span
per request, a third of them ensembles) in batches of --spans spans (Triton's default
batch size is 512), as protobuf and as JSON (what Triton 2.51 sends). The receiver
contender decodes, regroups, counts and commits each payload with the state file, as
`serve` does before replying; --http adds the HTTP round trip. CPU time of this process
(time.process_time) is the denominator, so the figures are per core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from exporter.histogram import DEFAULT_STAGE_BUCKETS  # noqa: E402
from exporter.otlp.decode import decode  # noqa: E402
from exporter.otlp.receiver import OtlpIngest, OtlpServer  # noqa: E402
from exporter.traces.source import bounds_ns  # noqa: E402
from exporter.traces.tailer import TailerSettings, TraceTailer  # noqa: E402
from tests.otlp_payloads import T0, export_request, post, request_spans, to_json  # noqa: E402


def payloads(n: int, spans_per: int) -> list[ExportTraceServiceRequest]:
    out = []
    t = T0
    for _ in range(n):
        spans = []
        i = 0
        while len(spans) < spans_per:
            i += 1
            t += 10**6
            kind = ("http", "grpc", "ensemble")[i % 3]
            spans += request_spans(t, protocol="grpc" if kind == "grpc" else "http",
                                   ensemble="add_sub_ensemble" if kind == "ensemble" else None)
        out.append(export_request(spans))
    return out


def plain_protobuf(bodies: list[bytes]) -> tuple[int, float]:
    """ParseFromString and a walk over every span's events: the floor of any decoder."""
    c0 = time.process_time()
    n = 0
    for b in bodies:
        req = ExportTraceServiceRequest()
        req.ParseFromString(b)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    n += 1
                    for e in s.events:
                        _ = (e.name, e.time_unix_nano)
    return n, time.process_time() - c0


def receiver(bodies: list[bytes], ctype: str, http: bool) -> tuple[int, float, int]:
    with tempfile.TemporaryDirectory() as state:
        tailer = TraceTailer(TailerSettings([], state, bounds_ns(list(DEFAULT_STAGE_BUCKETS))))
        ingest = OtlpIngest(tailer.aggregator, 60.0)
        server = None
        if http:
            server = OtlpServer(ingest, "127.0.0.1", 0)
            server.start()
            url = f"http://127.0.0.1:{server.port}/v1/traces"
        c0 = time.process_time()
        n = 0
        for b in bodies:
            if server is not None:
                assert post(url, b, ctype)[0] == 200
            else:
                req, _ = decode(b, ctype, None)
                n += ingest.ingest(req)[0]
        spent = time.process_time() - c0
        if server is not None:
            server.stop()
        n = ingest.spans["accepted"]
        return n, spent, sum(tailer.live.traces.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--payloads", type=int, default=40)
    ap.add_argument("--spans", type=int, default=512)
    ap.add_argument("--http", action="store_true", help="through the HTTP listener (same process)")
    a = ap.parse_args()
    reqs = payloads(a.payloads, a.spans)
    pb = [r.SerializeToString() for r in reqs]
    js = [to_json(r) for r in reqs]
    n_spans = sum(len(ss.spans) for r in reqs for rs in r.resource_spans for ss in rs.scope_spans)
    print(f"{a.payloads} payloads, {n_spans} spans ({sum(map(len, pb)) / 1e6:.1f} MB protobuf, "
          f"{sum(map(len, js)) / 1e6:.1f} MB JSON){', over HTTP' if a.http else ''}")
    n, t = plain_protobuf(pb)
    base = n / t
    print(f"plain protobuf decode         {base:12,.0f} spans/s per core")
    for name, bodies, ctype in (("protobuf", pb, "application/x-protobuf"), ("JSON", js, "application/json")):
        n, t, traces = receiver(bodies, ctype, a.http)
        assert n == n_spans, (n, n_spans)
        rate = n / t
        print(f"receiver, {name:8}              {rate:12,.0f} spans/s per core  ({base / rate:.1f}x slower than "
              f"plain decoding; {traces} traces counted)")


if __name__ == "__main__":
    main()
