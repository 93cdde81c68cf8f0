"""The image's HEALTHCHECK: does the exporter answer /healthz? Exit 0 if so, 1 if not.

Reads the same settings as the daemon (INFPROF_LISTEN, INFPROF_WEB_CONFIG_FILE). With TLS
on it skips certificate checks (it talks to itself); /healthz needs no basic auth.
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys

import yaml


def target() -> tuple[str, int, bool]:
    host, _, port = os.environ.get("INFPROF_LISTEN", ":9478").rpartition(":")
    host = host.strip("[]")
    # every-address listens answer on IPv4 loopback, also where a dual-stack ask fell back to IPv4
    host = {"": "127.0.0.1", "*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "127.0.0.1"}.get(host, host)
    tls = False
    web = os.environ.get("INFPROF_WEB_CONFIG_FILE")
    if web:
        with open(web, encoding="utf-8") as f:
            tls = bool((yaml.safe_load(f) or {}).get("tls_server_config"))
    return host, int(port), tls


def main() -> int:
    try:
        host, port, tls = target()
        conn: http.client.HTTPConnection
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(host, port, timeout=4, context=ctx)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=4)
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
        conn.close()
    except (OSError, ValueError, http.client.HTTPException, yaml.YAMLError) as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    if status == 200:
        return 0
    print(f"unhealthy: /healthz answered {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
