"""Triton python-backend model `text_upper`: text_output = text_input in upper case."""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
            upper = np.array([t.upper() if isinstance(t, bytes) else str(t).upper().encode() for t in text.reshape(-1)],
                             dtype=np.object_).reshape(text.shape)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", upper)]))
        return responses
