"""A fake Triton on loopback whose /metrics and API answers can be made hostile, one mode at a time.

Answers are real Triton 2.51 outputs (tests/samples) unless the mode says otherwise; the
fake counts the requests per path. Modes of /metrics: normal, huge (200 MB), endless
(chunked, never ends), drip (one byte every 0.2 s), labels (one family, 1M label values),
nan, negative, backwards (counters lower on every fetch), duplicates (every family twice),
redirect (302 to another loopback address serving other data), status500, status404,
models (`models` models in /metrics, statistics, index and configs). Modes of the API:
normal, infinity (Infinity in the statistics), bad_config (one malformed model config),
bomb (30 MB of empty JSON objects: cheap to send, costly to parse).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).resolve().parent / "samples" / "triton-2.51"


def models_metrics(n: int) -> bytes:
    lines = []
    for family, kind in (("nv_inference_request_success", "counter"), ("nv_inference_count", "counter"),
                         ("nv_inference_exec_count", "counter"), ("nv_inference_request_duration_us", "counter"),
                         ("nv_inference_pending_request_count", "gauge")):
        lines += [f"# HELP {family} x", f"# TYPE {family} {kind}"]
        lines += [f'{family}{{model="m{i:05d}",version="1"}} {i}' for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


class HostileTriton:
    def __init__(self, host: str = "127.0.0.1", models: int = 5000) -> None:
        api = json.loads((SAMPLES / "api-outputs.json").read_text())
        self.metrics = (SAMPLES / "metrics.txt").read_bytes()
        self.stats: Any = api["http_stats_all"]
        self.index: Any = api["http_repository_index"]
        self.config: Any = api["http_model_config"]
        self.metrics_mode = "normal"
        self.api_mode = "normal"
        self.models = models
        self.redirect_to = ""
        self.hits: Counter[str] = Counter()
        self._fetches = itertools.count()
        self._labels: bytes | None = None
        self._models: tuple[bytes, Any, Any] | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # headers and body are two writes: without this, Nagle and delayed ACKs add 40 ms each
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the exporter gave up on this answer: as it should

            def send(self, status: int, body: bytes, ctype: str = "text/plain", **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                path = self.path.split("?")[0]
                fake.hits[path] += 1
                if path == "/metrics":
                    fake.serve_metrics(self)
                elif path == "/v2/models/stats":
                    self.send(200, fake.stats_body(), "application/json")
                elif path == "/v2/repository/index":
                    self.send(200, json.dumps(fake.index_doc()).encode(), "application/json")
                elif path.startswith("/v2/models/") and path.endswith("/config"):
                    self.send(200, fake.config_body(path), "application/json")
                else:
                    self.send(404, b"")

            do_POST = do_GET

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- /metrics ------------------------------------------------------------------------

    def serve_metrics(self, h: Any) -> None:
        mode = self.metrics_mode
        if mode == "huge":  # 200 MB of valid text, announced
            line = b'nv_inference_count{model="add_sub",version="1"} 1\n'
            block = line * (1024 * 1024 // len(line))
            h.send_response(200)
            h.send_header("Content-Length", str(200 * len(block)))
            h.end_headers()
            for _ in range(200):
                h.wfile.write(block)
        elif mode == "endless":  # chunked, never ends
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            chunk = b'nv_x{a="b"} 1\n' * 4096
            while True:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        elif mode == "drip":  # a valid answer, one byte every 0.2 s
            h.send_response(200)
            h.send_header("Content-Length", str(len(self.metrics)))
            h.end_headers()
            for i in range(len(self.metrics)):
                h.wfile.write(self.metrics[i:i + 1])
                h.wfile.flush()
                time.sleep(0.2)
        elif mode == "labels":
            if self._labels is None:
                self._labels = b"# TYPE nv_x gauge\n" + b"".join(b'nv_x{l="%d"} 1\n' % i for i in range(1_000_000))
            h.send(200, self._labels)
        elif mode == "redirect":
            h.send(302, b"", Location=self.redirect_to)
        elif mode in ("status500", "status404"):
            h.send(int(mode[-3:]), b"")
        elif mode == "models":
            h.send(200, self.models_docs()[0])
        else:
            h.send(200, self.metrics_text(mode))

    def metrics_text(self, mode: str) -> bytes:
        text = self.metrics.decode()
        success = 'nv_inference_request_success{model="add_sub",version="1"} 601'
        if mode == "nan":
            text = text.replace(success, success.replace("601", "NaN"))
        elif mode == "negative":
            text = text.replace(success, success.replace("601", "-601"))
        elif mode == "backwards":
            text = text.replace(success, success.replace("601", str(10_000 - next(self._fetches))))
        elif mode == "duplicates":
            text = text + text
        return text.encode()

    # --- the API ---------------------------------------------------------------------------

    def models_docs(self) -> tuple[bytes, Any, Any]:
        if self._models is None:
            template = self.stats["model_stats"][0]
            stats = {"model_stats": [{**template, "name": f"m{i:05d}", "batch_stats": template["batch_stats"][:1]}
                                     for i in range(self.models)]}
            index = [{"name": f"m{i:05d}", "version": "1", "state": "READY"} for i in range(self.models)]
            self._models = (models_metrics(self.models), json.dumps(stats).encode(), index)
        return self._models

    def stats_body(self) -> bytes:
        if self.metrics_mode == "models":
            return bytes(self.models_docs()[1])
        body = json.dumps(self.stats)
        if self.api_mode == "bomb":
            return b'{"model_stats": [' + b"{}," * 10_000_000 + b"{}]}"
        if self.api_mode == "infinity":
            body = body.replace('"ns": 725984251', '"ns": Infinity')
        return body.encode()

    def index_doc(self) -> Any:
        return self.models_docs()[2] if self.metrics_mode == "models" else self.index

    def config_body(self, path: str) -> bytes:
        if self.api_mode == "bad_config" and "/add_sub/" in path:
            return b'{"max_batch_size": "eight", "instance_group": 3}'
        return json.dumps(self.config).encode()
