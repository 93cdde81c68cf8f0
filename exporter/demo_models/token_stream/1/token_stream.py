"""Triton python-backend model of `token_stream` and `token_stream_thread` (whose file is a link to this one).

Decoupled: each request gets max_tokens responses (default 8), one word of text_input each,
then a flag-only final. The config parameter `send_from` says who sends them:
  execute  execute() sends every response before it returns;
  thread   execute() returns at once (Triton releases the request) and a thread sends them,
           as vLLM and TensorRT-LLM do.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

DEFAULT_TOKENS = 8
MAX_TOKENS = 256
TOKEN_SECONDS = 0.002  # a little time per token so the gaps between responses are visible
FINALIZE_WAIT_SECONDS = 5.0


def tokens(request: Any) -> list[bytes]:
    """The words to send back, one per response: text_input's words cycled to max_tokens."""
    text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
    words = (text if isinstance(text, bytes) else str(text).encode()).split() or [b"token"]
    count = pb_utils.get_input_tensor_by_name(request, "max_tokens")
    n = DEFAULT_TOKENS if count is None else int(count.as_numpy().reshape(-1)[0])
    return [words[i % len(words)] for i in range(max(1, min(n, MAX_TOKENS)))]


def send_tokens(sender: Any, words: list[bytes]) -> None:
    for word in words:
        time.sleep(TOKEN_SECONDS)
        out = pb_utils.Tensor("text_output", np.array([word], dtype=np.object_))
        sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        self.from_thread = params.get("send_from", {}).get("string_value", "execute") == "thread"
        self.inflight = 0
        self.idle = threading.Condition()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            # inputs are read here: the request is released once execute() returns
            work = (request.get_response_sender(), tokens(request))
            if not self.from_thread:
                send_tokens(*work)
                continue
            with self.idle:
                self.inflight += 1
            threading.Thread(target=self.stream, args=work, daemon=True).start()

    def stream(self, sender: Any, words: list[bytes]) -> None:
        try:
            send_tokens(sender, words)
        finally:
            with self.idle:
                self.inflight -= 1
                self.idle.notify_all()

    def finalize(self) -> None:
        # running streams finish first, so their clients get the final flag
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0, timeout=FINALIZE_WAIT_SECONDS)
