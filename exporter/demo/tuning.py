"""Real-Triton tuning scenarios: a model config and a load that provoke one `diagnose` rule,
then the change the finding prints, applied to config.pbtxt, a reload, and the same load.

Used by bench/advisor_before_after.py (all scenarios, side by side) and by the real-Triton
test of `diagnose`. Loads are short and bounded (a few hundred requests).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnose import Evidence, Finding, Thresholds, diagnose
from ..diagnose.evidence_inputs import evidence_from_groups, triton_configs
from ..diagnose.rules import measure
from ..summary import Progress, collect
from .launcher import TritonServer

SLEEP_MODEL = '''\
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """OUT = IN, after sleeping SLEEP_S per execution (a batch sleeps once)."""

    def execute(self, requests):
        time.sleep({sleep})
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]))
        return out
'''

CONFIG = '''\
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
{batching}instance_group [ {{ count: {count} kind: KIND_CPU }} ]
'''


ENSEMBLE_CONFIG = '''\
name: "{name}"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
ensemble_scheduling {{ step [
{steps}
] }}
'''
ENSEMBLE_STEP = '  {{ model_name: "{model}" model_version: -1 input_map {{ key: "IN" value: "{src}" }} ' \
    'output_map {{ key: "OUT" value: "{dst}" }} }}'


@dataclass(frozen=True)
class Scenario:
    name: str  # also the model's name
    rule: str  # the rule it provokes
    sleep: float  # seconds per execution
    max_batch_size: int
    dims: int  # FP32 elements per request
    delay_us: int | None  # dynamic_batching max_queue_delay_microseconds; None: no dynamic batching
    count: int  # instances
    concurrency: int  # closed loop: requests in flight
    rate: float  # open loop: requests per second (0: closed loop)
    requests: int
    metric: str  # the number the finding promises to move
    shared_memory: bool = False  # tensors through system shared memory instead of the HTTP body
    steps: tuple[str, ...] = ()  # an ensemble of these models (each a Scenario), in order

    def config(self) -> str:
        if self.steps:
            names = ["IN", *(f"between_{i}" for i in range(1, len(self.steps))), "OUT"]
            steps = ",\n".join(ENSEMBLE_STEP.format(model=m, src=names[i], dst=names[i + 1])
                               for i, m in enumerate(self.steps))
            return ENSEMBLE_CONFIG.format(name=self.name, dims=self.dims, steps=steps)
        batching = "" if self.delay_us is None else \
            f"dynamic_batching {{ max_queue_delay_microseconds: {self.delay_us} }}\n"
        dims = f"{self.dims}"
        return CONFIG.format(name=self.name, max_batch_size=self.max_batch_size, dims=dims,
                             batching=batching, count=self.count)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    # one instance, 20 ms per request, 8 clients: seven of them wait
    Scenario("sleepy", "queue_saturated", 0.02, 0, 4, None, 1, 8, 0.0, 240, "queue_p95"),
    # the same, a model that could batch 8 but has no dynamic batching
    Scenario("unbatched", "no_dynamic_batching", 0.02, 8, 4, None, 1, 8, 0.0, 240, "mean_batch_size"),
    # batches of up to 16 wait 200 ms to fill while a request arrives every 25 ms
    Scenario("patient", "queue_delay_too_long", 0.002, 16, 4, 200_000, 1, 0, 40.0, 120, "queue_p95"),
    # healthy: one client at a time, 5 ms of compute; nothing to change
    Scenario("calm", "", 0.005, 0, 4, None, 1, 1, 0.0, 40, "end_to_end_mean"),
    # a two-step ensemble whose second step takes 20 of its 21 ms
    Scenario("prep", "", 0.001, 0, 4, None, 1, 1, 0.0, 0, ""),
    Scenario("heavy", "", 0.02, 0, 4, None, 1, 1, 0.0, 0, ""),
    Scenario("pipeline", "ensemble_step_dominates", 0.0, 0, 4, None, 1, 1, 0.0, 30, "dominant_step_share",
             steps=("prep", "heavy")),
    # 4 MiB in and out, no compute: moving the bytes is the request
    Scenario("bulky", "frontend_payload", 0.0, 0, 1 << 20, None, 1, 1, 0.0, 60, "frontend_share"),
)}


def write_model(repo: Path, s: Scenario) -> Path:
    d = repo / s.name
    (d / "1").mkdir(parents=True, exist_ok=True)  # an ensemble's stays empty
    if not s.steps:
        (d / "1" / "model.py").write_text(SLEEP_MODEL.format(sleep=s.sleep))
    (d / "config.pbtxt").write_text(s.config())
    return d / "config.pbtxt"


def apply_config(text: str, changes: dict[str, Any]) -> str:
    """config.pbtxt with a finding's dotted keys set (the keys the rules print)."""
    for key, value in changes.items():
        if key == "instance_group.count":
            text, n = re.subn(r"(instance_group\s*\[\s*\{[^}]*?count:\s*)\d+", rf"\g<1>{value}", text)
        elif key == "dynamic_batching.max_queue_delay_microseconds":
            text, n = re.subn(r"(max_queue_delay_microseconds:\s*)\d+", rf"\g<1>{value}", text)
            if not n:
                text, n = text + f"dynamic_batching {{ max_queue_delay_microseconds: {value} }}\n", 1
        elif key == "max_batch_size":
            text, n = re.subn(r"(max_batch_size:\s*)\d+", rf"\g<1>{value}", text)
        else:
            raise ValueError(f"no way to apply {key}")
        if not n:
            raise ValueError(f"{key} not found in the config")
    return text


def start_server(workdir: Path, scenarios: list[Scenario]) -> TritonServer:
    """A Triton with the scenarios' models, explicit model control (reload through the API)."""
    repo = workdir / "models"
    models = {m: SCENARIOS[m] for s in scenarios for m in s.steps} | {s.name: s for s in scenarios}
    for s in models.values():
        write_model(repo, s)
    args = ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)]
    # files are written only when flushed: each phase reads its own
    return TritonServer(repo, workdir, trace_file=workdir / "traces" / "trace.json", log_frequency=1_000_000,
                        extra_args=args).start()


def reload(server: TritonServer, model: str) -> None:
    req = urllib.request.Request(f"{server.http_url}/v2/repository/models/{model}/load", data=b"{}",
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def run_load(server: TritonServer, s: Scenario) -> float:
    """The scenario's requests over HTTP (binary tensors); the seconds they took."""
    import tritonclient.http as httpclient

    local = threading.local()
    data = np.ones(s.dims if s.max_batch_size == 0 else (1, s.dims), dtype=np.float32)
    regions = SharedTensors(server, s.name, data, s.concurrency) if s.shared_memory else None

    def one(_: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpclient.InferenceServerClient(url=server.http_address,
                                                                      network_timeout=60.0)
            local.slot = regions.take() if regions is not None else None
        inp = httpclient.InferInput("IN", list(data.shape), "FP32")
        out = httpclient.InferRequestedOutput("OUT", binary_data=True)
        if local.slot is not None:
            inp.set_shared_memory(f"{local.slot}_in", data.nbytes)
            out.set_shared_memory(f"{local.slot}_out", data.nbytes)
        else:
            inp.set_data_from_numpy(data, binary_data=True)
        client.infer(s.name, [inp], outputs=[out])

    t0 = time.monotonic()
    try:
        _drive(s, one, t0)
    finally:
        if regions is not None:
            regions.close()
    return time.monotonic() - t0


def _drive(s: Scenario, one: Callable[[int], None], t0: float) -> None:
    if s.rate:
        with ThreadPoolExecutor(16) as pool:
            futures = []
            for i in range(s.requests):
                time.sleep(max(0.0, t0 + i / s.rate - time.monotonic()))
                futures.append(pool.submit(one, i))
            for f in futures:
                f.result()
    else:
        with ThreadPoolExecutor(s.concurrency) as pool:
            list(pool.map(one, range(s.requests)))


class SharedTensors:
    """One input and one output region of system shared memory per client thread, registered with Triton."""

    def __init__(self, server: TritonServer, prefix: str, data: np.ndarray[Any, Any], slots: int) -> None:
        import tritonclient.http as httpclient
        import tritonclient.utils.shared_memory as shm

        self._shm = shm
        self._client = httpclient.InferenceServerClient(url=server.http_address)
        self._free = [f"{prefix}{i}" for i in range(slots)]
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._lock = threading.Lock()
        for slot in self._free:
            for part in ("in", "out"):
                name = f"{slot}_{part}"
                h = shm.create_shared_memory_region(name, f"/{name}", data.nbytes)
                self._handles.append(h)
                self._names.append(name)
                if part == "in":
                    shm.set_shared_memory_region(h, [data])
                self._client.register_system_shared_memory(name, f"/{name}", data.nbytes)

    def take(self) -> str:
        with self._lock:
            return self._free.pop()

    def close(self) -> None:
        for name in self._names:
            self._client.unregister_system_shared_memory(name)
        for h in self._handles:
            self._shm.destroy_shared_memory_region(h)
        self._client.close()


def traced(files: list[Path], model: str) -> int:
    return sum(f.read_bytes().count(f'"model_name":"{model}"'.encode()) for f in files)


@dataclass
class Phase:
    evidence: Evidence
    findings: list[Finding]
    seconds: float  # the load took
    files: list[Path]  # this phase's trace files


def measure_phase(server: TritonServer, s: Scenario, seen: set[Path], t: Thresholds) -> Phase:
    """Run the load, collect this phase's trace files only; the model's evidence and findings."""
    seconds = run_load(server, s)
    deadline = time.monotonic() + 20
    while True:  # Triton releases a trace a moment after its response
        server.flush_traces()
        new = [p for p in server.trace_files() if p not in seen]
        if traced(new, s.name) >= s.requests or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    seen.update(new)
    groups, _ = collect([str(p) for p in new], [s.name, *s.steps], Progress(0, False), shapes=True)
    configs = triton_configs(server.http_address, sorted({(m, v) for m, v, _ in groups}))
    [e] = [x for x in evidence_from_groups(groups, configs) if x.model == s.name]
    return Phase(e, diagnose([e], t), seconds, new)


@dataclass
class BeforeAfter:
    scenario: Scenario
    before: Phase
    after: Phase
    finding: Finding | None  # the scenario's rule, as diagnose printed it before

    def value(self, metric: str, which: str) -> float | None:
        return measure((self.before if which == "before" else self.after).evidence, metric)

    def moved(self, metric: str, direction: str) -> bool:
        a, b = self.value(metric, "before"), self.value(metric, "after")
        return a is not None and b is not None and (b < a if direction == "down" else b > a)


def shared_memory_client(s: Scenario) -> Scenario:
    """The client change the frontend_payload and copy_bound findings print: shared memory, not the socket."""
    return replace(s, shared_memory=True)


def before_after(server: TritonServer, s: Scenario, seen: set[Path], t: Thresholds,
                 client_change: Callable[[Scenario], Scenario] = shared_memory_client) -> BeforeAfter:
    """Load, diagnose, apply the printed config change (or the client change), reload, load again."""
    before = measure_phase(server, s, seen, t)
    finding = next((f for f in before.findings if f.rule == s.rule), None)
    after_s = s
    if finding is not None and finding.config:
        path = server.model_repository / s.name / "config.pbtxt"
        path.write_text(apply_config(path.read_text(), finding.config))
        reload(server, s.name)
    elif finding is not None:
        after_s = client_change(s)
    return BeforeAfter(s, before, measure_phase(server, after_s, seen, t), finding)
