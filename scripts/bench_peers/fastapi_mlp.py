#!/usr/bin/env python3
"""The bare FastAPI peer: the v2 infer route written the way a FastAPI user would, nothing more.

JSON via FastAPI's own body parsing, the forward pass inline, a dict back. Binary inputs are read
with the binary tensor data extension's header so the binary case can run too.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from mlp_common import load_mlp


def create_app() -> FastAPI:
    app = FastAPI()
    model = load_mlp()

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/mlp/infer")
    async def infer(request: Request) -> dict[str, Any]:
        header_length = request.headers.get("inference-header-content-length")
        raw = await request.body()
        if header_length is None:
            body = json.loads(raw)
            inp = body["inputs"][0]
            x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        else:
            n = int(header_length)
            body = json.loads(raw[:n])
            inp = body["inputs"][0]
            x = np.frombuffer(raw[n:], dtype=np.float32).reshape(inp["shape"]).copy()
        with torch.inference_mode():
            y = model(torch.from_numpy(x)).numpy()
        return {
            "model_name": "mlp",
            "outputs": [
                {
                    "name": "logits",
                    "datatype": "FP32",
                    "shape": list(y.shape),
                    "data": y.ravel().tolist(),
                }
            ],
        }

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
