#!/usr/bin/env python3
"""The GPU path in one short run: streaming a checkpoint onto the device vs safetensors.

For a machine with CUDA (the project's lent GPU machine): generates a ``--size-gb`` safetensors
checkpoint, pushes it to a local directory store, then, ``--repeats`` times each, into a fresh
tier and onto ``cuda``:

    ember-stream      fetch_to_tier with a TensorSink("cuda"): ranges land in the tier file,
                      go through the pinned staging ring and side-stream copies while later
                      ranges are still being read; timed until every tensor is on the device
    safetensors-cuda  safetensors.torch.load_file(device="cuda") of the same (warm) file
    tier-then-copy    ember's fetch into the tier, then load_file(device="cuda"): no overlap

and checks that the streamed tensors equal the file's bytes. Writes JSON to ``--out``.

    scripts/gpu_check.py --out "$OUT/gpu.json" [--size-gb 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from bench_load import make_checkpoint
    from safetensors.torch import load_file

    from weight_cache.fetch import fetch_to_tier
    from weight_cache.materialize import TensorSink
    from weight_cache.push import push_directory
    from weight_cache.stores import LocalStore
    from weight_cache.tier import LocalTier

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    results: dict[str, list[float]] = {
        "ember-stream": [],
        "safetensors-cuda": [],
        "tier-then-copy": [],
    }
    info: dict[str, Any] = {"device": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory(prefix="ember-gpu-") as tmp:
        work = Path(tmp)
        model = make_checkpoint(work / "model", args.size_gb)
        store = LocalStore(work / "store")
        asyncio.run(push_directory(store, model))
        size = (model / "model.safetensors").stat().st_size
        for i in range(args.repeats):
            tier = work / f"tier-{i}"
            sink = TensorSink("cuda")
            started = time.perf_counter()
            report = asyncio.run(fetch_to_tier(store, LocalTier(tier), sink=sink))
            sink.close()
            torch.cuda.synchronize()
            results["ember-stream"].append(size / 1e9 / (time.perf_counter() - started))
            info["device_wait_s"] = sink.device_wait_s
            if i == 0:
                expected = load_file(str(report.path / "model.safetensors"))
                for name, t in expected.items():
                    got = sink.tensors["model.safetensors"][name].cpu()
                    assert torch.equal(got.view(torch.uint8), t.view(torch.uint8)), name
            del sink
            started = time.perf_counter()
            load_file(str(report.path / "model.safetensors"), device="cuda")
            torch.cuda.synchronize()
            results["safetensors-cuda"].append(size / 1e9 / (time.perf_counter() - started))
            shutil.rmtree(tier)
            started = time.perf_counter()
            report = asyncio.run(fetch_to_tier(store, LocalTier(tier)))
            load_file(str(report.path / "model.safetensors"), device="cuda")
            torch.cuda.synchronize()
            results["tier-then-copy"].append(size / 1e9 / (time.perf_counter() - started))
            shutil.rmtree(tier)
            torch.cuda.empty_cache()
    out = {
        "results": [
            {"loader": k, "gbps_median": statistics.median(v), "runs": len(v), "all": v}
            for k, v in results.items()
        ],
        "size_bytes": size,
        **info,
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
