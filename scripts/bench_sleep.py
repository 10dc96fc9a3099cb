#!/usr/bin/env python3
"""How long a sleeping model takes to answer again, per sleep level, and what a switch between two
models that cannot both be awake costs, measured through ``ember up`` (the activator in front).

The example MLP and MiniLM are one group of ``ember.yaml``, served by one replica. Each model is put
to sleep through the activator (``POST /v2/repository/models/{m}/unload {"parameters": {"level":
L}}``, answered once the replica has put it away) and sent a request: its wake is that
request-to-answer time minus the median of warm requests, both through the activator. Then the
group is given a device memory budget that fits the larger model alone, and requests alternate
between them: the switch cost is each alternating request's time minus its model's warm median.

Writes ``--out`` (JSON)::

    {"results": [{"model", "level", "device", "wake_s_median", "runs"}],
     "switch": {"p50_added_ms", "p99_added_ms"}, ...}

Medians of ``--repeats`` runs; a benchmark, not a test (this machine is shared and noisy).
Usage: ``scripts/bench_sleep.py --out bench-results/sleep.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess, running_server  # noqa: E402

LEVELS = ("host", "disk")
MLP_BODY = {
    "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]
}
MINILM_BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a sleep"]}]}
BODIES = {"mlp": MLP_BODY, "minilm": MINILM_BODY}


def model_config(name: str) -> dict[str, Any]:
    """examples/NAME/model.yaml with its relative paths made absolute, on the CPU."""
    folder = ROOT / "examples" / name
    config = yaml.safe_load((folder / "model.yaml").read_text())
    if "://" not in config["source"]:
        config["source"] = str(folder / config["source"])
    module = config.get("options", {}).get("module")
    if module and ".py:" in module:
        config["options"]["module"] = str(folder / module)
    return {**config, "device": "cpu", "warmup": True}


def timed(client: httpx.Client, model: str) -> float:
    started = time.perf_counter()
    r = client.post(f"/v2/models/{model}/infer", json=BODIES[model])
    elapsed = time.perf_counter() - started
    r.raise_for_status()
    return elapsed


def warm_median(client: httpx.Client, model: str, n: int = 20) -> float:
    timed(client, model)
    return statistics.median(timed(client, model) for _ in range(n))


def stack(tmp: Path, name: str, budget: int | None = None) -> Path:
    """An ember.yaml: one group of the two models, one replica, kept for the whole run."""
    members = []
    for model in model_configs():
        path = tmp / f"{model['name']}.json"
        path.write_text(json.dumps(model))
        members.append({"config": str(path)})
    group: dict[str, Any] = {"name": "shared", "models": members, "keep_alive_s": 3600}
    if budget is not None:
        group["device_memory_budget"] = budget
    config = tmp / f"{name}.yaml"
    activator = {"events": str(tmp / f"{name}-events.jsonl"), "grace_period_s": 5}
    config.write_text(yaml.safe_dump({"activator": activator, "groups": [group]}))
    return config


def model_configs() -> list[dict[str, Any]]:
    return [model_config(name) for name in BODIES]


@contextlib.contextmanager
def ember_up(config: Path) -> Iterator[httpx.Client]:
    """The activator on ``config``, its group's replica started and ready, and a client to it."""
    server = ServerProcess(config, command="up")
    try:
        server.wait_ready(timeout_s=60)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for model in BODIES:  # wakes the group from zero: the replica starts
                timed(client, model)
            yield client
    finally:
        server.terminate()


def wakes(tmp: Path, repeats: int) -> list[dict[str, Any]]:
    results = []
    with ember_up(stack(tmp, "wakes")) as client:
        for model in BODIES:
            warm = warm_median(client, model)
            for level in LEVELS:
                runs = []
                for _ in range(repeats):
                    r = client.post(
                        f"/v2/repository/models/{model}/unload",
                        json={"parameters": {"level": level}},
                    )
                    r.raise_for_status()
                    runs.append(max(0.0, timed(client, model) - warm))
                results.append(
                    {
                        "model": model,
                        "level": level,
                        "device": "cpu",
                        "path": "ember up",
                        "wake_s_median": round(statistics.median(runs), 6),
                        "warm_s_median": round(warm, 6),
                        "runs": [round(x, 6) for x in runs],
                    }
                )
                print(f"{model:7} {level:5} wake {statistics.median(runs) * 1000:8.2f} ms")
    return results


def hot_bytes(client: httpx.Client) -> int:
    """The replica's awake bytes (``ember serve``'s own /metrics)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("ember_device_memory_hot_bytes "):
            return int(float(line.split()[1]))
    raise RuntimeError("no ember_device_memory_hot_bytes in /metrics")


def switch(tmp: Path, rounds: int) -> dict[str, Any]:
    sizes = {}
    for model in model_configs():  # each alone on ember serve, for its footprint
        alone = tmp / f"{model['name']}-alone.json"
        alone.write_text(json.dumps([model]))
        with running_server(alone) as server, httpx.Client(base_url=server.url) as client:
            sizes[model["name"]] = hot_bytes(client)
    budget = max(sizes.values())  # fits the larger alone, never both
    added: list[float] = []
    with ember_up(stack(tmp, "switch", budget)) as client:
        warm = {}
        for name in BODIES:
            timed(client, name)  # awake now, the other asleep
            warm[name] = statistics.median(timed(client, name) for _ in range(10))
        for i in range(rounds):
            name = list(BODIES)[i % 2]
            added.append(timed(client, name) - warm[name])
    ordered = sorted(added)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
    print(f"switch  p50 +{p50:.2f} ms, p99 +{p99:.2f} ms (budget {budget} bytes, sizes {sizes})")
    return {
        "p50_added_ms": round(p50, 3),
        "p99_added_ms": round(p99, 3),
        "budget_bytes": budget,
        "footprint_bytes": sizes,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where the JSON results go")
    parser.add_argument("--repeats", type=int, default=5, help="wakes per model and level")
    parser.add_argument("--rounds", type=int, default=40, help="alternating requests")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 2:
        parser.error("--repeats must be at least 1 and --rounds at least 2")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result = {
            "results": wakes(tmp, args.repeats),
            "switch": switch(tmp, args.rounds),
            "machine": {"python": sys.version.split()[0]},
            "settings": {"repeats": args.repeats, "rounds": args.rounds},
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
