from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, ServerProcess, running_server

MLP_CONFIG = ROOT / "examples" / "mlp" / "model.yaml"
MINILM_CONFIG = ROOT / "examples" / "minilm" / "model.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "integration" in parts:
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
