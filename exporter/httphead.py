"""One HTTP/1.x request head (request line and header fields) read without the email parser
http.server uses: a dozen header lookups and a parse cost more than the rest of a small OTLP
POST's HTTP handling. Same limits as http.server (line length, header count); stricter where
a proxy could read the head differently (whitespace before a colon, folded lines)."""

from __future__ import annotations

import email.utils
import time
from io import BufferedIOBase

MAX_LINE = 65536  # bytes in one header line (http.server's limit)
MAX_HEADERS = 100  # header lines in one request (http.server's limit)


class HeadError(Exception):
    """A head that cannot be answered normally: the status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Headers:
    """A request's header fields by case-insensitive name, each name's values in arrival order
    (the part of email.message.Message's interface the handlers use)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._fields.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str] | None:
        return self._fields.get(name.lower())

    def __getitem__(self, name: str) -> str | None:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, values in self._fields.items() for v in values]


def request_line(raw: bytes) -> tuple[str, str, tuple[int, int]]:
    """(method, target, (major, minor)) of 'METHOD TARGET HTTP/x.y'; HeadError 400 or 505."""
    words = raw.decode("latin-1").rstrip("\r\n").split()
    if len(words) != 3:
        raise HeadError(400, "Bad request syntax")
    method, target, version = words
    major, dot, minor = version[5:].partition(".")
    if (not version.startswith("HTTP/") or not dot or not major.isdigit() or not minor.isdigit()
            or len(major) > 10 or len(minor) > 10 or not major.isascii() or not minor.isascii()):
        raise HeadError(400, f"Bad request version ({version!r})")
    if int(major) >= 2:
        raise HeadError(505, f"Invalid HTTP version ({major}.{minor})")
    if target.startswith("//"):
        target = "/" + target.lstrip("/")  # not a scheme-relative URL to whoever echoes it
    return method, target, (int(major), int(minor))


def read_fields(rfile: BufferedIOBase) -> Headers:
    """The header lines up to the empty line (or the end of the stream); HeadError 431 past the
    limits, 400 for a line that is not `name: value` or is folded onto the previous one."""
    fields: dict[str, list[str]] = {}
    count = 0
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HeadError(431, "Line too long")
        if line in (b"\r\n", b"\n", b""):
            return Headers(fields)
        count += 1
        if count > MAX_HEADERS:
            raise HeadError(431, "Too many headers")
        name, colon, value = line.partition(b":")
        if not colon or not name or b" " in name or b"\t" in name:
            raise HeadError(400, "Bad header line")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip(" \t\r\n")
        values = fields.get(key)
        if values is None:
            fields[key] = [text]
        else:
            values.append(text)


_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]
