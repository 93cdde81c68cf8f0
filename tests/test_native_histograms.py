"""Native histograms over the Prometheus protobuf format, against a real Prometheus 2.42 with
--enable-feature=native-histograms scraping a real `inference-profiler serve`.

The reference is the trace file itself: each stage's durations are computed here from the raw
stamps, independently of the exporter's stage code. histogram_count and histogram_sum of the
native series must equal them exactly, and histogram_quantile must be within one native
bucket's width (docs/native-histograms.md) of the exact nearest-rank quantile.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporter.demo.launcher import free_port
from exporter.histogram import native_width
from exporter.vendor.client_model import metrics_pb2
from tests import tracegen
from tests.test_dashboards_e2e import Prometheus
from tests.triton_harness import ExporterProcess

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(180)]

PROTOBUF_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
                   "text/plain;version=0.0.4;q=0.3")
STAGE = "inference_profiler_stage_duration_seconds"
SCHEMA = 3  # not the default: the setting is honoured
# stage -> (from, to) stamps, as docs/metrics.md defines them; computed here from the raw file
REFERENCE = {"queue": ("QUEUE_START", "COMPUTE_START"), "compute_infer": ("COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
             "request": ("REQUEST_START", "REQUEST_END")}


def exact_durations(path: Path) -> dict[tuple[str, str], list[int]]:
    """(protocol, stage) -> every duration in ns, from the file's stamps."""
    stamps: dict[int, dict[str, int]] = defaultdict(dict)
    protocol: dict[int, str] = {}
    for obj in json.loads(path.read_text()):
        for t in obj.get("timestamps", []):
            stamps[obj["id"]][t["name"]] = t["ns"]
    for tid, st in stamps.items():
        protocol[tid] = "http" if "HTTP_RECV_START" in st else "grpc"
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for tid, st in stamps.items():
        for stage, (a, b) in REFERENCE.items():
            out[(protocol[tid], stage)].append(st[b] - st[a])
    return out


def nearest_rank(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[max(1, math.ceil(q * len(s))) - 1] / 1e9


def parse_delimited(body: bytes) -> list[metrics_pb2.MetricFamily]:
    """The body through the protobuf library's own parser: varint length, then a MetricFamily."""
    from google.protobuf.internal.decoder import _DecodeVarint  # the library's own varint reader

    out = []
    pos = 0
    while pos < len(body):
        n, pos = _DecodeVarint(body, pos)
        fam = metrics_pb2.MetricFamily()
        fam.ParseFromString(body[pos:pos + n])
        out.append(fam)
        pos += n
    return out


class Setup:
    def __init__(self, exporter: ExporterProcess, prom: Prometheus, exact: dict[tuple[str, str], list[int]]) -> None:
        self.exporter, self.prom, self.exact = exporter, prom, exact

    def query(self, expr: str) -> dict[tuple[str, str], float]:
        res = self.prom.api("query", query=expr)["result"]
        return {(r["metric"]["protocol"], r["metric"]["stage"]): float(r["value"][1]) for r in res}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("native")
    trace = work / "trace.json"
    tracegen.write_file(str(trace), tracegen.traces(3000, seed=7))
    exact = exact_durations(trace)
    port = free_port()
    exporter = ExporterProcess(["--trace-file", str(trace), "--state-dir", str(work / "state"), "--listen",
                                f"127.0.0.1:{port}", "--triton", "none", "--ebpf", "off",
                                "--native-schema", str(SCHEMA), "--trace-poll-seconds", "0.2"], work, port)
    procs: list[ExporterProcess | Prometheus] = [exporter]
    try:
        exporter.wait_ready()
        exporter.wait_for(lambda s: s.total("inference_profiler_traces_total") >= 3000)
        cfg = {"global": {"scrape_interval": "1s"},
               "scrape_configs": [{"job_name": "inference-profiler", "scrape_timeout": "1s",
                                   "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}
        (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        prom = Prometheus(work / "prometheus.yml", work, native=True)
        procs.append(prom)
        s = Setup(exporter, prom, exact)
        deadline = time.monotonic() + 30
        while not s.query(f"histogram_count({STAGE})") and time.monotonic() < deadline:
            time.sleep(0.5)
        yield s
    finally:
        for p in reversed(procs):
            p.stop()


def test_native_count_and_sum_are_the_exact_trace_counts_and_sums(setup: Setup) -> None:
    counts = setup.query(f"histogram_count({STAGE})")
    sums = setup.query(f"histogram_sum({STAGE})")
    assert counts, f"no native stage histograms in Prometheus: {setup.prom.log()}"
    for key, values in setup.exact.items():
        assert counts[key] == len(values), key
        assert sums[key] == pytest.approx(sum(values) / 1e9, rel=1e-12), key
    # stored natively only: Prometheus 2.42 keeps no classic series of a native histogram
    assert setup.query(f"{STAGE}_count") == {}


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_native_quantile_is_within_one_bucket_of_the_exact_quantile(setup: Setup, q: float) -> None:
    estimates = setup.query(f"histogram_quantile({q}, {STAGE})")
    for key, values in setup.exact.items():
        exact = nearest_rank(values, q)
        assert abs(estimates[key] - exact) / exact <= native_width(SCHEMA), (key, estimates[key], exact)


def test_protobuf_body_round_trips_and_matches_the_text_answer(setup: Setup) -> None:
    req = urllib.request.Request(setup.exporter.url + "/metrics", headers={"Accept": PROTOBUF_ACCEPT})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("application/vnd.google.protobuf; "
                                                    "proto=io.prometheus.client.MetricFamily; encoding=delimited")
        families = {f.name: f for f in parse_delimited(r.read())}
    text = setup.exporter.scrape()
    assert "inference_profiler_traces_total" in families  # counters keep their _total name
    hist = families[STAGE]
    assert hist.type == metrics_pb2.HISTOGRAM
    for m in hist.metric:
        labels = {p.name: p.value for p in m.label}
        h = m.histogram
        assert h.schema == SCHEMA and h.zero_threshold > 0
        # native buckets add up to the classic count; classic buckets are those of the text format
        positive = 0
        running = 0
        for d in h.positive_delta:
            running += d
            assert running >= 0
            positive += running
        assert positive + h.zero_count == h.sample_count
        assert sum(sp.length for sp in h.positive_span) == len(h.positive_delta)
        assert text.total(f"{STAGE}_count", **labels) == h.sample_count
        classic = [(float(lab["le"]), v) for lab, v in text.select(f"{STAGE}_bucket", **labels)]
        assert [(b.upper_bound, b.cumulative_count) for b in h.bucket] == classic[:-1]
