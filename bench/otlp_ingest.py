"""OTLP receiver throughput: spans per second per core, against decoding the same
payloads with the plain protobuf library in a loop.

    .venv/bin/python bench/otlp_ingest.py [--payloads 40] [--spans 512] [--http] [--triton-posts 1500]

Payloads are Triton-shaped (tests/otlp_payloads.py: InferRequest, model and compute span
per request, a third of them ensembles) in batches of --spans spans (Triton's default
batch size is 512), as protobuf and as JSON (what Triton 2.51 sends). The receiver
contender decodes, regroups, counts and commits each payload with the state file, as
`serve` does before replying; --http adds the HTTP round trip. CPU time of this process
(time.process_time) is the denominator, so the figures are per core. Beside plain protobuf
decoding: the receiver's own decoding alone (the compiled decoders of exporter/otlp/_otlp.c),
and every receiver figure again with the Python decoders (what INFPROF_PURE_PYTHON_OTLP=1 or a
checkout without a compiler runs), in the same run.

Then Triton's own posting shape: about a dozen spans a POST (two copies of a real Triton 2.51
body of six spans, tests/samples/otlp, with fresh ids; --triton-copies for more), one POST at a time on one keep-alive connection,
each committed before its 200, to a real `serve --otlp-listen` process with a state
directory. The figure is the daemon's CPU per span (psutil, the whole process) against a
plain json.loads of the same bodies in this process: the ratio says what the receiver
costs beyond reading the JSON. The daemon runs with `--otlp-pace-seconds 0` where it has the
flag: pacing spaces the answers (a client that does not batch would only wait), it does not
change what a POST costs. --triton-baseline runs it again with a daemon on the Python decoders.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from exporter.histogram import DEFAULT_STAGE_BUCKETS  # noqa: E402
from exporter.otlp import cdecode  # noqa: E402
from exporter.otlp import decode as decode_module  # noqa: E402
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


@contextmanager
def python_decoders() -> Iterator[None]:
    """decode() on the Python decoders (the reference), as without the compiled module."""
    saved = decode_module._COMPILED
    decode_module._COMPILED = None
    try:
        yield
    finally:
        decode_module._COMPILED = saved


def decode_only(bodies: list[bytes], ctype: str) -> tuple[int, float]:
    """The receiver's decoding alone (decode(): body to span records), nothing counted."""
    c0 = time.process_time()
    n = sum(len(decode(b, ctype, None)[0]) for b in bodies)
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


SAMPLE = ROOT / "tests" / "samples" / "otlp" / "triton-2.51-stream.json"


def triton_bodies(posts: int, copies: int = 2) -> list[bytes]:
    """`posts` OTLP/JSON bodies, each `copies` of the real Triton body with fresh trace and span ids
    and times moved on (so none is a duplicate), serialised as Triton serialises them."""
    import json
    import os

    template = SAMPLE.read_text()
    doc = json.loads(template)
    ids = {s[k] for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
           for k in ("traceId", "spanId", "parentSpanId") if s.get(k)}
    out = []
    for _ in range(posts):
        bodies = []
        for _copy in range(copies):
            text = template
            for old in ids:
                text = text.replace(old, os.urandom(len(old) // 2).hex())
            bodies.append(json.loads(text)["resourceSpans"])
        out.append(json.dumps({"resourceSpans": [rs for b in bodies for rs in b]}, separators=(",", ":")).encode())
    return out


def triton_shape(posts: int, exporter: str, copies: int = 2, python_decoders: bool = False) -> None:
    import http.client
    import json
    import subprocess
    import urllib.request

    import psutil

    from exporter.demo.launcher import free_port

    bodies = triton_bodies(posts, copies)
    n_spans = sum(len(ss["spans"]) for b in bodies for rs in json.loads(b)["resourceSpans"] for ss in rs["scopeSpans"])
    c0 = time.process_time()
    for _ in range(5):
        for b in bodies:
            json.loads(b)
    plain = (time.process_time() - c0) / 5 / n_spans
    with tempfile.TemporaryDirectory() as work:
        port, otlp = free_port(), free_port()
        helps = subprocess.run([exporter, "serve", "--help"], capture_output=True, text=True, check=True).stdout
        pace = ["--otlp-pace-seconds", "0"] if "--otlp-pace-seconds" in helps else []  # older exporters: none
        proc = subprocess.Popen([exporter, "serve", "--listen",
                                 f"127.0.0.1:{port}", "--otlp-listen", f"127.0.0.1:{otlp}", "--triton", "none",
                                 "--ebpf", "off", "--state-dir", work, *pace], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, cdecode.ENV: "1" if python_decoders else ""})
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            daemon = psutil.Process(proc.pid)
            conn = http.client.HTTPConnection("127.0.0.1", otlp, timeout=30)
            warm = triton_bodies(1, copies)[0]
            conn.request("POST", "/v1/traces", warm, {"Content-Type": "application/json"})
            conn.getresponse().read()  # warm: imports, first commit
            t0 = daemon.cpu_times()
            w0 = time.monotonic()
            for b in bodies:
                conn.request("POST", "/v1/traces", b, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                assert r.status == 200, r.status
            t1 = daemon.cpu_times()
            wall = time.monotonic() - w0
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as m:
                text = m.read().decode()
            accepted = next(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                            if ln.startswith('inference_profiler_otlp_spans_total{result="accepted"}'))
        finally:
            proc.terminate()
            proc.wait(20)
    cpu = (t1.user + t1.system) - (t0.user + t0.system)
    per_span = cpu / n_spans
    print(f"\nTriton's shape: {posts} POSTs of {n_spans // posts} spans, one at a time on one connection, "
          f"each committed before its 200 ({wall:.1f} s){', the daemon on the Python decoders' if python_decoders else ''}")
    print(f"plain json.loads of the bodies   {1 / plain:12,.0f} spans/s per core")
    print(f"daemon (serve --otlp-listen)     {1 / per_span:12,.0f} spans per CPU-second  "
          f"({per_span / plain:.1f}x json.loads; {accepted - n_spans // posts:.0f} of {n_spans} spans accepted)")
    assert accepted == n_spans + n_spans // posts, (accepted, n_spans)  # and the warm-up POST


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--payloads", type=int, default=40)
    ap.add_argument("--spans", type=int, default=512)
    ap.add_argument("--http", action="store_true", help="through the HTTP listener (same process)")
    ap.add_argument("--triton-posts", type=int, default=1500, help="POSTs in Triton's shape (0: skip)")
    ap.add_argument("--exporter", default=str(ROOT / ".venv" / "bin" / "inference-profiler"),
                    help="the inference-profiler serving Triton's shape (another checkout's, for a before/after)")
    ap.add_argument("--triton-copies", type=int, default=2,
                    help="copies of the 6-span Triton body a POST (2: a quickly answered Triton; 32: a paced one)")
    ap.add_argument("--triton-only", action="store_true", help="only Triton's shape")
    ap.add_argument("--triton-baseline", action="store_true",
                    help=f"Triton's shape again with the daemon on the Python decoders ({cdecode.ENV}=1)")
    a = ap.parse_args()
    if a.triton_only:
        triton_shape(a.triton_posts, a.exporter, a.triton_copies)
        if a.triton_baseline:
            triton_shape(a.triton_posts, a.exporter, a.triton_copies, python_decoders=True)
        return
    reqs = payloads(a.payloads, a.spans)
    pb = [r.SerializeToString() for r in reqs]
    js = [to_json(r) for r in reqs]
    n_spans = sum(len(ss.spans) for r in reqs for rs in r.resource_spans for ss in rs.scope_spans)
    print(f"{a.payloads} payloads, {n_spans} spans ({sum(map(len, pb)) / 1e6:.1f} MB protobuf, "
          f"{sum(map(len, js)) / 1e6:.1f} MB JSON){', over HTTP' if a.http else ''}")
    n, t = plain_protobuf(pb)
    base = n / t
    print(f"plain protobuf decode                 {base:12,.0f} spans/s per core")
    kinds = (("protobuf", pb, "application/x-protobuf"), ("JSON", js, "application/json"))
    print(f"OTLP decoders: {cdecode.decoder_name()}")
    for name, bodies, ctype in kinds:
        n, t = decode_only(bodies, ctype)
        with python_decoders():
            n_py, t_py = decode_only(bodies, ctype)
        assert n == n_py == n_spans, (n, n_py, n_spans)
        print(f"decode only, {name:8}                 {n / t:12,.0f} spans/s per core  "
              f"(Python decoders: {n_py / t_py:,.0f}, {t_py / t:.1f}x the time)")
    for decoders in ("compiled", "Python"):
        for name, bodies, ctype in kinds:
            if decoders == "Python":
                with python_decoders():
                    n, t, traces = receiver(bodies, ctype, a.http)
            else:
                n, t, traces = receiver(bodies, ctype, a.http)
            assert n == n_spans, (n, n_spans)
            rate = n / t
            print(f"receiver, {name:8} ({decoders + ' decoders)':18} {rate:12,.0f} spans/s per core  ({base / rate:.1f}x "
                  f"the time of plain decoding; {traces} traces counted)")
    if a.triton_posts:
        triton_shape(a.triton_posts, a.exporter, a.triton_copies)
        if a.triton_baseline:
            triton_shape(a.triton_posts, a.exporter, a.triton_copies, python_decoders=True)


if __name__ == "__main__":
    main()
