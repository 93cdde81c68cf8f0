"""Listening addresses: `serve --listen` and `--otlp-listen` on IPv6 and dual-stack, for real."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from exporter.listen import ListenAddressError, bind_listening, has_ipv6, parse_listen

ROOT = Path(__file__).resolve().parent.parent
ipv6 = pytest.mark.skipif(not has_ipv6() and "all" not in os.environ.get("INFPROF_REQUIRE", ""),
                          reason="this host has no IPv6 (CI requires it)")


@pytest.mark.parametrize("text, expected", [
    (":9478", ("", 9478)),
    ("0.0.0.0:9478", ("0.0.0.0", 9478)),
    ("[::]:9478", ("::", 9478)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:4318", ("localhost", 4318)),
])
def test_listen_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, words", [
    ("9478", "not HOST:PORT"),
    ("::1:9478", "needs brackets: [::1]:9478"),
    ("[::1:9478", "unclosed"),
    ("host:99999", "not HOST:PORT"),
    ("host:", "not HOST:PORT"),
])
def test_bad_listen_addresses_say_how_to_write_them(text: str, words: str) -> None:
    with pytest.raises(ListenAddressError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_listen(text)


def _answers(host: str, port: int, path: str) -> int | None:
    """The HTTP status of GET path at host:port, None when nothing accepts the connection there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            assert s.family == family
    except OSError:
        return None
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def _free_port_both() -> int:
    """A port free on IPv4 and IPv6 alike."""
    with bind_listening("", 0) as s:
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, listen: str, otlp_listen: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}
    return subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", "--triton", "none", "--ebpf", "off",
                             "--state-dir", str(tmp_path / "state"), "--listen", listen, "--otlp-listen", otlp_listen],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def _wait_ready(proc: subprocess.Popen[str], host: str, port: int) -> None:
    deadline = time.time() + 30
    while _answers(host, port, "/readyz") != 200:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.time() < deadline, "exporter never became ready"
        time.sleep(0.1)


@ipv6
@pytest.mark.parametrize("metrics_host, otlp_host", [("::1", "::"), ("::", "::1"), ("", "0.0.0.0")])
def test_serve_listens_on_the_families_its_address_names(tmp_path: Path, metrics_host: str, otlp_host: str) -> None:
    """`[::1]:P` is IPv6 loopback only; `[::]:P` and `:P` answer over IPv6 and IPv4 (one dual-stack
    socket); `0.0.0.0:P` IPv4 only. The OTLP listener reads its address the same way."""
    mp, op = _free_port_both(), _free_port_both()
    fmt = {"::1": "[::1]", "::": "[::]", "": "", "0.0.0.0": "0.0.0.0"}
    proc = _serve(tmp_path, f"{fmt[metrics_host]}:{mp}", f"{fmt[otlp_host]}:{op}")
    try:
        _wait_ready(proc, "127.0.0.1" if metrics_host != "::1" else "::1", mp)
        for host, port, path, ok in ((metrics_host, mp, "/metrics", 200), (otlp_host, op, "/v1/traces", 404)):
            v6 = host in ("::1", "::", "")
            v4 = host in ("::", "", "0.0.0.0")
            assert _answers("::1", port, path) == (ok if v6 else None), (host, "IPv6")
            assert _answers("127.0.0.1", port, path) == (ok if v4 else None), (host, "IPv4")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        if proc.stderr:
            proc.stderr.close()


def test_a_bad_listen_address_is_one_line(tmp_path: Path) -> None:
    for flag, value in (("--listen", "::1:9478"), ("--otlp-listen", "[::1:4318")):
        r = subprocess.run([sys.executable, "-m", "exporter.cli", "serve", "--triton", "none", "--ebpf", "off",
                            "--state-dir", str(tmp_path / "state"), "--otlp-listen", "127.0.0.1:0", flag, value],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "HOST:PORT" in r.stderr, r.stderr
