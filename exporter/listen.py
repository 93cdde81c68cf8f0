"""Listening addresses: `HOST:PORT` text -> a bound socket, the same way for /metrics and OTLP.

`:P` and `[::]:P` listen on every address of both families where the host has IPv6 (one
dual-stack socket, as node_exporter does), on IPv4 alone where it has none; `0.0.0.0:P` is
IPv4 only, `[::1]:P` IPv6 only; a host name binds its first address.
"""

from __future__ import annotations

import contextlib
import socket

ALL_HOSTS = ("", "::", "*")  # every address, both families where the host has IPv6


class ListenAddressError(ValueError):
    """The text is not HOST:PORT."""


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT`, `[IPv6]:PORT` or `:PORT`; host "" means every address."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ListenAddressError(f"not HOST:PORT: {text!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ListenAddressError(f"unclosed '[' in {text!r}: write an IPv6 host as [::1]:{port}")
        host = host[1:-1]
    elif ":" in host:
        raise ListenAddressError(f"an IPv6 host needs brackets: [{host}]:{port}, not {text!r}")
    return host, int(port)


def has_ipv6() -> bool:
    """True where an IPv6 socket can be bound (the kernel has IPv6 and it is not disabled)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_listening(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening; OSError as the system says it."""
    dual = host in ALL_HOSTS
    if dual:
        family, addr = (socket.AF_INET6, ("::", port)) if has_ipv6() else (socket.AF_INET, ("0.0.0.0", port))
    else:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, addr = info[0][0], (str(info[0][4][0]), port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # explicit either way: the system default (net.ipv6.bindv6only) varies between hosts
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def url_host(host: str) -> str:
    """The host as it goes in a URL (brackets around IPv6), for the places that print one."""
    if host in ALL_HOSTS:
        return "localhost"
    return f"[{host}]" if ":" in host else host
