"""Request anatomy on a real Triton (the wheel): streaming (decoupled) models and generate.

One Triton for the module with rolling traces. Both decoupled python models (responses sent
from execute(), and from a thread after execute() returned) are driven over a gRPC stream,
with and without enable_empty_final_response, and over HTTP generate_stream; generate goes to
a unary model. The client records when it sent each request and when it got the first and
the last response, on CLOCK_MONOTONIC (time.monotonic_ns), the clock of Triton's trace
timestamps. Triton is stopped with SIGINT, which flushes the last traces.

Then, against a plain json.load computation of the same files (written here, sharing no code
with the exporter): every request is counted once; first_response and end_to_end are what the
files say and never above what the client measured (over gRPC the bound holds for the send's
start: GRPC_SEND_END is gRPC's write completion, which comes after the client has the
message); responses per request are the client's
count (plus at most one flag-only final, which HTTP reports); nothing is rejected. Checked
through `serve`'s /metrics (the exclusive segments add up to end_to_end per series too) and
through `summary --format json` and `summary -t`.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.demo.launcher import STREAM, STREAM_THREAD, TEXT
from exporter.demo.traffic import InferenceClients, Reply
from tests.triton_harness import EXPORTER, Scrape, start_triton, trace_file_scrape

pytestmark = [pytest.mark.triton, pytest.mark.timeout(180)]

TOKENS = (1, 2, 3, 5, 8)  # responses asked of each streamed request, one round per value
REPEATED = ("GRPC_SEND_START", "GRPC_SEND_END", "HTTP_SEND_START", "HTTP_SEND_END", "INFER_RESPONSE_COMPLETE")
P = "inference_profiler_"
NS = 1e-9
RESPONSE_BUCKETS = tuple(2**i for i in range(13))  # 1, 2, 4, ... 4096


# --- the client side -------------------------------------------------------------------

@dataclass(frozen=True)
class Sent:
    protocol: str  # the frontend Triton traces: grpc or http
    model: str
    request_id: str  # gRPC only: generate has no request id
    empty_final: bool  # gRPC: enable_empty_final_response
    reply: Reply


@dataclass(frozen=True)
class Run:
    workdir: Path
    trace_file: Path
    files: list[Path]
    sent: list[Sent]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    work = tmp_path_factory.mktemp("anatomy")
    triton = start_triton(work / "triton", models=(STREAM, STREAM_THREAD, TEXT), log_frequency=10)
    sent: list[Sent] = []
    try:
        clients = InferenceClients(triton.http_address, triton.grpc_address)
        try:
            # one request at a time: each client window [sent, first response] holds one arrival
            for n in TOKENS:
                for model in (STREAM, STREAM_THREAD):
                    for empty in (False, True):
                        rid = f"{model}-{n}-{'empty' if empty else 'plain'}"
                        sent.append(Sent("grpc", model, rid, empty, clients.stream(model, rid, n, empty_final=empty)))
                    sent.append(Sent("http", model, "", False, clients.generate(model, n, stream=True)))
                sent.append(Sent("http", TEXT, "", False, clients.generate(TEXT, None, stream=False)))
        finally:
            clients.close()  # closing the stream makes Triton write its first request's trace
    finally:
        triton.stop()  # SIGINT: Triton writes the traces still pending
    assert triton.trace_file is not None
    files = triton.trace_files()
    assert len(files) > 1, files  # rolling files, not one
    return Run(work, triton.trace_file, files, sent)


# --- the independent computation (json.load, the rules of docs/traces.md) -----------------

@dataclass(frozen=True)
class Trace:
    file: Path
    id: int
    model: str
    version: str
    protocol: str
    request_id: str
    top_level: bool
    arrival: int
    end: int
    responses: tuple[int, ...]  # times the responses went out, sorted
    grpc_send_starts: tuple[int, ...]  # when the server began writing each gRPC response, sorted

    @property
    def end_to_end(self) -> int:
        return self.end - self.arrival

    @property
    def first_response(self) -> int:
        return self.responses[0] - self.arrival

    @property
    def gaps(self) -> list[int]:
        return [b - a for a, b in zip(self.responses, self.responses[1:], strict=False)]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.version, self.protocol)


def plain_traces(files: list[Path]) -> list[Trace]:
    out: list[Trace] = []
    for f in files:
        merged: dict[int, dict[str, Any]] = {}
        for obj in json.loads(f.read_text()):
            t = merged.setdefault(obj["id"], {"stamps": defaultdict(list)})
            for k in ("model_name", "model_version", "request_id", "parent_id"):
                if k in obj:
                    t[k] = obj[k]
            for s in obj.get("timestamps", []):
                if s["ns"] != 0:  # 0 is "not captured"
                    t["stamps"][s["name"]].append(s["ns"])
        for tid, t in merged.items():
            st: dict[str, list[int]] = t["stamps"]
            if not st.get("REQUEST_START") or not st.get("REQUEST_END"):
                continue
            for name, times in st.items():
                assert name in REPEATED or len(times) == 1, (f, tid, name, times)  # only these repeat
            one = {name: times[0] for name, times in st.items()}
            arrival = one.get("HTTP_RECV_START", one.get("GRPC_WAITREAD_END", one["REQUEST_START"]))
            sends = st.get("HTTP_SEND_END", []) + st.get("GRPC_SEND_END", [])
            completes = st.get("INFER_RESPONSE_COMPLETE", [])
            responses = sorted(sends or completes or [one["REQUEST_END"]])
            ends = ([max(sends)] if sends else []) + ([max(completes)] if completes else [])
            parent = t.get("parent_id")
            root = t
            while root.get("parent_id") is not None:
                root = merged[root["parent_id"]]
            names = set(root["stamps"])
            protocol = ("http" if any(n.startswith("HTTP_") for n in names)
                        else "grpc" if any(n.startswith("GRPC_") for n in names) else "none")
            out.append(Trace(f, tid, t["model_name"], str(t.get("model_version", "")), protocol,
                             t.get("request_id", ""), parent is None, arrival,
                             max(ends) if ends else one["REQUEST_END"], tuple(responses),
                             tuple(sorted(st.get("GRPC_SEND_START", [])))))
    return out


@dataclass
class Expected:
    """What one (model, version, protocol) series must show."""

    traces: int = 0
    end_to_end_ns: int = 0
    first_response_ns: int = 0
    inter_count: int = 0
    inter_ns: int = 0
    responses: Counter[int] | None = None


def expected(traces: list[Trace]) -> dict[tuple[str, str, str], Expected]:
    out: dict[tuple[str, str, str], Expected] = defaultdict(Expected)
    for t in traces:
        e = out[t.key]
        e.traces += 1
        e.end_to_end_ns += t.end_to_end
        e.first_response_ns += t.first_response
        e.inter_count += len(t.gaps)
        e.inter_ns += sum(t.gaps)
        e.responses = (e.responses or Counter()) + Counter({len(t.responses): 1})
    return dict(out)


@pytest.fixture(scope="module")
def traces(run: Run) -> list[Trace]:
    return plain_traces(run.files)


# --- the exporter over the same files ------------------------------------------------

@pytest.fixture(scope="module")
def scrape(run: Run, traces: list[Trace]) -> Iterator[Scrape]:
    with trace_file_scrape(run.trace_file, run.workdir, len(traces)) as m:
        yield m


def series(m: Scrape, name: str, key: tuple[str, str, str], **labels: str) -> float:
    model, version, protocol = key
    return m.total(name, model=model, version=version, protocol=protocol, **labels)


def close(got: float, want_ns: int, observations: int) -> bool:
    """A float sum of seconds against an exact sum of ns: rounding only (1 ns per observation)."""
    return math.isclose(got, want_ns * NS, rel_tol=1e-12, abs_tol=max(1, observations) * NS)


# --- tests --------------------------------------------------------------------------------

def test_every_request_is_traced_once_and_within_what_the_client_saw(run: Run, traces: list[Trace]) -> None:
    top = [t for t in traces if t.top_level]
    assert len(top) == len(run.sent)
    unmatched = list(top)
    for s in run.sent:
        r = s.reply
        # the server's arrival lies between the client's send and its first response
        mine = [t for t in unmatched if t.model == s.model and t.protocol == s.protocol
                and (t.request_id == s.request_id if s.request_id else True)
                and r.sent_ns <= t.arrival <= r.first_ns]
        assert len(mine) == 1, (s, mine)
        t = mine[0]
        unmatched.remove(t)
        where = f"{s.protocol} {s.model} {s.request_id} empty_final={s.empty_final}"
        assert 0 <= t.first_response <= t.end_to_end, where
        if s.protocol == "grpc":
            # GRPC_SEND_END is gRPC's write completion, which on loopback comes 0.1-0.9 ms after the
            # client already has the message; the server had begun sending it by GRPC_SEND_START
            assert t.grpc_send_starts[0] - t.arrival <= r.first_ns - r.sent_ns, where
            assert t.grpc_send_starts[-1] - t.arrival <= r.last_ns - r.sent_ns, where
            # one GRPC_SEND per message on the stream, the empty final included when asked for
            assert len(t.responses) == len(t.grpc_send_starts) == r.responses, where
        else:
            assert t.first_response <= r.first_ns - r.sent_ns, where
            assert t.end_to_end <= r.last_ns - r.sent_ns, where
            # HTTP reports the flag-only final's callback too
            assert r.responses <= len(t.responses) <= r.responses + 1, where
    assert unmatched == []
    # the shapes the run was meant to have: several responses, and a release before them
    assert max(len(t.responses) for t in top) >= max(TOKENS)
    assert {t.model for t in top if len(t.responses) > 1} == {STREAM, STREAM_THREAD}


def test_metrics_equal_the_plain_computation(scrape: Scrape, traces: list[Trace]) -> None:
    want = expected(traces)
    assert {k for k in want} == {(lab["model"], lab["version"], lab["protocol"])
                                 for lab, _ in scrape.select(P + "traces_total")}
    stage = P + "stage_duration_seconds"
    for key, e in want.items():
        assert series(scrape, P + "traces_total", key) == e.traces, key
        assert series(scrape, stage + "_count", key, stage="end_to_end") == e.traces, key
        assert close(series(scrape, stage + "_sum", key, stage="end_to_end"), e.end_to_end_ns, e.traces), key
        assert series(scrape, stage + "_count", key, stage="first_response") == e.traces, key
        assert close(series(scrape, stage + "_sum", key, stage="first_response"), e.first_response_ns, e.traces), key
        assert series(scrape, stage + "_count", key, stage="inter_response") == e.inter_count, key
        assert close(series(scrape, stage + "_sum", key, stage="inter_response"), e.inter_ns, e.inter_count), key
        assert e.responses is not None
        rpr = P + "responses_per_request"
        assert series(scrape, rpr + "_count", key) == e.traces, key
        assert series(scrape, rpr + "_sum", key) == sum(n * c for n, c in e.responses.items()), key
        model, version, protocol = key
        buckets = {float(lab["le"]): v for lab, v in scrape.select(rpr + "_bucket", model=model, version=version,
                                                                  protocol=protocol)}
        for le in RESPONSE_BUCKETS:
            assert buckets.get(float(le)) == sum(c for n, c in e.responses.items() if n <= le), (key, le)
        assert buckets[math.inf] == e.traces, key


def test_timeline_segments_add_up_to_end_to_end_per_series(scrape: Scrape, traces: list[Trace]) -> None:
    segments: dict[tuple[str, str, str], float] = defaultdict(float)
    for lab, v in scrape.select(P + "timeline_seconds_total"):
        assert v >= 0, lab
        segments[(lab["model"], lab["version"], lab["protocol"])] += v
    want = expected(traces)
    assert set(segments) == set(want)
    for key, total in segments.items():
        e2e = series(scrape, P + "stage_duration_seconds_sum", key, stage="end_to_end")
        assert math.isclose(total, e2e, rel_tol=1e-9, abs_tol=1e-9 * want[key].traces), key


def test_nothing_is_rejected(scrape: Scrape) -> None:
    rejected = {lab["reason"]: v for lab, v in scrape.select(P + "trace_records_rejected_total") if v}
    assert rejected.get("negative_span", 0) == 0
    assert rejected == {}
    assert scrape.total(P + "trace_files_total", result="failed") == 0


def test_summary_json_equals_the_plain_computation(run: Run, traces: list[Trace]) -> None:
    r = subprocess.run([*EXPORTER, "summary", "--format", "json", *map(str, run.files)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    groups = {(g["model"], g["version"], g["protocol"]): g for g in json.loads(r.stdout)["groups"]}
    for key, e in expected(traces).items():
        g = groups[key]
        assert g["traces"] == e.traces, key
        stages = g["stages"]
        for stage, count, total in (("end_to_end", e.traces, e.end_to_end_ns),
                                    ("first_response", e.traces, e.first_response_ns),
                                    ("inter_response", e.inter_count, e.inter_ns)):
            if count == 0:
                assert stages.get(stage, {}).get("count", 0) == 0, (key, stage)
                continue
            assert stages[stage]["count"] == count, (key, stage)
            assert math.isclose(stages[stage]["mean"], total * NS / count, rel_tol=1e-9), (key, stage)


def test_summary_show_trace_lists_every_response(run: Run, traces: list[Trace]) -> None:
    r = subprocess.run([*EXPORTER, "summary", "-t", *map(str, run.files)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # one header per trace: "MODEL (VERSION) id N [PROTOCOL] K responses", K left out for one response
    heads = re.findall(r"(?m)^(\S+) \((\S+)\) id \d+(?: parent \d+)? \[(\w+)\](?: (\d+) responses)?$", r.stdout)
    listed = Counter((model, version, protocol, int(k or 1)) for model, version, protocol, k in heads)
    assert listed == Counter((*t.key, len(t.responses)) for t in traces)
    # every response of a stream is numbered: "GRPC_SEND_END i/K"
    assert len(re.findall(r"(?m)^\s+GRPC_SEND_END \d+/\d+", r.stdout)) == sum(
        len(t.responses) for t in traces if t.protocol == "grpc" and len(t.responses) > 1)
