"""Request outcomes on a real Triton (the wheel): cancelled, cache hits, failures, tensor-level
traces and a model streaming from a thread, against a plain json.load computation.

One Triton for the module, with the response cache on (`--cache-config local,size=...`) and
three models: `outcome_sleep` (tests/models: sleeps MS ms, raises on a negative MS, response
cache on), `tensor_echo` (UINT8 and BYTES tensors, traced at level TENSORS through the per-model
trace setting, so Triton writes their data unescaped) and the demo's `token_stream_thread`
(responses from a thread after execute() returned). The client sends, over HTTP and gRPC:
cache misses then hits, requests that raise, a gRPC deadline, a gRPC cancel() and a gRPC
stream closed with cancel_requests=True, tensors holding quotes, newlines, raw bytes and a
'{"id":' of their own, and streams over gRPC and HTTP generate_stream.

Then `serve` over the files must equal tests/reference.py (json.load, its own rules) exactly:
every outcome, every stage sum, every timeline segment, nothing rejected, every tensor record
counted apart; the client's own count of what it sent says the same. The thread-streaming
model's time is its own (model_after_release, between_responses) on both protocols, and
`diagnose` does not blame its frontend.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporter.demo.launcher import (
    STREAM_THREAD,
    TritonServer,
    copy_model_repository,
    triton_install,
)
from exporter.demo.traffic import InferenceClients
from exporter.stages import COLUMN, SEGMENT, STAGES, Outcome
from exporter.traces.assembly import StreamState
from exporter.traces.pipeline import file_batches
from exporter.traces.records import ReadResult
from tests import reference
from tests.triton_harness import EXPORTER, Scrape, trace_file_scrape

pytestmark = [pytest.mark.triton, pytest.mark.timeout(240)]

P = "inference_profiler_"
MODELS = Path(__file__).parent / "models"
SLEEP, TENSORS = "outcome_sleep", "tensor_echo"
STREAM_TOKENS = 12
STREAMS = 4  # per protocol
# tensor data Triton writes unescaped: a quote, a newline, raw bytes, a '{"id":' of its own
RAW = b'a"\n{"id":7}\x00\xff,'
TEXTS = [b'he said "hi"\n', b'{"id":1,"timestamps":[]}', b"\\ back"]


@dataclass(frozen=True)
class Run:
    workdir: Path
    trace_file: Path
    files: list[Path]
    sent: Counter[tuple[str, str]]  # (protocol, what the client did) -> requests


def sleep_input(mod: Any, ms: int) -> list[Any]:
    i = mod.InferInput("MS", [1], "INT32")
    i.set_data_from_numpy(np.array([ms], dtype=np.int32))
    return [i]


def tensor_inputs(mod: Any) -> list[Any]:
    raw = mod.InferInput("RAW", [len(RAW)], "UINT8")
    raw.set_data_from_numpy(np.frombuffer(RAW, dtype=np.uint8))
    text = mod.InferInput("TEXT", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=np.object_))
    return [raw, text]


def drive(triton: TritonServer) -> Counter[tuple[str, str]]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    sent: Counter[tuple[str, str]] = Counter()
    http = httpclient.InferenceServerClient(triton.http_address)
    grpc = grpcclient.InferenceServerClient(triton.grpc_address)
    try:
        for protocol, client, mod, ms in (("http", http, httpclient, 3), ("grpc", grpc, grpcclient, 5)):
            assert client.infer(SLEEP, sleep_input(mod, ms)).as_numpy("OUT")[0] == ms
            sent[(protocol, "miss")] += 1
            for _ in range(3):  # the same input again: answered from the cache
                assert client.infer(SLEEP, sleep_input(mod, ms)).as_numpy("OUT")[0] == ms
                sent[(protocol, "hit")] += 1
            for k in range(2):  # distinct inputs: Triton 2.51 caches an error as an empty answer
                with pytest.raises(Exception, match="asked to fail"):
                    client.infer(SLEEP, sleep_input(mod, -ms - k))
                sent[(protocol, "raised")] += 1
            result = client.infer(TENSORS, tensor_inputs(mod))
            assert result.as_numpy("RAW_OUT").tobytes() == RAW and list(result.as_numpy("TEXT_OUT")) == TEXTS
            sent[(protocol, "tensors")] += 1
        # gRPC: a deadline, a cancel() and a stream closed with its requests cancelled, each
        # while the model sleeps (distinct inputs: none is a cache hit)
        with pytest.raises(Exception, match="Deadline"):
            grpc.infer(SLEEP, sleep_input(grpcclient, 301), client_timeout=0.1)
        sent[("grpc", "cancelled")] += 1
        call = grpc.async_infer(SLEEP, sleep_input(grpcclient, 302), callback=lambda result, error: None)
        time.sleep(0.1)
        call.cancel()
        sent[("grpc", "cancelled")] += 1
        grpc.start_stream(callback=lambda result, error: None)
        grpc.async_stream_infer(SLEEP, sleep_input(grpcclient, 303))
        time.sleep(0.1)
        grpc.stop_stream(cancel_requests=True)
        sent[("grpc", "cancelled")] += 1
        time.sleep(0.5)  # the cancelled requests finish in the model
    finally:
        http.close()
        grpc.close()
    streams = InferenceClients(triton.http_address, triton.grpc_address)
    try:
        for i in range(STREAMS):
            assert streams.stream(STREAM_THREAD, f"s{i}", STREAM_TOKENS, empty_final=False).responses == STREAM_TOKENS
            sent[("grpc", "stream")] += 1
            assert streams.generate(STREAM_THREAD, STREAM_TOKENS, stream=True).responses >= STREAM_TOKENS
            sent[("http", "stream")] += 1
    finally:
        streams.close()  # Triton writes a stream's first request when the stream closes
    return sent


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    work = tmp_path_factory.mktemp("outcomes")
    repo = copy_model_repository(work, (STREAM_THREAD,))
    for m in (SLEEP, TENSORS):
        shutil.copytree(MODELS / m, repo / m, ignore=shutil.ignore_patterns("__pycache__"))
    caches = triton_install().root / "caches"
    trace_file = work / "traces" / "trace.json"
    triton = TritonServer(repo, work, trace_file=trace_file, log_frequency=10, extra_args=[
        "--cache-directory", str(caches), "--cache-config", "local,size=1048576"]).start()
    try:
        req = urllib.request.Request(f"{triton.http_url}/v2/models/{TENSORS}/trace/setting", method="POST",
                                     data=json.dumps({"trace_level": ["TIMESTAMPS", "TENSORS"]}).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            assert "TENSORS" in json.loads(r.read())["trace_level"]
        sent = drive(triton)
        triton.flush_traces()
    finally:
        triton.stop()  # SIGINT: Triton writes the traces still pending
    yield Run(work, trace_file, triton.trace_files(), sent)


@pytest.fixture(scope="module")
def plain(run: Run) -> dict[str, Any]:
    return reference.stage_stats([str(f) for f in run.files])


@pytest.fixture(scope="module")
def scrape(run: Run, plain: dict[str, Any]) -> Iterator[Scrape]:
    with trace_file_scrape(run.trace_file, run.workdir, sum(plain["traces"].values())) as m:
        yield m


def by_labels(m: Scrape, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for lab, v in m.select(name):
        out[tuple(lab[k] for k in labels)] += v
    return {k: v for k, v in out.items() if v}


def test_the_files_hold_tensor_records_json_cannot_read(run: Run) -> None:
    raw = b"".join(f.read_bytes() for f in run.files)
    assert raw.count(b'"activity":"TENSOR_') == 4 * 2  # RAW and TEXT in and out, per protocol
    assert b'"data":"\\"he said "hi"\n' in raw  # a BYTES tensor, unescaped as Triton writes it
    with pytest.raises(ValueError):
        for f in run.files:
            json.loads(f.read_bytes())


def test_outcomes_equal_the_plain_computation_and_what_the_client_did(
        run: Run, scrape: Scrape, plain: dict[str, Any]) -> None:
    got = by_labels(scrape, P + "requests_total", "model", "version", "protocol", "outcome")
    assert got == {k: float(v) for k, v in plain["outcomes"].items()}
    sleep = {(p, o): n for (m, _, p, o), n in got.items() if m == SLEEP}
    s = run.sent
    # a request that raised in execute() has a complete trace: the file does not say it failed
    assert sleep == {
        ("http", "answered"): s[("http", "miss")] + s[("http", "raised")],
        ("http", "cache_hit"): s[("http", "hit")],
        ("grpc", "answered"): s[("grpc", "miss")] + s[("grpc", "raised")],
        ("grpc", "cache_hit"): s[("grpc", "hit")],
        ("grpc", "cancelled"): s[("grpc", "cancelled")],
    }
    assert sum(got.values()) == scrape.total(P + "traces_total")


def test_stages_and_timeline_equal_the_plain_computation(scrape: Scrape, plain: dict[str, Any]) -> None:
    count = by_labels(scrape, P + "stage_duration_seconds_count", "model", "version", "protocol", "stage")
    total = by_labels(scrape, P + "stage_duration_seconds_sum", "model", "version", "protocol", "stage")
    want = {k: v for k, v in plain["stages"].items() if v[0]}
    assert set(count) == set(want)
    for key, (n, ns) in want.items():
        assert count[key] == n, key
        assert math.isclose(total.get(key, 0.0), ns * 1e-9, rel_tol=1e-12, abs_tol=n * 1e-9), key
    timeline = by_labels(scrape, P + "timeline_seconds_total", "model", "version", "protocol", "segment")
    assert set(timeline) == set(plain["timeline"])
    for key, ns in plain["timeline"].items():
        assert math.isclose(timeline[key], ns * 1e-9, rel_tol=1e-12), key
    # cancelled requests have no response stages: end_to_end counts the others only
    outcomes = by_labels(scrape, P + "requests_total", "model", "protocol", "outcome")
    e2e = by_labels(scrape, P + "stage_duration_seconds_count", "model", "protocol", "stage")
    rpr = by_labels(scrape, P + "responses_per_request_count", "model", "protocol")
    for (model, protocol) in {(m, p) for m, p, _ in outcomes}:
        answered = sum(n for (m, p, o), n in outcomes.items() if (m, p) == (model, protocol) and o != "cancelled")
        assert e2e[(model, protocol, "end_to_end")] == answered
        assert e2e[(model, protocol, "first_response")] == answered
        assert rpr[(model, protocol)] == answered
    assert ("outcome_sleep", "1", "grpc", "cache_hit") in timeline


def test_nothing_is_rejected_and_tensor_records_are_counted_apart(scrape: Scrape) -> None:
    rejected = {lab["reason"]: v for lab, v in scrape.select(P + "trace_records_rejected_total") if v}
    assert rejected == {}
    assert scrape.total(P + "trace_tensor_records_total") == 8
    assert scrape.total(P + "trace_files_total", result="failed") == 0


def test_answered_stages_are_unchanged_by_the_others_and_cache_hits_are_not_handler_time(run: Run) -> None:
    """Per trace: a cancelled request adds nothing to an answered one's numbers, and a cache hit's
    handler_overhead is REQUEST_START -> QUEUE_START, its lookup the cache_hit segment."""
    stream = StreamState()
    seen: Counter[str] = Counter()
    for f in run.files:
        with open(f, "rb") as fp:
            for batch, _ in file_batches(fp, ReadResult(), stream, lambda r: None, 0.0):
                rows = np.flatnonzero(batch.usable(lambda r, n: None))
                an = batch.anatomy(rows)
                for k, i in enumerate(rows.tolist()):
                    alone = batch.anatomy(np.array([i]))
                    assert (alone.durations[0] == an.durations[k]).all()
                    assert (alone.segments[0] == an.segments[k]).all()
                    row = batch.stamps[i]
                    if an.outcome[k] == Outcome.CACHE_HIT:
                        handler = an.durations[k, STAGES.index("handler_overhead")]
                        assert handler == row[COLUMN["QUEUE_START"]] - row[COLUMN["REQUEST_START"]]
                        assert an.segments[k, SEGMENT["cache_hit"]] > 0
                        seen["cache_hit"] += 1
    assert seen["cache_hit"] == run.sent[("http", "hit")] + run.sent[("grpc", "hit")]


def shares(timeline: dict[tuple[str, ...], float], protocol: str) -> dict[str, float]:
    mine = {k[-1]: v for k, v in timeline.items() if k[0] == STREAM_THREAD and k[2] == protocol}
    whole = sum(mine.values())
    return {seg: v / whole for seg, v in mine.items()}


MODEL_TIME = ("compute_input", "compute_infer", "compute_output", "model_after_release", "between_responses", "send")


def test_a_model_streaming_from_a_thread_owns_its_time_on_both_protocols(scrape: Scrape) -> None:
    """The stream's time is the model's on both protocols: its thread's time to the first response
    and the waits between responses (gRPC's sends lie inside those waits; HTTP's are not captured).
    On the first request of a gRPC stream Triton 2.51 returns from execute() only late in the
    stream, so there compute_infer holds what model_after_release and between_responses hold on
    the others: the model's time either way. The frontend keeps only its own gaps."""
    timeline = by_labels(scrape, P + "timeline_seconds_total", "model", "version", "protocol", "segment")
    grpc, http = shares(timeline, "grpc"), shares(timeline, "http")
    model_g, model_h = (sum(s.get(seg, 0.0) for seg in MODEL_TIME) for s in (grpc, http))
    # (on a loaded 2-core machine HTTP's own recv and queue gaps grew to 10 %: the model's share
    # stays far above the 40 % it had when gRPC's waits went to the frontend)
    assert model_g > 0.85 and model_h > 0.85, (grpc, http)
    assert abs(model_g - model_h) < 0.08, (grpc, http)
    assert grpc["between_responses"] > 0.3 and http["between_responses"] > 0.3, (grpc, http)
    assert grpc["model_after_release"] > 0 and http["model_after_release"] > 0, (grpc, http)
    assert grpc.get("frontend_overhead", 0) < 0.1 and http.get("frontend_overhead", 0) < 0.1, (grpc, http)


def test_diagnose_does_not_blame_the_frontend_of_a_thread_streaming_model(run: Run) -> None:
    """Before the stream's time after the release was the model's, gRPC gave the waits between
    its sends to frontend_overhead (60 % here) and diagnose advised shared memory."""
    r = subprocess.run([*EXPORTER, "diagnose", "--format", "json", "--model", STREAM_THREAD,
                        "--set", "min_requests=2", *map(str, run.files)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (model,) = json.loads(r.stdout)["models"]
    assert model["requests"] == 2 * STREAMS
    assert [f["rule"] for f in model["findings"]] == [], r.stdout
