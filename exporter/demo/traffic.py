"""Inference traffic to the example models over HTTP and gRPC, with exact counts.

`send_requests` sends a fixed number of requests per (protocol, model) and returns what
was sent and what succeeded; `TrafficDriver` keeps a target rate in the background
(demo, benchmarks). Both count per (protocol, model), so a test can compare the
exporter's counts with what it really sent. Beside plain `infer` over "http" and "grpc",
a "protocol" here can be a streaming way of asking: a gRPC stream, HTTP generate_stream
(server-sent events) or HTTP generate; Triton traces a "grpc..." one as grpc, the rest as http.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .launcher import ENSEMBLE, MODEL, STREAM, STREAM_ENSEMBLE, STREAM_THREAD, TEXT

log = logging.getLogger("demo.traffic")

PROTOCOLS = ("http", "grpc")
GRPC_STREAM = "grpc_stream"  # tritonclient.grpc start_stream / async_stream_infer
HTTP_GENERATE_STREAM = "http_generate_stream"  # POST /v2/models/M/generate_stream (server-sent events)
HTTP_GENERATE = "http_generate"  # POST /v2/models/M/generate
Key = tuple[str, str]  # (protocol, model)
# the streaming models over every way they are asked, and generate on a unary model
STREAM_TRAFFIC: tuple[Key, ...] = (
    (GRPC_STREAM, STREAM), (GRPC_STREAM, STREAM_THREAD), (GRPC_STREAM, STREAM_ENSEMBLE),
    (HTTP_GENERATE_STREAM, STREAM), (HTTP_GENERATE_STREAM, STREAM_THREAD), (HTTP_GENERATE, TEXT),
)
TEXT_INPUT = "the quick brown fox jumps over the lazy dog"
TOKENS = 8  # responses per streamed request
TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Reply:
    """What the client saw of one request, on time.monotonic_ns() (CLOCK_MONOTONIC: Triton's trace clock)."""

    sent_ns: int  # just before the request was handed to the client library
    first_ns: int  # the first response received
    last_ns: int  # the last response received (HTTP: the end of the body)
    responses: int  # messages received, a gRPC flag-only final included when asked for


@dataclass
class TrafficCounts:
    sent: Counter[Key] = field(default_factory=Counter)
    succeeded: Counter[Key] = field(default_factory=Counter)
    failed: Counter[Key] = field(default_factory=Counter)
    last_error: str = ""

    def add(self, other: TrafficCounts) -> None:
        self.sent += other.sent
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.last_error = other.last_error or self.last_error

    def copy(self) -> TrafficCounts:
        return TrafficCounts(Counter(self.sent), Counter(self.succeeded), Counter(self.failed), self.last_error)


class InferenceClients:
    """One HTTP and one gRPC client (tritonclient clients are not shared between threads)."""

    def __init__(self, http_address: str, grpc_address: str) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self._mods: dict[str, Any] = {"http": httpclient, "grpc": grpcclient}
        self._clients: dict[str, Any] = {
            "http": httpclient.InferenceServerClient(url=http_address),
            "grpc": grpcclient.InferenceServerClient(url=grpc_address),
        }
        self._rng = np.random.default_rng()
        self._http_address = http_address
        self._http: http.client.HTTPConnection | None = None  # generate endpoints, kept alive
        self._stream_replies: queue.Queue[tuple[int, Any, Any]] | None = None  # open gRPC stream

    def stop_stream(self) -> None:
        """Close the gRPC stream: Triton writes the trace of a stream's first request only then."""
        if self._stream_replies is not None:
            self._clients["grpc"].stop_stream()
            self._stream_replies = None

    def infer(self, protocol: str, model: str, request_id: str) -> Reply:
        """One request the way `protocol` says; raises if it fails or the answer is wrong."""
        if protocol == GRPC_STREAM:
            return self.stream(model, request_id, TOKENS, empty_final=True)
        if protocol == HTTP_GENERATE_STREAM:
            return self.generate(model, TOKENS, stream=True)
        if protocol == HTTP_GENERATE:
            return self.generate(model, None, stream=False)
        mod = self._mods[protocol]
        a = self._rng.random((1, 4), dtype=np.float32)
        b = self._rng.random((1, 4), dtype=np.float32)
        inputs = [mod.InferInput("INPUT0", [1, 4], "FP32"), mod.InferInput("INPUT1", [1, 4], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        sent = time.monotonic_ns()
        result = self._clients[protocol].infer(model, inputs, request_id=request_id)
        done = time.monotonic_ns()
        out = result.as_numpy("OUTPUT0")
        if out is None or not np.allclose(out, a + b):
            raise ValueError(f"{model} over {protocol} answered {out!r} for {a!r} + {b!r}")
        return Reply(sent, done, done, 1)

    def stream(self, model: str, request_id: str, tokens: int, *, empty_final: bool) -> Reply:
        """One request on this client's gRPC stream (opened on first use), read to its last response.

        Without `empty_final` the end is the `tokens`-th response (or one flagged final)."""
        grpc = self._mods["grpc"]
        if self._stream_replies is None:
            replies: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
            self._clients["grpc"].start_stream(
                callback=lambda result, error: replies.put((time.monotonic_ns(), result, error)))
            self._stream_replies = replies
        text = grpc.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([TEXT_INPUT.encode()], dtype=np.object_))
        count = grpc.InferInput("max_tokens", [1], "INT32")
        count.set_data_from_numpy(np.array([tokens], dtype=np.int32))
        sent = time.monotonic_ns()
        self._clients["grpc"].async_stream_infer(model, [text, count], request_id=request_id,
                                                 enable_empty_final_response=empty_final)
        times: list[int] = []
        while True:
            try:
                at, result, error = self._stream_replies.get(timeout=TIMEOUT_SECONDS)
            except queue.Empty:
                raise TimeoutError(f"{model}: {len(times)} of {tokens} responses after {TIMEOUT_SECONDS:.0f}s") from None
            if error is not None:
                raise ValueError(f"{model} over a gRPC stream: {error}")
            times.append(at)
            final = result.get_response().parameters.get("triton_final_response")
            if (final is not None and final.bool_param) or (not empty_final and len(times) == tokens):
                break
        return Reply(sent, times[0], times[-1], len(times))

    def generate(self, model: str, tokens: int | None, *, stream: bool) -> Reply:
        """POST generate (one JSON answer) or generate_stream (server-sent events, read to the end)."""
        if self._http is None:
            host, _, port = self._http_address.rpartition(":")
            self._http = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_SECONDS)
        body: dict[str, Any] = {"text_input": TEXT_INPUT}
        if tokens is not None:
            body["max_tokens"] = tokens
        path = f"/v2/models/{model}/generate_stream" if stream else f"/v2/models/{model}/generate"
        sent = time.monotonic_ns()
        try:
            self._http.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
            resp = self._http.getresponse()
            if resp.status != 200:
                raise ValueError(f"{model} {path}: HTTP {resp.status} {resp.read()[:200]!r}")
            times: list[int] = []
            events: list[Any] = []
            if stream:
                while line := resp.readline():
                    if line.startswith(b"data:"):
                        times.append(time.monotonic_ns())
                        events.append(json.loads(line[5:]))
            else:
                events.append(json.loads(resp.read()))
                times.append(time.monotonic_ns())
            last = time.monotonic_ns()
        except (OSError, http.client.HTTPException):
            self._http.close()  # a broken keep-alive connection is not reused
            self._http = None
            raise
        bad = [e for e in events if "error" in e or "text_output" not in e]
        if not events or bad:
            raise ValueError(f"{model} {path} answered {bad or 'nothing'}")
        return Reply(sent, times[0], last, len(times))

    def close(self) -> None:
        try:
            self.stop_stream()
        except Exception as e:  # closing is best effort; the server may be gone
            log.debug("closing the gRPC stream: %s", e)
        if self._http is not None:
            self._http.close()
        for c in self._clients.values():
            try:
                c.close()
            except Exception as e:  # closing is best effort; the server may be gone
                log.debug("closing client: %s", e)


def _send(clients: InferenceClients, key: Key, request_id: str, counts: TrafficCounts,
          lock: threading.Lock) -> None:
    protocol, model = key
    with lock:
        counts.sent[key] += 1
    try:
        clients.infer(protocol, model, request_id)
    except Exception as e:  # any failure is counted, not raised: the caller compares counts
        with lock:
            counts.failed[key] += 1
            counts.last_error = f"{protocol} {model}: {e}"
        return
    with lock:
        counts.succeeded[key] += 1


def send_requests(http_address: str, grpc_address: str, plan: Mapping[Key, int],
                  concurrency: int = 4, id_prefix: str = "") -> TrafficCounts:
    """Send exactly plan[(protocol, model)] requests each, interleaved, from `concurrency` threads."""
    jobs: list[tuple[Key, int]] = []
    queues = [[(k, i) for i in range(n)] for k, n in sorted(plan.items())]
    for batch in itertools.zip_longest(*queues):
        jobs.extend(j for j in batch if j is not None)
    counts = TrafficCounts()
    lock = threading.Lock()
    it = iter(jobs)

    def worker() -> None:
        clients = InferenceClients(http_address, grpc_address)
        try:
            while True:
                with lock:
                    job = next(it, None)
                if job is None:
                    return
                (protocol, model), i = job
                _send(clients, (protocol, model), f"{id_prefix}{protocol}-{model}-{i}", counts, lock)
        finally:
            clients.close()

    threads = [threading.Thread(target=worker, name=f"traffic-{n}", daemon=True)
               for n in range(max(1, min(concurrency, len(jobs))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def plan_for(n: int, protocols: Iterable[str] = PROTOCOLS, models: Iterable[str] = (MODEL, ENSEMBLE)) -> dict[Key, int]:
    """n requests for every (protocol, model)."""
    return {(p, m): n for p in protocols for m in models}


class TrafficDriver:
    """Background traffic at `rate` requests/s in total, cycling over protocols and models."""

    def __init__(self, http_address: str, grpc_address: str, rate: float,
                 protocols: Sequence[str] = PROTOCOLS, models: Sequence[str] = (MODEL, ENSEMBLE),
                 concurrency: int = 4, extra: Sequence[Key] = ()) -> None:
        """`extra`: more (protocol, model) pairs in the cycle, e.g. STREAM_TRAFFIC."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.http_address, self.grpc_address = http_address, grpc_address
        self.rate = rate
        self.cycle: list[Key] = [(p, m) for m in models for p in protocols] + list(extra)
        self.concurrency = concurrency
        self._counts = TrafficCounts()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next = 0
        self._t0 = 0.0

    @property
    def counts(self) -> TrafficCounts:
        with self._lock:
            return self._counts.copy()

    def start(self) -> TrafficDriver:
        self._t0 = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, name=f"traffic-{n}", daemon=True)
                         for n in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def _take(self) -> tuple[int, float]:
        with self._lock:
            k = self._next
            self._next += 1
            due = self._t0 + k / self.rate
            now = time.monotonic()
            if now - due > 1.0:
                # far behind (server slow or paused): drop the backlog instead of bursting
                self._t0 += now - due
                due = now
            return k, due

    def _worker(self) -> None:
        clients = InferenceClients(self.http_address, self.grpc_address)
        try:
            while not self._stopping.is_set():
                k, due = self._take()
                delay = due - time.monotonic()
                if delay > 0 and self._stopping.wait(delay):
                    return
                key = self.cycle[k % len(self.cycle)]
                _send(clients, key, f"{key[0]}-{key[1]}-{k}", self._counts, self._lock)
        finally:
            clients.close()

    def stop(self) -> TrafficCounts:
        self._stopping.set()
        for t in self._threads:
            t.join(timeout=30)
        return self.counts
