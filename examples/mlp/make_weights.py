"""Write examples/mlp/weights/model.safetensors (seeded, so every machine gets the same weights).

Run on first use by scripts/test, scripts/demo and the benchmarks; does nothing if the file exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE / "weights" / "model.safetensors"


def main() -> int:
    if TARGET.exists():
        return 0
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(HERE))
    from mlp import MLP

    torch.manual_seed(0)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    partial = TARGET.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in MLP().state_dict().items()}, str(partial))
    partial.rename(TARGET)  # atomic: a half-written file never looks complete
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
