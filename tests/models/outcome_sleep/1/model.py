"""Test model `outcome_sleep`: sleep MS ms and answer MS; a negative MS raises (a failed request)."""

from __future__ import annotations

import time
from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            ms = pb_utils.get_input_tensor_by_name(request, "MS").as_numpy()
            if int(ms[0]) < 0:
                raise ValueError(f"outcome_sleep was asked to fail ({int(ms[0])})")
            time.sleep(int(ms[0]) / 1000)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUT", ms)]))
        return responses
