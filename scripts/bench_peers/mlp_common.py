"""The benchmark MLP, built and loaded the same way for every peer server."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def load_mlp() -> torch.nn.Module:
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "examples" / "mlp"))
    from mlp import MLP

    model = MLP()
    model.load_state_dict(load_file(str(ROOT / "examples/mlp/weights/model.safetensors")))
    return model.eval()
