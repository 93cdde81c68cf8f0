"""`summary --format trace_summary`: the `Data Flow:` block against a plain json.load computation
of trace_summary.py's rules (tests/reference.py), on real Triton 2.51 files: tensor-level
(single model and ensemble), ensembles without tensors, and UINT8/BYTES tensors that Triton
writes unescaped (the script cannot read those files; ours prints their raw data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import main
from tests import reference
from tests.conftest import ROLLING_TRACES, SAMPLES

TENSOR_FILES = sorted((SAMPLES / "triton-2.51" / "tensors").iterdir())


def block(out: str) -> str:
    return out[out.index("Data Flow:"):] if "Data Flow:" in out else ""


@pytest.mark.parametrize("show_trace", [False, True], ids=["streamed", "whole-file"])
@pytest.mark.parametrize("path", [*TENSOR_FILES, *sorted(ROLLING_TRACES.iterdir())], ids=lambda p: p.name)
def test_data_flow_equals_the_plain_computation(path: Path, show_trace: bool,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--format", "trace_summary", *(["-t"] if show_trace else []), str(path)]) == 0
    out = capsys.readouterr().out
    want = reference.dataflow(str(path))
    assert block(out) == want
    if path in TENSOR_FILES:
        assert "QUEUE_INPUT:" in want and "BACKEND_OUTPUT:" in want


def test_tensor_data_triton_wrote_unescaped_is_printed_raw(capsys: pytest.CaptureFixture[str]) -> None:
    path = SAMPLES / "triton-2.51" / "outcomes" / "trace.json.1"  # tensor_echo: UINT8 and BYTES
    assert main(["summary", "--format", "trace_summary", str(path)]) == 0
    flow = block(capsys.readouterr().out)
    assert flow.startswith("Data Flow:\n\t" + "=" * 50 + "\n\tName:   tensor_echo\n\tVersion:1\n")
    assert flow.count("QUEUE_INPUT:") == 2 and flow.count("BACKEND_OUTPUT:") == 2
    assert '\t\tTEXT: \\"he said "hi"\n' in flow
