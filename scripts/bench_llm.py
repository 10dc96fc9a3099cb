#!/usr/bin/env python3
"""Text generation, side by side on one machine and one model: Ember, ``transformers serve``
and the engine-only floor.

The model is examples/tiny-llm's random-weight Llama, built into a temporary folder (nothing is
downloaded). Every peer binds 127.0.0.1 only. For each engine and concurrency C, C clients each
send streamed completions back to back for ``--seconds`` (closed loop); from the server-sent
chunks the script takes the time to first token (TTFT) and the gaps between chunks (ITL), and
counts generated tokens (``usage`` when the peer sends it, else one a chunk). Engines:

    ember               ``ember serve`` of the tiny model, ``POST /v1/completions``, stream
    transformers-serve  transformers 5's OpenAI-compatible server on the same files; recorded as
                        skipped, with the reason, when it cannot start (it needs ``accelerate``
                        and FastAPI/uvicorn)
    generate-batch      the floor: Ember's engine called in-process (no HTTP), the same
                        prompts and parameters; transformers' ``generate_batch`` took 40 s for
                        20 tokens on a 2-core CPU (docs/llm.md), so the floor is our engine

Writes ``{"rows": [{engine, concurrency, tokens_per_s, ttft_p50_ms, ttft_p99_ms, itl_p50_ms,
itl_p99_ms, requests}], "skipped": [{engine, reason}], ...}``.

    scripts/bench_llm.py --out bench-results/llm.json [--seconds 10] [--concurrency 1,8,32]
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

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENGINES = ("ember", "transformers-serve", "generate-batch")
MAX_SECONDS = 120.0
MAX_CONCURRENCY = 64
MAX_TOKENS_BOUND = 256
PROMPT = "Hello, world! How are you today?"
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
def build_model(folder: Path) -> Path:
    """examples/tiny-llm's model and an Ember config serving it, in ``folder``."""
    spec = importlib.util.spec_from_file_location(
        "tiny_llm_make", ROOT / "examples/tiny-llm/make.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(folder / "model")
    shutil.copy(ROOT / "examples/tiny-llm/model.yaml", folder / "model.yaml")
    return folder / "model"


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


def server_command(engine: str, folder: Path, port: int) -> tuple[list[str], str, str]:
    """The command, its readiness URL and the ``model`` name its requests carry."""
    if engine == "ember":
        cmd = [PY, "-m", "ember", "serve", "--config", str(folder / "model.yaml")]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        return cmd, f"http://127.0.0.1:{port}/v2/health/ready", "tiny-llm"
    exe = shutil.which("transformers", path=str(Path(PY).parent)) or "transformers"
    model = str(folder / "model")
    cmd = [exe, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    return cmd, f"http://127.0.0.1:{port}/health", model


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
    base: str, model: str, concurrency: int, seconds: float, max_tokens: int
) -> tuple[Samples, float]:
    body = {
        "model": model,
        "prompt": PROMPT,
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
    folder: Path, concurrencies: list[int], seconds: float, max_tokens: int
) -> list[dict[str, Any]]:
    """Ember's engine in this process: the same prompt and parameters, no HTTP."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from runtime.config import load_model_configs
    from runtime.generation.params import SamplingParams
    from runtime.generation.streams import TextGenerator
    from runtime.handlers.base import handler_class

    config = load_model_configs(folder / "model.yaml")[0]
    handler = handler_class(config.handler)(config)
    handler.load()
    model: TextGenerator = handler  # type: ignore[assignment]  # a text-generation handler
    engine = model.generator()
    prompt = model.encode_prompt(PROMPT)
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
        "of examples/tiny-llm at each concurrency, tokens/s and TTFT/ITL p50/p99, as JSON.",
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help=f"per engine and concurrency (<= {MAX_SECONDS:g})",
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
        "--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}"
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
    if unknown := set(args.engines) - set(ENGINES):
        parser.error(f"unknown engines {sorted(unknown)}; known: {', '.join(ENGINES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        folder = Path(tmp)
        build_model(folder)
        for engine in args.engines:
            if engine == "generate-batch":
                rows += engine_load(folder, args.concurrency, args.seconds, args.max_tokens)
                continue
            port = free_port()
            cmd, ready_url, model = server_command(engine, folder, port)
            log = folder / f"{engine}.log"
            proc = start(cmd, log)
            try:
                wait_ready(proc, ready_url, log)
                for c in args.concurrency:
                    base = f"http://127.0.0.1:{port}"
                    samples, wall = asyncio.run(
                        http_load(base, model, c, args.seconds, args.max_tokens)
                    )
                    rows.append(samples.row(engine, c, wall))
                    print(json.dumps(rows[-1]), file=sys.stderr)
            except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
                if engine == "ember":
                    raise
                lines = [line for line in str(exc).splitlines() if line.strip()]
                reason = (lines[-1] if lines else repr(exc))[:500]
                skipped.append({"engine": engine, "reason": reason, "log_tail": str(exc)[-1500:]})
                print(f"{engine} skipped: {str(exc)[-300:]}", file=sys.stderr)
            finally:
                stop(proc)
    result = {
        "model": "examples/tiny-llm (random weights)",
        "prompt": PROMPT,
        "max_tokens": args.max_tokens,
        "seconds": args.seconds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
