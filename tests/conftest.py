from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import skipgate
from tests.servers import ROOT, ServerProcess, running_server
from tests.skipgate import GPU_SKIP

MLP_CONFIG = ROOT / "examples" / "mlp" / "model.yaml"
MINILM_CONFIG = ROOT / "examples" / "minilm" / "model.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    skipgate.install(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers by folder; GPU tests are skipped, visibly, where no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "gpu" in parts:
            item.add_marker(pytest.mark.gpu)
            if not has_gpu:
                item.add_marker(pytest.mark.skip(reason=GPU_SKIP))
        if "integration" in parts or "e2e" in parts or "images" in parts:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def mlp_weights() -> None:
    subprocess.run([sys.executable, str(ROOT / "examples/mlp/make_weights.py")], check=True)


@pytest.fixture(scope="session")
def mlp_server(mlp_weights: None) -> Iterator[ServerProcess]:
    with running_server(MLP_CONFIG) as server:
        yield server


@pytest.fixture(scope="session")
def minilm_server() -> Iterator[ServerProcess]:
    with running_server(MINILM_CONFIG) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible server (moto) on 127.0.0.1, port 0, with the AWS variables set for
    this process and the servers it starts. Yields the endpoint URL."""
    import os

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_VARS}
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket for one test."""
    import re

    import boto3

    name = "t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def make_model_dir(root: Path, *, mb: float = 2.0, seed: int = 0) -> Path:
    """A small model folder: a safetensors file of about ``mb`` MB plus config files."""
    import json

    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    n = int(mb * 1024 * 1024 / 4 / 2)
    save_file(
        {"a": torch.randn(n), "b": torch.randn(n // 2, 2), "c": torch.arange(7)},
        str(root / "model.safetensors"),
    )
    (root / "config.json").write_text(json.dumps({"seed": seed}))
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "vocab.txt").write_text("hello\nworld\n")
    return root


def slow_model(
    tmp_path: Path, *, load_delay_s: float = 0.0, delay_s: float = 0.0, **extra: Any
) -> Path:
    """A torch-module model that sleeps in its constructor and its forward pass."""
    import json

    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "weights"
    weights.mkdir(exist_ok=True)
    save_file({"scale": torch.full((1,), 2.0)}, str(weights / "model.safetensors"))
    config = {
        "name": "slow",
        "handler": "torch-module",
        "source": str(weights),
        "options": {
            "module": f"{FIXTURES / 'models.py'}:Slow",
            "kwargs": {"load_delay_s": load_delay_s, "delay_s": delay_s},
        },
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
        "max_batch_size": 0,
        **extra,
    }
    config["inputs"][0]["shape"] = config["outputs"][0]["shape"] = [1, 1]
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/tiny-llm's random-weight Llama, built into a session folder (nothing downloaded)."""
    from tests.fixtures.tiny_llm import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm") / "model")
