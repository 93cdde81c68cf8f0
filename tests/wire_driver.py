"""Driving a real Triton while `tcp-events --record` runs, and joining what both wrote.

Shared by tests/test_wire_real.py and bench/wire_frontend.py: clients that stamp
time.monotonic_ns() at send and at receipt (the clock Triton and the kernel stamp with),
each request tagged with its `id` so its trace can be found by request_id.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.demo.launcher import TritonServer
from exporter.stages import PROTOCOLS
from exporter.summary import Progress, iter_batches
from exporter.wire.join import Request, Wire, join
from exporter.wire.requests import requests_of
from exporter.wire.turns import Turn, latest, read_turns


@dataclass
class Sent:
    request_id: str
    port: int  # the client's local port: the connection's remote port for the server
    send_ns: int  # just before the request's first byte is written
    receipt_ns: int  # just after the response's last byte was read


class Recorder:
    """`inference-profiler tcp-events --record FILE` as a subprocess, until stop()."""

    def __init__(self, exporter: list[str], path: Path, ports: list[int]) -> None:
        self.path = path
        args = [*exporter, "tcp-events", "--record", str(path)]
        for p in ports:
            args += ["--port", str(p)]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "recording socket turns" not in line:
            self.proc.kill()
            raise AssertionError(f"tcp-events --record did not start: {line}{self.proc.stderr.read()}")

    def stop(self) -> str:
        time.sleep(0.3)  # the last ACKs, and a poll interval
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return err


def infer_body(request_id: str, values: int = 4, batch: int = 1) -> bytes:
    data = [1.0] * (values * batch)
    return json.dumps({"id": request_id, "inputs": [
        {"name": "INPUT0", "shape": [batch, values], "datatype": "FP32", "data": data},
        {"name": "INPUT1", "shape": [batch, values], "datatype": "FP32", "data": data}]}).encode()


def timed_infer(conn: http.client.HTTPConnection, model: str, rid: str, payload: bytes) -> Sent:
    """One HTTP infer on conn, bracketed by the client's CLOCK_MONOTONIC at send and at receipt."""
    t0 = time.monotonic_ns()
    conn.request("POST", f"/v2/models/{model}/infer", payload)
    resp = conn.getresponse()
    resp.read()
    t1 = time.monotonic_ns()
    assert resp.status == 200, resp.status
    return Sent(rid, conn.sock.getsockname()[1], t0, t1)


def http_clients(triton: TritonServer, clients: int, per_client: int, keep_alive: bool, prefix: str = "r",
                 body_of: Callable[[str], bytes] = infer_body, model: str = "add_sub") -> list[Sent]:
    """`clients` threads, each sending `per_client` requests, on one connection each
    (keep_alive) or a new connection per request."""
    out: list[Sent] = []
    lock = threading.Lock()

    def run(c: int) -> None:
        conn: http.client.HTTPConnection | None = None
        mine: list[Sent] = []
        for k in range(per_client):
            rid = f"{prefix}{c}-{k}"
            payload = body_of(rid)
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", triton.http_port, timeout=60)
                conn.connect()
            mine.append(timed_infer(conn, model, rid, payload))
            if not keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@dataclass
class Joined:
    request_id: str | None
    protocol: str
    result: str
    request: Request
    wire: Wire | None
    stamps: dict[str, int]


def joined_requests(trace_files: list[Path], turns_file: Path, ports: dict[str, frozenset[int]]) -> list[Joined]:
    """Every usable top-level trace of the files, joined with the recorded turns."""
    with turns_file.open() as fp:
        turns: list[Turn] = latest(read_turns(fp))
    reqs: list[Request] = []
    meta: list[tuple[str | None, str, dict[str, int]]] = []
    from exporter.stages import COLUMN
    for batch, codes in iter_batches([str(p) for p in trace_files], Counter(), Progress(0, False)):
        rows = np.flatnonzero(batch.usable(lambda _r, _n: None) & (batch.parents < 0))
        if not len(rows):
            continue
        an = batch.anatomy(rows)
        reqs.extend(requests_of(batch.stamps[rows], codes[rows], an))
        for i in rows.tolist():
            stamps = {n: int(batch.stamps[i, c]) for n, c in COLUMN.items() if batch.stamps[i, c] >= 0}
            meta.append((batch.request_ids[i], PROTOCOLS[int(codes[i])], stamps))
    return [Joined(rid, proto, result, req, w, stamps)
            for (rid, proto, stamps), req, (result, w) in zip(meta, reqs, join(reqs, turns, ports), strict=True)]


def grpc_clients(triton: TritonServer, clients: int, per_client: int, prefix: str, stream_model: str | None = None,
                 tokens: int = 4, own_connection: bool = False) -> int:
    """`clients` threads of gRPC requests, each with its own client: unary add_sub, or (stream_model)
    requests on one open stream per client. gRPC shares one connection between the channels of a
    process unless `own_connection`. Returns the number of requests answered."""
    import queue

    import tritonclient.grpc as grpcclient

    done = [0] * clients
    args = [("grpc.use_local_subchannel_pool", 1)] if own_connection else None

    def run(c: int) -> None:
        cl = grpcclient.InferenceServerClient(triton.grpc_address, channel_args=args)
        replies: queue.Queue[object] = queue.Queue()
        if stream_model:
            cl.start_stream(callback=lambda result, error: replies.put(error or result))
        try:
            for k in range(per_client):
                rid = f"{prefix}{c}-{k}"
                if stream_model:
                    text = grpcclient.InferInput("text_input", [1], "BYTES")
                    text.set_data_from_numpy(np.array([b"wire"], dtype=np.object_))
                    count = grpcclient.InferInput("max_tokens", [1], "INT32")
                    count.set_data_from_numpy(np.array([tokens], dtype=np.int32))
                    cl.async_stream_infer(stream_model, [text, count], request_id=rid,
                                          enable_empty_final_response=True)
                    while True:
                        r = replies.get(timeout=30)
                        assert not isinstance(r, Exception), r
                        final = r.get_response().parameters.get("triton_final_response")  # type: ignore[attr-defined]
                        if final is not None and final.bool_param:
                            break
                else:
                    a = np.ones((1, 4), dtype=np.float32)
                    inputs = [grpcclient.InferInput("INPUT0", [1, 4], "FP32"),
                              grpcclient.InferInput("INPUT1", [1, 4], "FP32")]
                    for x in inputs:
                        x.set_data_from_numpy(a)
                    cl.infer("add_sub", inputs, request_id=rid)
                done[c] += 1
        finally:
            if stream_model:
                cl.stop_stream()
            cl.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)
