"""Every fetch `diagnose` makes (an exporter's /metrics, Prometheus' query API, Triton's model
config): one GET with a deadline for the whole answer, a bound on its size, no redirects,
and remote text made safe to print before it reaches a message or the report.
"""

from __future__ import annotations

import http.client
import math
import time
import urllib.parse
from typing import Any

import msgspec

MAX_ANSWER_BYTES = 32 << 20  # a /metrics page of thousands of series is a few MB
FETCH_SECONDS = 30.0  # connect, headers and the whole body
READ_CHUNK = 1 << 16


class SourceError(Exception):
    """An input could not be read; the message is one line."""


def printable(text: str, limit: int = 200) -> str:
    """Remote text as it may be shown on a terminal: control characters (escape sequences,
    newlines) written as \\x.. escapes, cut at `limit` characters."""
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return out + ("…" if len(text) > limit else "")


def fetch(url: str, seconds: float = FETCH_SECONDS, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The body of a 200 answer to GET `url`; SourceError for anything else, a redirect included."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"{printable(url)}: not an http:// or https:// URL")
    deadline = time.monotonic() + seconds
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn = cls(parts.hostname, parts.port, timeout=seconds)
    except ValueError as e:  # a port that is not a number
        raise SourceError(f"{printable(url)}: {e}") from None
    try:
        conn.request("GET", target, headers={"Accept-Encoding": "identity"})
        r = conn.getresponse()
        if 300 <= r.status < 400:
            where = printable(r.getheader("Location") or "?")
            raise SourceError(f"{printable(url)}: HTTP {r.status} redirect to {where} not followed; "
                              "give the final URL")
        if r.status != 200:
            raise SourceError(f"{printable(url)}: HTTP {r.status}")
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceError(f"{printable(url)}: no complete answer within {seconds:g} s")
            if conn.sock is not None:
                conn.sock.settimeout(left)  # a dripping answer cannot outlive the deadline
            chunk = r.read1(READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise SourceError(f"{printable(url)}: answer larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except TimeoutError:
        raise SourceError(f"{printable(url)}: no complete answer within {seconds:g} s") from None
    except (OSError, http.client.HTTPException) as e:
        raise SourceError(f"{printable(url)}: {printable(str(getattr(e, 'reason', e)) or type(e).__name__)}") from None
    finally:
        conn.close()


def fetch_json(url: str, seconds: float = FETCH_SECONDS) -> Any:
    try:
        return msgspec.json.decode(fetch(url, seconds))
    except msgspec.DecodeError as e:
        raise SourceError(f"{printable(url)}: not JSON ({printable(str(e))})") from None


# Prometheus' instant-query answer: {"status": "success", "data": {"result": [{"metric": {...},
# "value": [time, "number"]}]}}, or {"status": "error", "error": "..."}
class _Row(msgspec.Struct):
    metric: dict[str, str]
    value: tuple[float, str]


class _Data(msgspec.Struct):
    result: list[_Row] = []


class _Answer(msgspec.Struct):
    status: str
    data: _Data | None = None
    error: str = ""


_ANSWER = msgspec.json.Decoder(_Answer)


def prometheus_rows(url: str, seconds: float = FETCH_SECONDS) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of an instant query's vector; finite values only, label values printable."""
    try:
        doc = _ANSWER.decode(fetch(url, seconds))
    except msgspec.DecodeError as e:
        raise SourceError(f"{printable(url)}: not a Prometheus query answer ({printable(str(e))})") from None
    if doc.status != "success" or doc.data is None:
        raise SourceError(f"{printable(url)}: query failed: {printable(doc.error or doc.status)}")
    out = []
    for row in doc.data.result:
        try:
            value = float(row.value[1])
        except ValueError:
            raise SourceError(f"{printable(url)}: value {printable(row.value[1])} is not a number") from None
        if math.isfinite(value):
            out.append(({k: printable(v, 1000) for k, v in row.metric.items()}, value))
    return out
