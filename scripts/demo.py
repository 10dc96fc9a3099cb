#!/usr/bin/env python3
"""The demo: serve the bundled all-MiniLM-L6-v2 with ``ember serve`` and call it over v2 HTTP.

Shows the lifecycle a Knative pod goes through: live at once, ready once the model is loaded and
warmed, requests answered (plain JSON as curl sends it, and tritonclient with binary tensors),
then SIGTERM, a graceful drain and exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "A model nobody calls should cost nothing.",
    "Idle GPUs are money burning quietly.",
    "The cat sat on the mat.",
]


def main() -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "ember",
        "serve",
        "--config",
        "examples/minilm/model.yaml",
        "--port",
        "0",
    ]
    print("$ ember serve --config examples/minilm/model.yaml --port 0")
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    url = None
    for line in proc.stdout:
        print("  |", line.rstrip())
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            url = match.group(1)
            break
    if url is None:
        print("the server did not start", file=sys.stderr)
        return 1
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            live = _poll(client, "/v2/health/live")
            print(
                f"\nlive after {live - started:.2f}s "
                "(GET /v2/health/live -> 200, while the model loads)"
            )
            ready = _poll(client, "/v2/health/ready", timeout_s=180)
            print(f"ready after {ready - started:.2f}s (GET /v2/health/ready -> 200)\n")

            body = {
                "id": "demo-1",
                "inputs": [
                    {
                        "name": "text",
                        "shape": [len(SENTENCES)],
                        "datatype": "BYTES",
                        "data": SENTENCES,
                    }
                ],
            }
            print(f"$ curl -s {url}/v2/models/minilm/infer -d '{json.dumps(body)}'")
            t = time.perf_counter()
            r = client.post("/v2/models/minilm/infer", content=json.dumps(body))
            elapsed = (time.perf_counter() - t) * 1000
            r.raise_for_status()
            answer = r.json()
            out = answer["outputs"][0]
            shown = {**answer, "outputs": [{**out, "data": [*out["data"][:4], "..."]}]}
            print(json.dumps(shown))
            print(f"({elapsed:.1f} ms)\n")

            emb = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
            print("cosine similarity of the sentences:")
            for i in range(len(SENTENCES)):
                for j in range(i + 1, len(SENTENCES)):
                    print(f"  {float(emb[i] @ emb[j]):+.3f}  {SENTENCES[i]!r} ~ {SENTENCES[j]!r}")

            import tritonclient.http as triton

            triton_client = triton.InferenceServerClient(url.removeprefix("http://"))
            text = triton.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array([SENTENCES[0]], dtype=object), binary_data=True)
            result = triton_client.infer(
                "minilm",
                [text],
                outputs=[triton.InferRequestedOutput("embedding", binary_data=True)],
            )
            same = np.allclose(result.as_numpy("embedding")[0], emb[0], atol=1e-5)
            print(
                f"\ntritonclient, binary tensors: embedding shape "
                f"{result.as_numpy('embedding').shape}, "
                f"same as the JSON answer: {same}"
            )
            triton_client.close()
            stats = client.get("/v2/models/minilm/stats").json()["model_stats"][0]
            print(
                f"statistics: {stats['inference_count']} items in "
                f"{stats['execution_count']} executions"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        for line in proc.stdout:
            print("  |", line.rstrip())
        code = proc.wait(60)
    print(f"\nSIGTERM -> drained and exited with code {code}")
    return 0 if code == 0 else 1


def _poll(client: httpx.Client, path: str, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get(path).status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not answer 200 within {timeout_s}s")


if __name__ == "__main__":
    raise SystemExit(main())
