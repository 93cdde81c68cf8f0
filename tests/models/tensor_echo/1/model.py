"""Test model `tensor_echo`: RAW_OUT = RAW (UINT8), TEXT_OUT = TEXT (BYTES)."""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("RAW_OUT", raw), pb_utils.Tensor("TEXT_OUT", text)]))
        return responses
