"""Error edges: which failure `serve` names how, the check layout, and the one poll loop."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from exporter.polling import PollThread

SERVE = [sys.executable, "-m", "exporter.cli", "serve", "--triton", "none", "--ebpf", "off"]


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_a_taken_port_is_reported_as_the_listen_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*SERVE, "--state-dir", str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60)
    line = _one_line_error(r)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--listen" in line, line


def test_a_state_dir_failure_keeps_its_own_message(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    state = blocker / "state"
    (tmp_path / "trace.json").write_text("")
    r = subprocess.run([*SERVE, "--state-dir", str(state), "--trace-file", str(tmp_path / "trace.json"),
                        "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    line = _one_line_error(r)
    assert "cannot listen" not in line, line
    assert str(state) in line, line


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_source_checks_import_without_the_check_command() -> None:
    # no cycle: a source's checks need only the leaf CheckResult module, never exporter.check
    r = _python("import sys, exporter.ebpf.check, exporter.triton.check, exporter.traces.check\n"
                "assert 'exporter.check' not in sys.modules, 'cycle back into exporter.check'")
    assert r.returncode == 0, r.stderr


def test_a_broken_check_module_fails_instead_of_vanishing() -> None:
    r = _python("import sys; sys.modules['exporter.triton.check'] = None\nimport exporter.check")
    assert r.returncode != 0 and "import of exporter.triton.check halted" in r.stderr, r.stderr


def test_check_runs_every_source() -> None:
    from exporter.check import CHECKS

    assert [c.__name__ for c in CHECKS] == ["config_check", "trace_checks", "triton_checks", "ebpf_checks"]


def test_poll_thread_counts_every_failure_and_keeps_polling(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    errors: list[str] = []
    done = threading.Event()

    def poll() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("disk on fire")
        done.set()

    log = logging.getLogger("test-poll")
    t = PollThread("test-poll", poll, 0.0, errors.append, log)
    with caplog.at_level(logging.ERROR, logger="test-poll"):
        t.start()
        assert done.wait(10), "the loop stopped after a failure"
        t.stop(timeout=5)
    assert not t.is_alive()
    assert t.first_poll_done.is_set()
    assert errors == ["poll_failed"] * 3
    # one traceback for one recurring failure: the counter says how often
    assert [r.getMessage() for r in caplog.records].count("test-poll poll failed; retrying every 0.05s") == 1
    assert caplog.records[0].exc_info is not None
