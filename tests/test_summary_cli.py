"""`summary` formats: trace_summary.py's layout with numbers from the independent reference,
the timeline, and user errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.stages import SEGMENT_ORDER
from tests import reference, tracegen
from tests.conftest import ROLLING_TRACES

SAMPLES = ROLLING_TRACES

LINES = {  # trace_summary.py line label -> reference stage
    "HTTP infer request": "http_infer", "\tReceive": "http_recv", "GRPC infer request": "grpc_infer",
    "\tHandler": "request", "\t\tQueue": "queue", "\t\tCompute": "compute", "\t\t\tInput": "compute_input",
    "\t\t\tInfer": "compute_infer", "\t\t\tOutput": "compute_output",
}


@pytest.mark.parametrize("path", sorted(SAMPLES.iterdir()), ids=lambda p: p.name)
def test_trace_summary_layout_and_numbers(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--format", "trace_summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"File: {path}\n")
    want = reference.stage_stats([str(path)])
    sections = re.split(r"^Summary for ", out, flags=re.M)[1:]
    assert sections, out
    for sec in sections:
        head = re.match(r"(\S+) \((\S+)\): trace count = (\d+)", sec)
        assert head is not None
        model, version, cnt = head.group(1), head.group(2), int(head.group(3))
        protocol = "grpc" if "GRPC infer request" in sec else "http"
        assert cnt == want["traces"][(model, version, protocol)]
        for label, stage in LINES.items():
            m = re.search(rf"^{re.escape(label)} \(avg\): (\S+)us$", sec, flags=re.M)
            if m is None:
                continue
            total = want["stages"].get((model, version, protocol, stage), [0, 0])[1]
            assert m.group(1) == str(total / (cnt * 1000)), (label, sec)


def test_show_trace_prints_each_trace_with_gaps(capsys: pytest.CaptureFixture[str]) -> None:
    path = SAMPLES / "trace.json.4"
    assert main(["summary", "--format", "trace_summary", "-t", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\tid: ") == sum(reference.stage_stats([str(path)])["traces"].values())
    gaps = re.findall(r"^\t\t(-?[\d.]+)us$", out, flags=re.M)
    assert gaps and all(float(g) >= 0 for g in gaps)  # timestamps printed in time order


def test_timeline_segments_add_up_to_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "t.json"
    tracegen.write_file(str(f), tracegen.traces(200, seed=3))
    assert main(["summary", "--timeline", str(f)]) == 0
    out = capsys.readouterr().out
    assert main(["summary", "--format", "json", str(f)]) == 0
    groups = {(g["model"], g["protocol"]): g for g in json.loads(capsys.readouterr().out)["groups"]}
    blocks = [b for b in out.strip().split("\n\n") if b.strip()]
    assert len(blocks) == len(groups)
    for block in blocks:
        model, protocol = re.match(r"(\S+) \(version \S+\) over (\w+):", block).groups()  # type: ignore[union-attr]
        rows = re.findall(r"^  ([a-z_]+)\s+([\d.]+)\s+([\d.]+)%\s+\|", block, flags=re.M)
        names = [r[0] for r in rows]
        assert names == [s for s in SEGMENT_ORDER if s in names]  # request order
        total = float(re.search(r"^  end_to_end\s+([\d.]+)", block, flags=re.M).group(1))  # type: ignore[union-attr]
        assert sum(float(r[1]) for r in rows) == pytest.approx(total, abs=0.005)
        e2e = groups[(model, protocol)]["stages"]["end_to_end"]["mean"] * 1e3
        assert total == pytest.approx(e2e, abs=0.0005)
        assert sum(float(r[2]) for r in rows) == pytest.approx(100, abs=0.3)


def test_table_and_model_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "t.json"
    tracegen.write_file(str(f), tracegen.traces(90, models=("a", "b", "c")))
    assert main(["summary", "--model", "b", str(f)]) == 0
    out = capsys.readouterr().out
    assert "b (version 1) over http" in out and "a (version" not in out
    assert re.search(r"^  request\s+15 ", out, flags=re.M)


def test_missing_file_is_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "exporter.cli", "summary", str(tmp_path / "nope.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope.json" in r.stderr and "Traceback" not in r.stderr
