"""diagnose end to end on a real Triton: a dynamic-batching delay far above the arrival gap
is named with its numbers, the printed change applied to config.pbtxt and reloaded cuts the
queue p95; a healthy, lightly loaded model has no finding and exit code 0; an ensemble's
slow step is named.

The longer before/after of every scenario is bench/advisor_before_after.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.demo.launcher import TritonServer
from exporter.demo.tuning import SCENARIOS, apply_config, measure_phase, reload, start_server
from exporter.diagnose import Thresholds
from exporter.diagnose.rules import measure

pytestmark = pytest.mark.triton

CALM, PATIENT, PIPELINE = SCENARIOS["calm"], SCENARIOS["patient"], SCENARIOS["pipeline"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    s = start_server(tmp_path_factory.mktemp("advisor"), [CALM, PATIENT, PIPELINE])
    try:
        yield s
    finally:
        s.stop()


def diagnose_cli(files: list[Path], triton: TritonServer) -> tuple[int, dict[str, object]]:
    r = subprocess.run([sys.executable, "-m", "exporter.cli", "diagnose", "--format", "json",
                        "--triton", triton.http_address, *map(str, files)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_healthy_model_exit_0(server: TritonServer) -> None:
    phase = measure_phase(server, CALM, set(server.trace_files()), Thresholds())
    code, doc = diagnose_cli(phase.files, server)
    [model] = doc["models"]  # type: ignore[index]
    assert model["model"] == CALM.name and model["requests"] == CALM.requests
    assert model["findings"] == [] and code == 0


def test_ensemble_step_named(server: TritonServer) -> None:
    """Child traces are joined to their ensemble: the 20 ms step is named with its share."""
    phase = measure_phase(server, PIPELINE, set(server.trace_files()), Thresholds())
    steps = phase.evidence.steps
    assert set(steps) == {"prep", "heavy"}
    assert steps["heavy"] >= 0.02 and steps["prep"] < steps["heavy"] / 4
    [f] = [x for x in phase.findings if x.rule == "ensemble_step_dominates"]
    assert "step heavy" in f.summary and f.numbers["step_share"] >= Thresholds().ensemble_step_share


def test_long_delay_found_fixed_and_checked(server: TritonServer) -> None:
    seen = set(server.trace_files())
    t = Thresholds()
    before = measure_phase(server, PATIENT, seen, t)
    code, doc = diagnose_cli(before.files, server)
    [model] = doc["models"]  # type: ignore[index]
    assert code == 1 and [f["rule"] for f in model["findings"]] == ["queue_delay_too_long"]
    [f] = model["findings"]
    gap = f["numbers"]["arrival_gap_seconds"]
    assert 0.02 < gap < 0.03  # the load's 40 requests/s
    assert f["numbers"]["max_queue_delay_seconds"] == 0.2
    assert f["config"] == {"dynamic_batching.max_queue_delay_microseconds": round(gap * 1e6)}
    assert f"max_queue_delay_microseconds: {round(gap * 1e6)}" in f["change"]

    # apply exactly what the CLI printed, reload, run the same load
    path = server.model_repository / PATIENT.name / "config.pbtxt"
    path.write_text(apply_config(path.read_text(), f["config"]))
    reload(server, PATIENT.name)
    after = measure_phase(server, PATIENT, seen, t)
    assert after.evidence.config is not None
    assert after.evidence.config.max_queue_delay_seconds == round(gap * 1e6) / 1e6  # Triton runs the new config
    for x in f["expect"]:  # every number the finding promised moved as promised
        was, now = measure(before.evidence, x["metric"]), measure(after.evidence, x["metric"])
        assert was == x["before"] and now is not None
        assert (now < was) if x["direction"] == "down" else (now > was), (x, now)
    assert after.evidence.queue_p95 is not None and before.evidence.queue_p95 is not None
    assert after.evidence.queue_p95 < before.evidence.queue_p95 / 2  # waits of up to 200 ms become about one gap
    assert after.findings == []
