"""Real-shaped synthetic Triton trace files (the object layout of Triton 2.51's rolling files).

Each trace is a header plus one object per timestamp, written in Triton's order
(not time order), HTTP or gRPC, optionally an ensemble parent with a child.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def _obj(tid: int, name: str, ns: int) -> str:
    return f'{{"id":{tid},"timestamps":[{{"name":"{name}","ns":{ns}}}]}}'


def trace_objects(tid: int, rng: random.Random, t0: int, model: str = "add_sub",
                  protocol: str = "http", parent: int | None = None) -> list[str]:
    q = rng.randint(5_000, 15_000_000)
    cin = rng.randint(20_000, 200_000)
    inf = rng.randint(1_000_000, 9_000_000)
    cout = rng.randint(10_000, 900_000)
    recv = rng.randint(5_000, 20_000)
    t = t0
    ts: dict[str, int] = {}
    if parent is None:
        if protocol == "http":
            ts["HTTP_RECV_START"] = t
            t += recv
            ts["HTTP_RECV_END"] = t
        else:
            ts["GRPC_WAITREAD_START"] = t - rng.randint(0, 2_000_000_000)
            ts["GRPC_WAITREAD_END"] = t
    t += rng.randint(20_000, 90_000)
    ts["REQUEST_START"] = t
    t += rng.randint(2_000, 15_000)
    ts["QUEUE_START"] = t
    t += q
    ts["COMPUTE_START"] = t
    t += cin
    ts["COMPUTE_INPUT_END"] = t
    t += inf
    ts["COMPUTE_OUTPUT_START"] = t
    ts["INFER_RESPONSE_COMPLETE"] = t + cout // 2
    t += cout
    ts["COMPUTE_END"] = t
    send = t - rng.randint(10_000, 60_000)
    ts["REQUEST_END"] = t + rng.randint(5_000, 30_000)
    if parent is None:
        pfx = "HTTP" if protocol == "http" else "GRPC"
        ts[f"{pfx}_SEND_START"] = send
        ts[f"{pfx}_SEND_END"] = send + rng.randint(5_000, 500_000)
    header = f'{{"id":{tid},"model_name":"{model}","model_version":1,"request_id":"{protocol}-{tid}"'
    header += f',"parent_id":{parent}}}' if parent is not None else "}"
    names = list(ts)
    objs = [_obj(tid, n, ts[n]) for n in names[:2]] + [header] + [_obj(tid, n, ts[n]) for n in names[2:]]
    return objs


def stream_objects(tid: int, rng: random.Random, t0: int, protocol: str = "grpc", from_thread: bool = False,
                   responses: int = 4, model: str = "streamer", custom: bool = False) -> list[str]:
    """A decoupled model's trace as Triton 2.51 writes it: gRPC stream sends repeat per response
    (INFER_RESPONSE_COMPLETE once); HTTP generate_stream writes its sends as 0 and one
    INFER_RESPONSE_COMPLETE per response plus a flag-only final. from_thread: execute() returns
    at once, so the request is released (REQUEST_END) before its responses."""
    stamps: list[tuple[str, int]] = []
    t = t0
    if protocol == "grpc":
        stamps += [("GRPC_WAITREAD_START", t - rng.randint(0, 10_000_000)), ("GRPC_WAITREAD_END", t)]
    else:
        stamps += [("HTTP_RECV_START", t), ("HTTP_RECV_END", t + 9_000)]
        t += 9_000
    t += rng.randint(20_000, 90_000)
    stamps.append(("REQUEST_START", t))
    t += 5_000
    stamps.append(("QUEUE_START", t))
    t += rng.randint(5_000, 2_000_000)
    stamps += [("COMPUTE_START", t), ("COMPUTE_INPUT_END", t + 30_000)]
    t += 30_000
    if from_thread:
        stamps += [("COMPUTE_OUTPUT_START", t + 20_000), ("COMPUTE_END", t + 40_000), ("REQUEST_END", t + 60_000)]
        t += 60_000
    if custom:
        stamps += [("TOKENIZE_START", t + 1_000), ("TOKENIZE_END", t + 250_000)]
    for _ in range(responses):
        t += rng.randint(200_000, 3_000_000)
        if protocol == "grpc":
            stamps += [("GRPC_SEND_START", t), ("GRPC_SEND_END", t + rng.randint(5_000, 60_000))]
        else:
            stamps += [("INFER_RESPONSE_COMPLETE", t), ("HTTP_SEND_START", 0), ("HTTP_SEND_END", 0)]
    t += 100_000
    stamps.append(("INFER_RESPONSE_COMPLETE", t))  # gRPC: once; HTTP: the flag-only final
    if not from_thread:
        stamps += [("COMPUTE_OUTPUT_START", t + 10_000), ("COMPUTE_END", t + 20_000), ("REQUEST_END", t + 30_000)]
    header = f'{{"id":{tid},"model_name":"{model}","model_version":1,"request_id":"s-{tid}"}}'
    rng.shuffle(stamps)  # Triton writes them in no particular order
    return [header] + [_obj(tid, n, ns) for n, ns in stamps]


def traces(n: int, seed: int = 1, start_id: int = 1, ensemble_every: int = 0,
           models: tuple[str, ...] = ("add_sub",), streaming_every: int = 0) -> Iterator[str]:
    """Objects of n top-level traces (plus ensemble children), as JSON object strings."""
    rng = random.Random(seed)
    tid = start_id
    t0 = 400_000_000_000
    for i in range(n):
        protocol = "http" if i % 2 == 0 else "grpc"
        model = models[i % len(models)]
        t0 += rng.randint(100_000, 3_000_000)
        if streaming_every and i % streaming_every == 1:
            yield from stream_objects(tid, rng, t0, ("http", "grpc")[i // streaming_every % 2], from_thread=i % 3 == 0,
                                      responses=rng.randint(1, 9), custom=i % 4 == 1)
            tid += 1
        elif ensemble_every and i % ensemble_every == 0:
            parent = tid
            child = tid + 1
            tid += 2
            # Triton writes the child first: it finishes before its parent
            yield from trace_objects(child, rng, t0 + 50_000, model, protocol, parent=parent)
            yield from trace_objects(parent, rng, t0, model + "_ensemble", protocol)
        else:
            yield from trace_objects(tid, rng, t0, model, protocol)
            tid += 1


def write_file(path: str, objects: list[str] | Iterator[str]) -> int:
    """A complete Triton-style file; returns its size."""
    with open(path, "w") as f:
        f.write("[")
        first = True
        for o in objects:
            if not first:
                f.write(",")
            f.write(o)
            first = False
        f.write("]")
        return f.tell()
