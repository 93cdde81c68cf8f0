"""The Triton launcher's failure paths: a clear error with Triton's log tail, nothing left running."""

from __future__ import annotations

import socket
from importlib.resources import files
from pathlib import Path

import pytest

from exporter.demo.launcher import UNARY_MODELS, TritonError, TritonServer, copy_model_repository


@pytest.mark.triton
def test_broken_model_gives_error_with_log_tail(tmp_path: Path) -> None:
    repo = copy_model_repository(tmp_path, UNARY_MODELS)
    (repo / "add_sub" / "config.pbtxt").write_text("name: \"add_sub\"\nbackend: \"python\"\nthis is not a config\n")
    server = TritonServer(repo, tmp_path)
    with pytest.raises(TritonError) as e:
        server.start()
    msg = str(e.value)
    assert msg.startswith("tritonserver exited during startup")
    assert str(server.log_path) in msg
    assert "add_sub" in msg  # the tail of Triton's own log says which model failed
    assert not server.running()


@pytest.mark.triton
def test_taken_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = TritonServer(copy_model_repository(tmp_path, UNARY_MODELS), tmp_path, http_port=port)
        with pytest.raises(TritonError, match="port is already in use"):
            server.start()
        assert not server.running()


@pytest.mark.triton
def test_restart_keeps_ports_and_trace_path(tmp_path: Path) -> None:
    trace = tmp_path / "traces" / "trace.json"
    with TritonServer(copy_model_repository(tmp_path, UNARY_MODELS), tmp_path, trace_file=trace) as server:
        ports, pid = (server.http_port, server.grpc_port, server.metrics_port), server.pid
        server.restart()
        assert (server.http_port, server.grpc_port, server.metrics_port) == ports
        assert server.pid != pid and server.running()
        assert server.trace_file == trace
    assert not server.running()


def test_streaming_models_share_one_implementation() -> None:
    """token_stream and token_stream_thread differ only in their config's send_from parameter."""
    models = files("exporter") / "demo_models"
    execute = (models / "token_stream" / "1" / "token_stream.py").read_text()
    thread = (models / "token_stream_thread" / "1" / "token_stream_thread.py").read_text()
    assert execute == thread
    assert 'string_value: "execute"' in (models / "token_stream" / "config.pbtxt").read_text()
    assert 'string_value: "thread"' in (models / "token_stream_thread" / "config.pbtxt").read_text()
