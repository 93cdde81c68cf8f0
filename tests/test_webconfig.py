"""TLS and basic auth on the endpoint, with real HTTPS clients against a real server."""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client.registry import CollectorRegistry

from exporter.config import ConfigError
from exporter.server import MetricsServer
from exporter.source import ErrorCounts, SelfCollector
from exporter.webconfig import BasicAuth, load_web_config

PASSWORD = "s3cret-scrape"


def _cert(path: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = _cert(d / "ca", "test CA", None, ca=True)
    _cert(d / "server", "localhost", ca, server=True)
    _cert(d / "client", "prometheus", ca)
    _cert(d / "other", "localhost", None, server=True)  # self-signed, key mismatches server.crt
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    (d / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    return d


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _client_ctx(pki: Path, *, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client_cert:
        ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return ctx


def _get(port: int, ctx: ssl.SSLContext | None, path: str = "/metrics",
         auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": auth} if auth else {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _server(web_config: Path) -> MetricsServer:
    ctx, auth = load_web_config(str(web_config))
    reg = CollectorRegistry()
    reg.register(SelfCollector(ErrorCounts()))
    s = MetricsServer(reg, "127.0.0.1", 0, ssl_context=ctx, auth=auth)
    s.start()
    return s


@pytest.fixture(scope="module")
def server(pki: Path) -> Iterator[MetricsServer]:
    s = _server(pki / "web.yml")
    yield s
    s.stop()


def test_right_credentials_get_metrics(server: MetricsServer, pki: Path) -> None:
    status, _, body = _get(server.port, _client_ctx(pki), auth=_basic("prometheus", PASSWORD))
    assert status == 200
    assert b"inference_profiler_build_info" in body


@pytest.mark.parametrize(
    "auth",
    [None, _basic("prometheus", "wrong"), _basic("mallory", PASSWORD), "Bearer abc", "Basic !!!notbase64",
     "Basic " + base64.b64encode(b"no-colon").decode(), _basic("prometheus", "x" * 100)],
)
def test_wrong_credentials_get_401(server: MetricsServer, pki: Path, auth: str | None) -> None:
    for path in ("/metrics", "/", "/metrics?x=1"):
        status, headers, body = _get(server.port, _client_ctx(pki), path, auth=auth)
        assert status == 401
        assert headers["www-authenticate"].startswith("Basic ")
        assert b"inference_profiler" not in body


def test_probes_need_no_credentials(server: MetricsServer, pki: Path) -> None:
    # kubelet and Docker HEALTHCHECK probes carry no Authorization header
    assert _get(server.port, _client_ctx(pki), "/healthz")[0] == 200
    assert _get(server.port, _client_ctx(pki), "/readyz")[:3:2] == (200, b"ready\n")


def test_plain_http_to_tls_port_fails(server: MetricsServer) -> None:
    # the TLS server reads the request as a broken handshake: no HTTP response at all
    with pytest.raises((http.client.HTTPException, OSError)):
        _get(server.port, None, auth=_basic("prometheus", PASSWORD))


def test_untrusted_server_cert_is_rejected_by_client(server: MetricsServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _get(server.port, ssl.create_default_context(), auth=_basic("prometheus", PASSWORD))


def test_idle_client_does_not_block_others(server: MetricsServer, pki: Path) -> None:
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        t0 = time.monotonic()
        status, _, _ = _get(server.port, _client_ctx(pki), auth=_basic("prometheus", PASSWORD))
        assert status == 200
        assert time.monotonic() - t0 < 2.0
    finally:
        idle.close()


def test_client_certificate_required(pki: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "mtls.yml"
    cfg.write_text(
        f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
        f"  client_ca_file: {pki}/ca.crt\n"
    )
    s = _server(cfg)
    try:
        assert _get(s.port, _client_ctx(pki, client_cert=True))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _get(s.port, _client_ctx(pki))
    finally:
        s.stop()


def test_min_version_tls13_refuses_tls12_client(pki: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "v13.yml"
    cfg.write_text(f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n  min_version: TLS13\n")
    s = _server(cfg)
    try:
        old = _client_ctx(pki)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _get(s.port, old)
        assert _get(s.port, _client_ctx(pki))[0] == 200
    finally:
        s.stop()


def test_basic_auth_accepts_htpasswd_2y_hashes_and_caches_success() -> None:
    h = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).replace(b"$2b$", b"$2y$")
    auth = BasicAuth({"u": h})
    assert auth(_basic("u", "pw"))
    assert auth(_basic("u", "pw"))  # second time from the cache
    assert not auth(_basic("u", "pW"))
    assert not auth(_basic("v", "pw"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config: [1]\n", "tls_server_config must be a mapping"),
        ("tls_server_config:\n  cert_file: server.crt\n", "needs key_file"),
        ("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n", "cert_file"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n", "matching pair"),
        ("tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n", "cannot load"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS14\n", "min_version"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [x]\n",
         "cipher_suites is not supported"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAnyClientCert\n",
         "client_auth_type"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: VerifyClientCertIfGiven\n",
         "needs client_ca_file"),
        ("basic_auth_users:\n  alice: plaintext\n", "not a bcrypt hash"),
        ("basic_auth_user:\n  alice: x\n", "unknown key 'basic_auth_user'"),
        ("tls_server_config: {cert_file: [\n", "not valid YAML"),
        ("- a\n", "must be a mapping"),
    ],
)
def test_bad_web_config_is_one_line_error(pki: Path, text: str, message: str) -> None:
    cfg = pki / "bad.yml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_web_config(str(cfg))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    # INFPROF_* of the test run (INFPROF_REQUIRE in CI) would be config keys to the exporter
    return {**{k: v for k, v in os.environ.items() if not k.startswith("INFPROF_")}, **extra}


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "serve", "--triton", "none", "--ebpf", "off", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_serve_with_web_config_end_to_end(pki: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = _env(INFPROF_WEB_CONFIG_FILE=str(pki / "web.yml"))
    p = _serve(["--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state")], env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, body = _get(port, _client_ctx(pki), auth=_basic("prometheus", PASSWORD))
                break
            except OSError:
                assert p.poll() is None, p.communicate()[1]
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.1)
        assert status == 200 and b"inference_profiler_build_info" in body
        assert _get(port, _client_ctx(pki), auth=_basic("prometheus", "nope"))[0] == 401
    finally:
        p.terminate()
        p.communicate(timeout=10)


def test_serve_with_bad_web_config_exits_with_one_line(pki: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("basic_auth_users:\n  alice: plaintext\n")
    p = _serve(["--listen", "127.0.0.1:0", "--web-config-file", str(bad), "--state-dir", str(tmp_path / "s")],
               _env())
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert err.strip().count("\n") == 0 and "not a bcrypt hash" in err and "Traceback" not in err


def test_unknown_user_costs_as_much_as_a_wrong_password() -> None:
    """Timing must not tell which users exist: medians within 20 % of each other. CPU time of
    the checking thread, not wall time: other work on the machine would only add noise."""
    import statistics

    auth = BasicAuth({"alice": bcrypt.hashpw(b"right", bcrypt.gensalt(10))})
    unknown: list[float] = []
    wrong: list[float] = []
    for _ in range(9):  # interleaved, so load from elsewhere hits both alike
        for header, out in ((_basic("mallory", "x"), unknown), (_basic("alice", "x"), wrong)):
            t0 = time.thread_time()
            assert not auth(header)
            out.append(time.thread_time() - t0)
    u, w = statistics.median(unknown), statistics.median(wrong)
    print(f"basic auth: unknown user {u * 1e3:.1f} ms, wrong password {w * 1e3:.1f} ms (median of 9, CPU time)")
    assert abs(u - w) / max(u, w) < 0.20, (u, w)


def test_hash_checks_run_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of wrong passwords takes one core, not all of them."""
    import threading

    auth = BasicAuth({"alice": bcrypt.hashpw(b"right", bcrypt.gensalt(6))})
    real = bcrypt.checkpw
    running = 0
    most = 0
    lock = threading.Lock()

    def counting(pw: bytes, hashed: bytes) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return real(pw, hashed)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    threads = [threading.Thread(target=auth, args=(_basic("alice", f"wrong{i}"),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1


def test_min_version_above_max_version_is_refused(pki: Path) -> None:
    cfg = pki / "minmax.yml"
    cfg.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                   "  min_version: TLS13\n  max_version: TLS12\n")
    with pytest.raises(ConfigError, match="min_version TLS13 is above max_version TLS12"):
        load_web_config(str(cfg))


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary\x00\x81", b"a: " + b"[" * 20000])
def test_binary_or_deep_web_config_is_one_line_error(tmp_path: Path, content: bytes) -> None:
    cfg = tmp_path / "web.yml"
    cfg.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_web_config(str(cfg))
    assert "\n" not in str(e.value) and str(cfg) in str(e.value)
