"""A real `serve --otlp-listen` fed fuzzed OTLP/JSON and protobuf bodies, and concurrent
gzip posts that inflate to 24 MiB each: every body is answered (200 or 400, never 500 or a
dropped connection), the daemon keeps counting good posts, and its memory stays within a
stated budget: peak RSS (VmHWM) under FUZZ_PEAK_MIB through the fuzz, and under
MAX_PEAK_MIB (below the DaemonSet's 512 Mi) with 8 connections posting 24 MiB of JSON each
at once (one decode budget for all of them: one such body is decoded at a time)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.demo.launcher import free_port
from tests.otlp_payloads import T0, export_request, post, request_spans

ROOT = Path(__file__).resolve().parent.parent
FUZZ_PEAK_MIB = 150  # small bodies: the daemon's own ~50 MiB and what the fuzz adds
MAX_PEAK_MIB = 450  # the DaemonSet's limit is 512 Mi; one 24 MiB JSON body in decoding takes ~250 MiB


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(key)


class Daemon:
    def __init__(self, work: Path) -> None:
        self.port, self.otlp = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}
        self.log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--otlp-listen", f"127.0.0.1:{self.otlp}", "--triton", "none", "--ebpf", "off",
             "--state-dir", str(work / "state")], stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.otlp}/v1/traces"
        for _ in range(300):
            assert self.proc.poll() is None, (work / "serve.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("serve did not become ready")

    def peak_mib(self) -> float:
        return _status_kib(self.proc.pid, "VmHWM") / 1024

    def rss_mib(self) -> float:
        return _status_kib(self.proc.pid, "VmRSS") / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("fuzz-serve"))
    yield d
    d.stop()


@pytest.fixture
def fresh_daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    d.stop()


hexid = st.one_of(st.binary(min_size=0, max_size=17).map(bytes.hex), st.text(max_size=20))
number = st.one_of(st.integers(-(2**70), 2**70), st.integers(T0 - 10**12, T0 + 10**12), st.floats(allow_nan=False),
                   st.integers(0, 2**64).map(str), st.text(max_size=8))
junk = st.recursive(st.none() | st.booleans() | number | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
value = st.one_of(st.fixed_dictionaries({"stringValue": st.text(max_size=300)}),
                  st.fixed_dictionaries({"intValue": number}), st.dictionaries(st.text(max_size=12), junk, max_size=2))
attribute = st.fixed_dictionaries({"key": st.sampled_from(["triton.model_name", "triton.model_version",
                                                           "triton.request_id", "other"]) | st.text(max_size=10),
                                   "value": value})
event = st.fixed_dictionaries({"name": st.sampled_from(["REQUEST_START", "REQUEST_END", "QUEUE_START",
                                                        "COMPUTE_START", "HTTP_RECV_START", "X_START"])
                               | st.text(max_size=70), "timeUnixNano": number})
span = st.fixed_dictionaries(
    {"traceId": hexid, "spanId": hexid},
    optional={"parentSpanId": hexid, "name": st.sampled_from(["InferRequest", "compute", "m"]) | st.text(max_size=5),
              "attributes": st.lists(attribute, max_size=6), "events": st.lists(event, max_size=6),
              "status": st.fixed_dictionaries({"code": st.integers(-3, 5) | st.text(max_size=20)}),
              "extra": junk})
document = st.fixed_dictionaries({"resourceSpans": st.lists(st.fixed_dictionaries(
    {"scopeSpans": st.lists(st.fixed_dictionaries({"spans": st.lists(span, max_size=5)}), max_size=2)},
    optional={"resource": junk}), max_size=2)}) | junk

_VALID = export_request(request_spans(T0)).SerializeToString()
protobuf = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda pos, b: _VALID[:pos] + b + _VALID[pos + len(b):], st.integers(0, len(_VALID)),
              st.binary(min_size=1, max_size=12)),
    st.builds(lambda n, rep: _VALID[:n] * rep, st.integers(1, len(_VALID)), st.integers(1, 50)),
)


def _check(daemon: Daemon, body: bytes, ctype: str, gz: bool) -> None:
    status, answer = post(daemon.url, body, ctype, "gzip" if gz else None)
    assert status in (200, 400), (status, answer[:200])
    assert daemon.proc.poll() is None


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=document, gz=st.booleans())
def test_fuzzed_json_is_answered_within_the_memory_budget(daemon: Daemon, doc: Any, gz: bool) -> None:
    _check(daemon, json.dumps(doc).encode(), "application/json", gz)
    assert daemon.peak_mib() < FUZZ_PEAK_MIB


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=protobuf, gz=st.booleans())
def test_fuzzed_protobuf_is_answered_within_the_memory_budget(daemon: Daemon, body: bytes, gz: bool) -> None:
    _check(daemon, body, "application/x-protobuf", gz)
    assert daemon.peak_mib() < FUZZ_PEAK_MIB


def _request(i: int) -> list[dict[str, Any]]:
    """Request i as Triton 2.51 posts it in OTLP/JSON: root, model span, compute span (ids from i)."""
    t = T0 + i * 10**6
    tid, root, model, compute = f"{i + 1:032x}", f"{3 * i + 1:016x}", f"{3 * i + 2:016x}", f"{3 * i + 3:016x}"

    def events(*names: str) -> list[dict[str, str]]:
        return [{"name": n, "timeUnixNano": str(t + k * 1000)} for k, n in enumerate(names)]

    attrs = [{"key": "triton.model_name", "value": {"stringValue": "add_sub"}},
             {"key": "triton.model_version", "value": {"intValue": "1"}},
             {"key": "triton.request_id", "value": {"stringValue": f"r{i}"}}]
    return [
        {"traceId": tid, "spanId": compute, "parentSpanId": model, "name": "compute", "kind": 2,
         "events": events("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END")},
        {"traceId": tid, "spanId": model, "parentSpanId": root, "name": "add_sub", "kind": 2, "attributes": attrs,
         "events": events("REQUEST_START", "QUEUE_START", "REQUEST_END")},
        {"traceId": tid, "spanId": root, "name": "InferRequest", "kind": 2,
         "events": events("HTTP_RECV_START", "HTTP_RECV_END", "INFER_RESPONSE_COMPLETE", "HTTP_SEND_START",
                          "HTTP_SEND_END")},
    ]


def _inflating_body(mib: int) -> bytes:
    """Valid OTLP/JSON, Triton-shaped, `mib` MiB or a little more inflated, gzipped."""
    per_request = len(json.dumps(_request(0)))
    spans = [s for i in range((mib << 20) // per_request + 1) for s in _request(i)]
    doc = {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "triton-server"}, "spans": spans}]}]}
    return gzip.compress(json.dumps(doc).encode(), compresslevel=6)


def test_concurrent_gzip_posts_do_not_multiply_memory(fresh_daemon: Daemon) -> None:
    """8 connections each post a gzip JSON body inflating to ~24 MiB at once: each is answered
    200 (decoded in turn within the budget) or 503 with Retry-After, and the daemon's peak RSS
    stays under MAX_PEAK_MIB (before the budget: 2,386 MiB for the same load)."""
    daemon = fresh_daemon
    body = _inflating_body(24)
    answers: list[int] = []

    def one() -> None:
        answers.append(post(daemon.url, body, "application/json", headers={"Content-Encoding": "gzip"},
                            timeout=120)[0])

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    peak = daemon.peak_mib()
    print(f"8 concurrent posts of {len(body) / 2**20:.1f} MiB gzip (24 MiB JSON): answers {sorted(answers)}, "
          f"daemon peak RSS {peak:.0f} MiB (budget {MAX_PEAK_MIB}), RSS now {daemon.rss_mib():.0f} MiB")
    assert len(answers) == 8 and set(answers) <= {200, 503} and 200 in answers
    assert peak < MAX_PEAK_MIB
    # and it still counts a good post
    assert post(daemon.url, export_request(request_spans(T0 + 10**15)).SerializeToString())[0] == 200
