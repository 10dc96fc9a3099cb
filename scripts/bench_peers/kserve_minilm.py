#!/usr/bin/env python3
"""The KServe pattern's server: MiniLM as a ``kserve.Model`` under kserve's ModelServer.

Loads the model from ``--model-dir`` (where the storage-initializer step put it), with the same
encoder code Ember's hf-encoder handler uses, so the comparison is about serving, not modelling.
"""

from __future__ import annotations

import sys

port = int(sys.argv[sys.argv.index("--port") + 1])
model_dir = sys.argv[sys.argv.index("--model-dir") + 1]
sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402

from runtime.config import ModelConfig  # noqa: E402
from runtime.handlers.hf_encoder import HFEncoderHandler  # noqa: E402
from runtime.tensors import Tensor  # noqa: E402


class MiniLM(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.handler = HFEncoderHandler(
            ModelConfig(name=name, handler="hf-encoder", source=model_dir, device="cpu")
        )
        self.load()

    def load(self) -> bool:
        self.handler.load()
        self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        text = payload.inputs[0].as_numpy()
        out = self.handler.predict({"text": Tensor("text", "BYTES", text)})["embedding"].array
        result = InferOutput("embedding", list(out.shape), "FP32")
        result.set_data_from_numpy(out, binary_data=False)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=[result]
        )


if __name__ == "__main__":
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([MiniLM("minilm")])
