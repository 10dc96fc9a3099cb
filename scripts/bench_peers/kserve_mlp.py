#!/usr/bin/env python3
"""The KServe peer: the same MLP as a ``kserve.Model`` under kserve's own ModelServer (v2 REST)."""

from __future__ import annotations

import sys

port = int(sys.argv[sys.argv.index("--port") + 1])
sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported

import torch  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402
from mlp_common import load_mlp  # noqa: E402


class MLPModel(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.model: torch.nn.Module | None = None
        self.load()

    def load(self) -> bool:
        self.model = load_mlp()
        self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        assert self.model is not None
        x = payload.inputs[0].as_numpy()
        with torch.inference_mode():
            y = self.model(torch.from_numpy(x)).numpy()
        out = InferOutput("logits", list(y.shape), "FP32")
        out.set_data_from_numpy(y, binary_data=False)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=[out]
        )


if __name__ == "__main__":
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([MLPModel("mlp")])
