"""Inference traffic to the example models over HTTP and gRPC, with exact counts.

`send_requests` sends a fixed number of requests per (protocol, model) and returns what
was sent and what succeeded; `TrafficDriver` keeps a target rate in the background
(demo, benchmarks). Both count per (protocol, model), so a test can compare the
exporter's counts with what it really sent.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .launcher import ENSEMBLE, MODEL

log = logging.getLogger("demo.traffic")

PROTOCOLS = ("http", "grpc")
Key = tuple[str, str]  # (protocol, model)


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

    def infer(self, protocol: str, model: str, request_id: str) -> None:
        """One add_sub-shaped request; raises if it fails or the answer is wrong."""
        mod = self._mods[protocol]
        a = self._rng.random((1, 4), dtype=np.float32)
        b = self._rng.random((1, 4), dtype=np.float32)
        inputs = [mod.InferInput("INPUT0", [1, 4], "FP32"), mod.InferInput("INPUT1", [1, 4], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = self._clients[protocol].infer(model, inputs, request_id=request_id)
        out = result.as_numpy("OUTPUT0")
        if out is None or not np.allclose(out, a + b):
            raise ValueError(f"{model} over {protocol} answered {out!r} for {a!r} + {b!r}")

    def close(self) -> None:
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
                 concurrency: int = 4) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.http_address, self.grpc_address = http_address, grpc_address
        self.rate = rate
        self.cycle: list[Key] = [(p, m) for m in models for p in protocols]
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
