"""TLS and basic auth for the endpoint, from an exporter-toolkit style web config file.

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_ca_file: ca.crt         # optional: verify client certificates
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12             # TLS10..TLS13; default TLS12
      max_version: TLS13
    basic_auth_users:
      prometheus: $2b$12$...         # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

Every mistake is a `ConfigError` with one line naming the file and the fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

import bcrypt

from .config import ConfigError
from .server import AuthCheck
from .yamlfile import load_mapping

log = logging.getLogger("webconfig")

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit's names; RequestClientCert/RequireAnyClientCert (unverified certs) have no
# equivalent in Python's ssl module, which always verifies what it asks for.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"}
TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
CHECKS_PER_SECOND = 4.0  # bcrypt checks of unknown headers a second (about 60 ms of CPU each at cost 12)
CHECKS_BURST = 8
HASH_WAIT_SECONDS = 5.0  # a check waits this long for the hashing slot, then fails


def load_web_config(path: str) -> tuple[ssl.SSLContext | None, AuthCheck | None]:
    """The TLS context and the basic auth check the file asks for (either may be None)."""
    data = load_mapping(path, "web config", ConfigError, "fix --web-config-file")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ConfigError(f"web config {path}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(TOP_KEYS))})")
    if data.get("http_server_config"):
        log.warning("web config %s: http_server_config is ignored (the endpoint serves HTTP/1.1)", path)
    base = os.path.dirname(os.path.abspath(path))
    tls = data.get("tls_server_config")
    context = _tls_context(path, base, _mapping(path, "tls_server_config", tls)) if tls else None
    users = data.get("basic_auth_users")
    auth = BasicAuth(_users(path, _mapping(path, "basic_auth_users", users))) if users else None
    if auth is not None and context is None:
        log.warning("web config %s: basic auth without TLS sends passwords in clear text", path)
    return context, auth


def _mapping(path: str, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"web config {path}: {key} must be a mapping")
    return value


def _tls_context(path: str, base: str, tls: Mapping[str, Any]) -> ssl.SSLContext:
    unknown = set(tls) - TLS_KEYS
    if unknown:
        raise ConfigError(
            f"web config {path}: tls_server_config.{sorted(unknown)[0]} is not supported "
            f"(supported: {', '.join(sorted(TLS_KEYS))})"
        )
    for k in ("cert_file", "key_file"):
        if not tls.get(k):
            raise ConfigError(f"web config {path}: tls_server_config needs {k}")
    files = {k: os.path.join(base, str(tls[k])) for k in ("cert_file", "key_file", "client_ca_file") if tls.get(k)}
    for k, f in files.items():
        if not os.path.isfile(f):
            raise ConfigError(f"web config {path}: {k} {f} does not exist")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _tls_version(path, "min_version", tls.get("min_version", "TLS12"))
    if tls.get("max_version"):
        ctx.maximum_version = _tls_version(path, "max_version", tls["max_version"])
        if ctx.maximum_version < ctx.minimum_version:
            raise ConfigError(f"web config {path}: min_version {tls.get('min_version', 'TLS12')} is above "
                              f"max_version {tls['max_version']}")
    try:
        ctx.load_cert_chain(files["cert_file"], files["key_file"])
    except ssl.SSLError as e:
        raise ConfigError(
            f"web config {path}: cannot load cert_file/key_file ({e.reason or e}); are they PEM and a matching pair?"
        ) from None
    # exporter-toolkit: a client CA without an explicit type means client certs are required
    default_auth = "RequireAndVerifyClientCert" if "client_ca_file" in files else "NoClientCert"
    auth_type = str(tls.get("client_auth_type") or default_auth)
    if auth_type not in CLIENT_AUTH:
        raise ConfigError(
            f"web config {path}: client_auth_type {auth_type!r} is not supported (use {', '.join(CLIENT_AUTH)})"
        )
    ctx.verify_mode = CLIENT_AUTH[auth_type]
    if ctx.verify_mode != ssl.CERT_NONE:
        if "client_ca_file" not in files:
            raise ConfigError(f"web config {path}: client_auth_type {auth_type} needs client_ca_file")
        try:
            ctx.load_verify_locations(files["client_ca_file"])
        except ssl.SSLError as e:
            raise ConfigError(f"web config {path}: cannot load client_ca_file ({e.reason or e})") from None
    return ctx


def _tls_version(path: str, key: str, value: Any) -> ssl.TLSVersion:
    if str(value) not in TLS_VERSIONS:
        raise ConfigError(f"web config {path}: {key} must be one of {', '.join(TLS_VERSIONS)}, got {value!r}")
    return TLS_VERSIONS[str(value)]


def _users(path: str, users: Mapping[str, Any]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for user, hashed in users.items():
        h = str(hashed or "").encode()
        try:
            bcrypt.checkpw(b"", h)
        except ValueError:
            raise ConfigError(
                f"web config {path}: basic_auth_users.{user} is not a bcrypt hash (make one with: htpasswd -nBC 12 '' | tr -d ':\\n')"
            ) from None
        out[str(user)] = h
    return out


def _cost(hashed: bytes) -> int:
    """The work factor of a bcrypt hash ($2b$12$... -> 12)."""
    try:
        return int(hashed.split(b"$")[2])
    except (IndexError, ValueError):
        return 12


class BasicAuth:
    """Checks an Authorization header against bcrypt hashes; remembers recent successes.

    Every failure costs one bcrypt check at the users' own work factor, so timing does not
    tell an unknown user from a wrong password; one check runs at a time, and checks that
    were not answered from memory draw on a token bucket (`checks_per_second`, `burst`): a
    stream of wrong passwords costs at most that many bcrypt checks a second, the rest are
    refused unchecked. A header seen to fail is refused from memory; a success refunds its
    token and is remembered, so a flood does not lock out a scraper that was already in.
    """

    CACHE_SIZE = 64
    FAILED_CACHE_SIZE = 1024

    def __init__(self, users: Mapping[str, bytes], checks_per_second: float = CHECKS_PER_SECOND,
                 burst: int = CHECKS_BURST) -> None:
        self.users = dict(users)
        self.rate, self.burst = checks_per_second, burst
        self._tokens = float(burst)
        self._refilled = time.monotonic()
        self.unchecked = 0  # refused without a bcrypt check (tests read it)
        self._ok: dict[bytes, None] = {}  # digests of accepted header values, oldest first
        self._failed: dict[bytes, None] = {}  # digests of refused header values, oldest first
        self._lock = threading.Lock()
        self._hashing = threading.BoundedSemaphore(1)
        # checked against when the user is unknown: the same cost as the slowest real hash
        cost = max((_cost(h) for h in self.users.values()), default=12)
        self._dummy = bcrypt.hashpw(b"inference-profiler", bcrypt.gensalt(min(max(cost, 4), 31)))

    def __call__(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        hashed = self.users.get(user)
        # bcrypt costs ~0.1-0.3 s; Prometheus sends the same header every scrape
        key = hashlib.sha256(b"%s\0%s\0%s" % (user.encode(), password.encode(), hashed or b"")).digest()
        with self._lock:
            if key in self._ok:
                return True
            if key in self._failed or not self._take_token():
                self.unchecked += 1
                return False
        pw = password.encode()
        too_long = len(pw) > 72  # bcrypt >= 5 refuses these; still pay the same cost below
        if not self._hashing.acquire(timeout=HASH_WAIT_SECONDS):
            return False
        try:
            ok = bcrypt.checkpw(pw[:72], hashed or self._dummy) and hashed is not None and not too_long
        except ValueError:
            ok = False
        finally:
            self._hashing.release()
        with self._lock:
            memo, size = (self._ok, self.CACHE_SIZE) if ok else (self._failed, self.FAILED_CACHE_SIZE)
            memo[key] = None
            while len(memo) > size:
                del memo[next(iter(memo))]
            if ok:
                self._tokens = min(float(self.burst), self._tokens + 1)
        return ok

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
