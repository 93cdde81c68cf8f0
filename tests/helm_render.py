"""Lint and render a chart with Helm's own engine (the helm-sdkpy package bundles Helm's library).

Run by tests/test_deploy_helm.py in a venv of Python >= 3.12 holding only helm-sdkpy:

    python tests/helm_render.py CHART RELEASE NAMESPACE VALUES_JSON   -> JSON {lint, manifest, sent}

helm-sdkpy has no `helm template`: this script runs a real `helm install` against a minimal
stand-in for the Kubernetes API server on loopback (discovery, Helm's release record, and the
objects Helm creates), so the manifest is rendered, ordered and sent exactly as Helm does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit


def _resource(name: str, kind: str, namespaced: bool = True) -> dict[str, Any]:
    return {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}


# what the stand-in's discovery lists: the kinds a chart of this repository may create
API = {
    "v1": [_resource("configmaps", "ConfigMap"), _resource("secrets", "Secret"), _resource("services", "Service"),
           _resource("serviceaccounts", "ServiceAccount"), _resource("namespaces", "Namespace", False)],
    "apps/v1": [_resource("daemonsets", "DaemonSet"), _resource("deployments", "Deployment")],
    "networking.k8s.io/v1": [_resource("networkpolicies", "NetworkPolicy")],
    "monitoring.coreos.com/v1": [_resource("servicemonitors", "ServiceMonitor"),
                                 _resource("podmonitors", "PodMonitor"),
                                 _resource("prometheusrules", "PrometheusRule")],
}
COLLECTIONS = {r["name"] for rs in API.values() for r in rs}


class ApiStandIn(BaseHTTPRequestHandler):
    """Answers Helm's install: discovery, empty lists, 404 for objects, and echoes creations."""

    sent: ClassVar[list[dict[str, Any]]] = []  # the objects Helm created, as sent (JSON); its release record aside

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, code: int, obj: dict[str, Any]) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == "/version":
            self._json(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"})
        elif path == "/api":
            self._json(200, {"kind": "APIVersions", "versions": ["v1"],
                             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        elif path == "/apis":
            groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                       "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in API if "/" in gv]
            self._json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        elif (gv := path.removeprefix("/api/").removeprefix("/apis/")) in API:
            self._json(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": API[gv]})
        elif "labelSelector" in url.query or path.rstrip("/").rsplit("/", 1)[-1] in COLLECTIONS:
            self._json(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        else:
            self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    def _body(self) -> dict[str, Any]:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "json" in (self.headers.get("Content-Type") or ""):
            obj: dict[str, Any] = json.loads(raw)
            return obj
        # Helm's release record goes as protobuf: answer with a Secret of the same name
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": self.path.rsplit("/", 1)[-1]}}

    def do_POST(self) -> None:
        obj = self._body()
        if "json" in (self.headers.get("Content-Type") or ""):
            ApiStandIn.sent.append(json.loads(json.dumps(obj)))
        obj.setdefault("metadata", {}).update(uid="0", resourceVersion="1")
        self._json(201, obj)

    def do_PUT(self) -> None:
        obj = self._body()
        obj.setdefault("metadata", {}).update(resourceVersion="2")
        self._json(200, obj)


def main(chart: str, release: str, namespace: str, values: dict[str, Any]) -> dict[str, Any]:
    from helm_sdkpy import Configuration, Install
    from helm_sdkpy.chart import Lint

    server = ThreadingHTTPServer(("127.0.0.1", 0), ApiStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
            "users": [{"name": "u", "user": {"token": "none"}}],
            "contexts": [{"name": "c", "context": {"cluster": "stand-in", "user": "u", "namespace": namespace}}],
        }))
        config = Configuration(namespace=namespace, kubeconfig=str(kubeconfig))
        lint = asyncio.run(Lint(config).run(chart))
        release_info = asyncio.run(Install(config).run(release, chart, values=values, wait=False, timeout=60))
    server.shutdown()
    return {"lint": lint, "manifest": release_info["manifest"], "sent": ApiStandIn.sent}


if __name__ == "__main__":
    chart_dir, release_name, ns, values_json = sys.argv[1:5]
    print(json.dumps(main(chart_dir, release_name, ns, json.loads(values_json))))
