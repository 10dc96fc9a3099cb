#!/usr/bin/env python3
"""Text generation, side by side on one machine and one model: Ember, ``transformers serve``
and the engine-only floor.

The model is examples/tiny-llm's random-weight Llama, built into a temporary folder (nothing is
downloaded), or with ``--model smollm2`` the SmolLM2-135M-Instruct that scripts/setup writes
into examples/smollm2/model. Every peer binds 127.0.0.1 only. For each engine and concurrency
C, C clients each send streamed completions back to back for ``--seconds`` (closed loop); from
the server-sent chunks the script takes the time to first token (TTFT) and the gaps between
chunks (ITL), and counts generated tokens (``usage`` when the peer sends it, else one a chunk).
Engines:

    ember               ``ember serve`` of the model, ``POST /v1/completions``, stream; its
                        config is the example's with ``max_running`` raised to the largest
                        concurrency (transformers serve's batching has no sequence bound)
    transformers-serve  transformers 5's OpenAI-compatible server on the same files, with its
                        continuous batching (``--continuous-batching``); recorded as skipped,
                        with the reason, when it cannot start (it needs ``accelerate``,
                        which scripts/setup installs)
    generate-batch      the floor: Ember's engine called in-process (no HTTP), the same
                        prompts and parameters; transformers' ``generate_batch`` takes 25 to 35 s
                        a call on a 2-core CPU whatever it generates (docs/llm.md), so the floor
                        is our engine

    activator           ``ember up`` with the model at zero: ``ttft_from_zero_s`` (a streamed
                        completion sent at zero to its first text) with one standby in the warm
                        pool (``pool``) and with none (``fresh``, a new process); then, on the
                        replica that request started, ``--activator-concurrency`` clients (8)
                        through the activator and straight to the replica, in turn (rows
                        ``ember-activator`` and ``ember-direct``; ``activator`` in the JSON: the
                        tokens/s ratio and the inter-token latency the activator adds)
    command-activator   the same through ``ember up`` for ``transformers serve`` as the model's
                        command engine (``engine: command``): ``ttft_from_zero_s.command_fresh``
                        (a new process; the weights a local folder, used in place), then rows
                        ``command-activator`` and ``command-direct`` (``command_activator`` in
                        the JSON); recorded as skipped, with the reason, when it cannot start

Each repeat runs every engine once, in turn (so the machine's drift hits all of them); the rows
are the medians over ``--repeats``, ``runs`` has every run, ``ratios`` compares at each
concurrency. Writes ``{"rows": [{engine, concurrency, tokens_per_s, ttft_p50_ms, ttft_p99_ms,
itl_p50_ms, itl_p99_ms, requests, errors}], "ratios": [...], "runs": [...],
"skipped": [{engine, reason}], ...}``.

    scripts/bench_llm.py --out bench-results/llm.json [--seconds 10] [--concurrency 1,8,32]
        [--repeats 3] [--model tiny-llm|smollm2]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENGINES = ("ember", "transformers-serve", "generate-batch", "activator", "command-activator")
# the rows the activator sections write (their names in --engines: activator, command-activator)
ROW_ENGINES = (
    "ember",
    "transformers-serve",
    "generate-batch",
    "ember-activator",
    "ember-direct",
    "command-activator",
    "command-direct",
)
SECTIONS = ("activator", "command-activator")  # engines that are sections, not server runs
MAX_SECONDS = 120.0
MAX_CONCURRENCY = 64
MAX_TOKENS_BOUND = 256
MAX_REPEATS = 9
FIGURES = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")
# greedy, each model goes on from its prompt for --max-tokens (SmolLM2 ends a greeting at once)
PROMPTS = {"tiny-llm": "Hello, world! How are you today?", "smollm2": "Once upon a time,"}
READY_TIMEOUT_S = 180.0


@dataclass
class Samples:
    """What one engine at one concurrency measured."""

    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    requests: int = 0
    errors: int = 0

    def row(self, engine: str, concurrency: int, wall: float) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)) * 1000, 3) if values else None

        return {
            "engine": engine,
            "concurrency": concurrency,
            "tokens_per_s": round(self.tokens / wall, 2) if wall > 0 else 0.0,
            "ttft_p50_ms": pct(self.ttft, 50),
            "ttft_p99_ms": pct(self.ttft, 99),
            "itl_p50_ms": pct(self.itl, 50),
            "itl_p99_ms": pct(self.itl, 99),
            "requests": self.requests,
            "errors": self.errors,
        }


# ------------------------------------------------------------------------------ the model
MODELS = ("tiny-llm", "smollm2")


def build_model(name: str, folder: Path, max_running: int) -> Path:
    """An Ember config in ``folder`` serving model ``name`` with room for ``max_running``
    sequences at once (each client's stream runs, none waits behind the example's bound):
    tiny-llm is built into ``folder``; smollm2 is the one scripts/setup wrote into
    examples/smollm2/model."""
    example = ROOT / "examples" / name
    if name == "smollm2":
        model = example / "model"
        if not (model / "config.json").is_file():
            raise SystemExit("examples/smollm2/model is missing: run scripts/setup")
    else:
        spec = importlib.util.spec_from_file_location("tiny_llm_make", example / "make.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.build(folder / "model")
    config = yaml.safe_load((example / "model.yaml").read_text())
    config["source"] = str(model)
    config["options"]["max_running"] = max(max_running, config["options"]["max_running"])
    (folder / "model.yaml").write_text(yaml.safe_dump(config))
    return folder / "model.yaml"


# ------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["HF_HUB_OFFLINE"] = "1"  # loopback only: nothing is fetched
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Polls ``url`` until it answers 200; raises with the log's tail if the server exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text()[-1500:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"not ready in {READY_TIMEOUT_S:.0f} s: {log.read_text()[-1500:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def server_command(engine: str, config: Path, name: str, port: int) -> tuple[list[str], str, str]:
    """The command, its readiness URL and the ``model`` name its requests carry."""
    if engine == "ember":
        cmd = [PY, "-m", "ember", "serve", "--config", str(config)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        return cmd, f"http://127.0.0.1:{port}/v2/health/ready", name
    model = str(yaml.safe_load(config.read_text())["source"])
    cmd = transformers_serve(model, "127.0.0.1", str(port))
    return cmd, f"http://127.0.0.1:{port}/health", model


def transformers_serve(weights: str, host: str, port: str) -> list[str]:
    exe = shutil.which("transformers", path=str(Path(PY).parent)) or "transformers"
    cmd = [exe, "serve", weights, "--host", host, "--port", port, "--device", "cpu"]
    cmd.append("--continuous-batching")  # its batching engine: the peer Ember's engine meets
    return cmd


def command_config(config: Path, folder: Path) -> Path:
    """``config``'s model served by ``transformers serve`` as its command engine."""
    ember = yaml.safe_load(config.read_text())
    model = {
        "name": ember["name"],
        "engine": "command",
        "source": ember["source"],
        "command": transformers_serve("{weights}", "{host}", "{port}"),
        "health": "/health",
    }
    (folder / "command.yaml").write_text(yaml.safe_dump(model))
    return folder / "command.yaml"


# ------------------------------------------------------------------------------ HTTP load
async def one_stream(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], samples: Samples
) -> None:
    started = time.perf_counter()
    stamps: list[float] = []
    usage_tokens = None
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            samples.errors += 1
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            if any(c.get("text") for c in chunk.get("choices", [])):
                stamps.append(time.perf_counter())
    if not stamps:
        samples.errors += 1
        return
    samples.requests += 1
    samples.ttft.append(stamps[0] - started)
    samples.itl.extend(b - a for a, b in itertools.pairwise(stamps))
    samples.tokens += usage_tokens if usage_tokens is not None else len(stamps)


async def http_load(
    base: str, model: str, prompt: str, concurrency: int, seconds: float, max_tokens: int
) -> tuple[Samples, float]:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    samples = Samples()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await one_stream(client, base + "/v1/completions", body, Samples())  # warm up
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                try:
                    await one_stream(client, base + "/v1/completions", body, samples)
                except httpx.HTTPError:
                    samples.errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


# ------------------------------------------------------------------------------ the floor
def engine_load(
    config_path: Path, text: str, concurrencies: list[int], seconds: float, max_tokens: int
) -> list[dict[str, Any]]:
    """Ember's engine in this process: the same prompt and parameters, no HTTP."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from runtime.config import load_model_configs
    from runtime.generation.params import SamplingParams
    from runtime.generation.streams import TextGenerator
    from runtime.handlers.base import handler_class

    config = load_model_configs(config_path)[0]
    handler = handler_class(config.handler)(config)
    handler.load()
    model: TextGenerator = handler  # type: ignore[assignment]  # a text-generation handler
    engine = model.generator()
    prompt = model.encode_prompt(text)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    try:
        return [closed_loop(engine, prompt, params, c, seconds) for c in concurrencies]
    finally:
        handler.unload()


def closed_loop(
    engine: Any, prompt: list[int], params: Any, concurrency: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` sequences in the engine at once, each end submitting the next."""
    from runtime.generation.streams import Delta, Event

    samples = Samples()
    lock = threading.Lock()
    finished = threading.Semaphore(0)

    def submit() -> None:
        t0 = time.perf_counter()
        stamps: list[float] = []

        def emit(event: Event) -> None:  # in the engine's thread
            if isinstance(event, Delta):
                stamps.append(time.perf_counter())
                return
            with lock:
                if stamps:
                    samples.requests += 1
                    samples.ttft.append(stamps[0] - t0)
                    samples.itl.extend(b - a for a, b in itertools.pairwise(stamps))
                    samples.tokens += event.completion_tokens
                else:
                    samples.errors += 1
            finished.release()

        engine.submit(prompt, params, emit)

    started = time.perf_counter()
    deadline = started + seconds
    for _ in range(concurrency):
        submit()
    while True:
        finished.acquire()
        if time.perf_counter() >= deadline:
            break
        submit()
    for _ in range(concurrency - 1):  # the rest finish, counted as the HTTP runs count them
        finished.acquire(timeout=120)
    return samples.row("generate-batch", concurrency, time.perf_counter() - started)


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ember vs transformers serve vs the engine-only floor: streamed completions "
        "at each concurrency, tokens/s and TTFT/ITL p50/p99 (medians of --repeats runs), as JSON.",
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help=f"per engine, concurrency and repeat (<= {MAX_SECONDS:g})",
    )
    parser.add_argument(
        "--concurrency",
        default="1,8,32",
        help=f"comma-separated client counts (each <= {MAX_CONCURRENCY})",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=32, help=f"per request (<= {MAX_TOKENS_BOUND})"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help=f"runs of every engine (<= {MAX_REPEATS})"
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="tiny-llm",
        help="tiny-llm (random weights, built here) or smollm2 (examples/smollm2, from setup)",
    )
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}"
    )
    parser.add_argument(
        "--activator-concurrency",
        type=int,
        default=8,
        help="the activator section's clients (through it, and straight to its replica)",
    )
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c]
    args.engines = [e for e in str(args.engines).split(",") if e]
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    if not args.concurrency or not all(0 < c <= MAX_CONCURRENCY for c in args.concurrency):
        parser.error(f"--concurrency values must be in [1, {MAX_CONCURRENCY}]")
    if not 0 < args.max_tokens <= MAX_TOKENS_BOUND:
        parser.error(f"--max-tokens must be in [1, {MAX_TOKENS_BOUND}]")
    if not 0 < args.repeats <= MAX_REPEATS:
        parser.error(f"--repeats must be in [1, {MAX_REPEATS}]")
    if not 0 < args.activator_concurrency <= MAX_CONCURRENCY:
        parser.error(f"--activator-concurrency must be in [1, {MAX_CONCURRENCY}]")
    if unknown := set(args.engines) - set(ENGINES):
        parser.error(f"unknown engines {sorted(unknown)}; known: {', '.join(ENGINES)}")
    return args


def run_server(
    engine: str, config: Path, name: str, args: argparse.Namespace, logs: Path
) -> list[dict[str, Any]]:
    """One run of a server peer at every concurrency; raises when it cannot start."""
    port = free_port()
    cmd, ready_url, model = server_command(engine, config, name, port)
    log = logs / f"{engine}.log"
    proc = start(cmd, log)
    rows = []
    try:
        wait_ready(proc, ready_url, log)
        for c in args.concurrency:
            base = f"http://127.0.0.1:{port}"
            samples, wall = asyncio.run(
                http_load(base, model, PROMPTS[args.model], c, args.seconds, args.max_tokens)
            )
            rows.append(samples.row(engine, c, wall))
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        stop(proc)
    return rows


def activator_run(
    config: Path,
    args: argparse.Namespace,
    logs: Path,
    *,
    warm_pool: int,
    load: bool,
    rows_as: str = "ember",
) -> tuple[float, list[dict[str, Any]]]:
    """``ember up`` with the model at zero (``warm_pool`` standbys): the seconds from a streamed
    completion sent at zero to its first text (TTFT from zero); then, with ``load``, the same
    closed loop at ``--activator-concurrency`` through the activator and straight to its replica,
    in turn, ``--repeats`` times each (rows ``{rows_as}-activator`` and ``{rows_as}-direct``)."""
    name = yaml.safe_load(config.read_text())["name"]
    stack = logs / f"{rows_as}-{warm_pool}.yaml"
    events = logs / f"{rows_as}-events-{warm_pool}.jsonl"
    stack.write_text(
        yaml.safe_dump(
            {
                "activator": {
                    "events": str(events),
                    "keep_alive_s": 600,
                    "warm_pool": warm_pool,
                    "grace_period_s": 5,
                    "startup_timeout_s": int(READY_TIMEOUT_S),
                    "cache_dir": str(logs / "tier"),
                },
                "models": [{"config": str(config), "max_replicas": 1, "container_concurrency": 64}],
            }
        )
    )
    port = free_port()
    cmd = [PY, "-m", "ember", "up", "--config", str(stack), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--quiet-replicas"]
    log = logs / f"{rows_as}-activator-{warm_pool}.log"
    proc = start(cmd, log)
    base = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    try:
        wait_ready(proc, base + "/v2/health/ready", log)
        if warm_pool:
            wait_for_metric(proc, base, "ember_activator_warm_pool_ready", log)
        prompt = PROMPTS[args.model]
        cold = Samples()
        asyncio.run(first_stream(base, name, prompt, args.max_tokens, cold))
        if not cold.ttft:
            raise RuntimeError(f"the request at zero failed: {log.read_text()[-1500:]}")
        if load:
            replica = replica_url(events)
            # straight to the replica, the model is named as its server names it (transformers
            # serve: its weights' path); through the activator, by its name in the config
            direct = served_name(replica) or name
            c = args.activator_concurrency
            for repeat in range(args.repeats):
                for engine, url, model in (
                    (f"{rows_as}-direct", replica, direct),
                    (f"{rows_as}-activator", base, name),
                ):
                    samples, wall = asyncio.run(
                        http_load(url, model, prompt, c, args.seconds, args.max_tokens)
                    )
                    rows.append({**samples.row(engine, c, wall), "repeat": repeat})
                    print(json.dumps(rows[-1]), file=sys.stderr)
        return cold.ttft[0], rows
    finally:
        stop(proc)


async def first_stream(base: str, model: str, prompt: str, max_tokens: int, out: Samples) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    body["temperature"] = 0
    async with httpx.AsyncClient(timeout=READY_TIMEOUT_S) as client:
        await one_stream(client, base + "/v1/completions", body, out)


def served_name(base: str) -> str | None:
    """The first model id the server at ``base`` lists at ``/v1/models``."""
    data = httpx.get(base + "/v1/models", timeout=10).json().get("data") or []
    return str(data[0]["id"]) if data else None


def wait_for_metric(proc: subprocess.Popen[bytes], base: str, name: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text()[-1500:]}")
        for line in httpx.get(base + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " ") and float(line.split()[1]) >= 1:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{name} never reached 1")


def replica_url(events: Path) -> str:
    """The ready replica's address, from the activator's event log (written every 50 ms)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if events.exists():
            for line in events.read_text().splitlines():
                event = json.loads(line)
                if event.get("event") == "replica_ready" and event.get("url"):
                    return str(event["url"])
        time.sleep(0.05)
    raise RuntimeError("no replica_ready event with the replica's address")


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (engine, concurrency): the median of each figure over its runs."""
    out = []
    keys = sorted(
        {(r["engine"], r["concurrency"]) for r in runs},
        key=lambda k: (ROW_ENGINES.index(k[0]), k[1]),
    )
    for engine, c in keys:
        mine = [r for r in runs if r["engine"] == engine and r["concurrency"] == c]
        row: dict[str, Any] = {"engine": engine, "concurrency": c}
        for field_ in FIGURES:
            values = [r[field_] for r in mine if r[field_] is not None]
            row[field_] = round(float(np.median(values)), 3) if values else None
        row["requests"] = sum(r["requests"] for r in mine)
        row["errors"] = sum(r["errors"] for r in mine)
        row["runs"] = len(mine)
        out.append(row)
    return out


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each concurrency: Ember's tokens/s and TTFT p50 over transformers serve's, and the
    share of the engine-only floor's tokens/s the HTTP path costs."""
    by = {(r["engine"], r["concurrency"]): r for r in rows}
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        ember, peer, floor = (by.get((e, c)) for e in ENGINES[:3])
        if ember is None:
            continue
        entry: dict[str, Any] = {"concurrency": c}
        if peer and peer["tokens_per_s"]:
            entry["tokens_per_s_vs_transformers_serve"] = round(
                ember["tokens_per_s"] / peer["tokens_per_s"], 3
            )
        if peer and peer["ttft_p50_ms"] and ember["ttft_p50_ms"] is not None:
            entry["ttft_p50_vs_transformers_serve"] = round(
                ember["ttft_p50_ms"] / peer["ttft_p50_ms"], 3
            )
        if floor and floor["tokens_per_s"]:
            entry["http_cost_vs_floor"] = round(
                1 - ember["tokens_per_s"] / floor["tokens_per_s"], 3
            )
        out.append(entry)
    return out


def activator_ratios(rows: list[dict[str, Any]], engine: str = "ember") -> dict[str, Any]:
    """Through the activator against straight to its replica: tokens/s over, ITL added."""
    by = {r["engine"]: r for r in rows}
    via, direct = by.get(f"{engine}-activator"), by.get(f"{engine}-direct")
    if via is None or direct is None or not direct["tokens_per_s"]:
        return {}
    out: dict[str, Any] = {
        "concurrency": via["concurrency"],
        "tokens_per_s_vs_direct": round(via["tokens_per_s"] / direct["tokens_per_s"], 3),
    }
    for q in ("p50", "p99"):
        a, b = via[f"itl_{q}_ms"], direct[f"itl_{q}_ms"]
        if a is not None and b is not None:
            out[f"itl_{q}_added_ms"] = round(a - b, 3)
    return out


def skip_record(engine: str, exc: Exception) -> dict[str, str]:
    """Why ``engine`` was left out: its last line, and the tail of what it said."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    print(f"{engine} skipped: {str(exc)[-300:]}", file=sys.stderr)
    return {
        "engine": engine,
        "reason": (lines[-1] if lines else repr(exc))[:500],
        "log_tail": str(exc)[-1500:],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: list[dict[str, Any]] = []
    skipped: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        folder = Path(tmp)
        config = build_model(args.model, folder, max(args.concurrency))
        name = args.model
        from_zero: dict[str, float] = {}
        if "activator" in args.engines:  # its own repeats, the replica kept between them
            from_zero["pool"], got = activator_run(config, args, folder, warm_pool=1, load=True)
            runs += got
            from_zero["fresh"], _ = activator_run(config, args, folder, warm_pool=0, load=False)
        if "command-activator" in args.engines:  # fresh: a command engine has no standby
            command = command_config(config, folder)
            try:
                from_zero["command_fresh"], got = activator_run(
                    command, args, folder, warm_pool=0, load=True, rows_as="command"
                )
                runs += got
            except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
                skipped["command-activator"] = skip_record("command-activator", exc)
        for repeat in range(args.repeats):
            for engine in args.engines:
                if engine in skipped or engine in SECTIONS:
                    continue
                if engine == "generate-batch":
                    got = engine_load(
                        config, PROMPTS[args.model], args.concurrency, args.seconds, args.max_tokens
                    )
                else:
                    try:
                        got = run_server(engine, config, name, args, folder)
                    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
                        if engine == "ember":
                            raise
                        skipped[engine] = skip_record(engine, exc)
                        continue
                runs += [{**row, "repeat": repeat} for row in got]
    rows = medians(runs)
    result = {
        "model": {
            "tiny-llm": "examples/tiny-llm (random weights)",
            "smollm2": "examples/smollm2 (SmolLM2-135M-Instruct, float32)",
        }[args.model],
        "prompt": PROMPTS[args.model],
        "max_tokens": args.max_tokens,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
        "ratios": ratios(rows),
        "ttft_from_zero_s": {k: round(v, 3) for k, v in from_zero.items()},
        "activator": activator_ratios(rows),
        "command_activator": activator_ratios(rows, "command"),
        "runs": runs,
        "skipped": list(skipped.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    shown = ("rows", "ratios", "ttft_from_zero_s", "activator", "command_activator", "skipped")
    print(json.dumps({k: result[k] for k in shown}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
