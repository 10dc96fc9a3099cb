#!/usr/bin/env python3
"""Loading a model: from the local tier (cold and warm page cache) and from an S3 endpoint.

Local rows: the same generated checkpoint read by Ember's tier loader (what ``ember serve`` uses:
safetensors' memory map), ``safetensors.torch.load_file``, ``safe_open`` tensor by tensor, and
``cat`` to /dev/null, with the page cache dropped first (``/proc/sys/vm/drop_caches``, checked with
``fincore``) or warmed. Every loader's tensors are touched once per 4 KiB page, so a lazy memory
map counts the reads it defers.

S3 rows: a synthetic safetensors checkpoint (``--size-gb``, default 1) is pushed to an ``s3rver``
on loopback (npm's s3rver serves ranged GETs efficiently; moto re-reads the whole object for each
range and is useless for speed). Each loader then runs ``--repeats`` times, every time in a fresh
process with a fresh destination, and reports GB/s and client CPU-seconds per GB (user + system
of that process, all its threads). Medians go to ``--out``. Loaders:

    ember          ember's fetch into a fresh local tier (ranged GETs, verified), timed until the
                   files can be loaded; the fsync and the tier's marker follow in the background
    boto3          boto3 download_file (its own threaded multipart download) + safetensors load
    boto3-stream   one streamed GET to a file + safetensors load
    runai          run:ai model streamer reading s3:// into tensors (skipped if not installed)

    scripts/bench_load.py --out bench-results/load.json [--size-gb 1] [--repeats 3]

Not yet here (see the README): fastsafetensors and tensorizer, and a bandwidth-shaped endpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".bench-tools"
BUCKET = "bench"
LOADERS = ("ember", "boto3", "boto3-stream", "runai")
LOCAL_LOADERS = ("ember", "safetensors", "safe_open", "cat")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def s3rver_bin() -> Path:
    binary = TOOLS / "node_modules" / ".bin" / "s3rver"
    if not binary.exists():
        TOOLS.mkdir(exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--prefix", str(TOOLS), "s3rver@3"], check=True
        )
    return binary


def make_checkpoint(directory: Path, size_gb: float) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = 64 * 1024 * 1024  # bytes per tensor
    count = max(1, int(size_gb * 1024**3 // per))
    tensors = {
        f"layer.{i}.weight": rng.integers(0, 2**16, per // 2, dtype=np.uint16).view(np.float16)
        for i in range(count)
    }
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"tensors": count}))
    return directory


# ------------------------------------------------------------------------------------ workers
def worker(loader: str, uri: str, dest: Path, concurrency: int, chunk_mb: int) -> dict[str, Any]:
    """One load in this (fresh) process; returns seconds, bytes and this process's CPU seconds."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    # imports first: the clock and the CPU count only the load itself
    if loader == "ember":
        import asyncio

        from weight_cache.fetch import fetch_to_tier
        from weight_cache.stores import open_store
        from weight_cache.tier import LocalTier
    elif loader in ("boto3", "boto3-stream"):
        import boto3
        from safetensors.torch import load_file
    elif loader == "runai":
        from runai_model_streamer import SafetensorsStreamer
    else:
        raise SystemExit(f"unknown loader {loader}")
    start_cpu = _cpu()
    start = time.perf_counter()
    if loader == "ember":

        async def run() -> tuple[int, float]:
            # as `ember serve` does: the clock stops when the files are ready to load; the
            # fsync and the tier's marker finish behind it (their CPU still counts)
            store = await open_store(uri, concurrency=concurrency)
            try:
                report = await fetch_to_tier(
                    store,
                    LocalTier(dest),
                    concurrency=concurrency,
                    chunk_bytes=chunk_mb << 20,
                    commit_in_background=True,
                )
                ready = time.perf_counter()
                if report.committed is not None:
                    await report.committed
            finally:
                await store.aclose()
            return report.bytes_fetched, ready

        nbytes, ready_at = asyncio.run(run())
        return {"seconds": ready_at - start, "bytes": nbytes, "cpu_s": _cpu() - start_cpu}
    elif loader in ("boto3", "boto3-stream"):
        client = boto3.client("s3")
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / "model.safetensors"
        key = f"{prefix}/model.safetensors"
        if loader == "boto3":
            client.download_file(bucket, key, str(target))
        else:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            with target.open("wb") as out:
                for chunk in body.iter_chunks(chunk_mb << 20):
                    out.write(chunk)
        tensors = load_file(str(target))
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    else:
        nbytes = 0
        with SafetensorsStreamer() as streamer:
            streamer.stream_file(f"{uri}/model.safetensors")
            for _, tensor in streamer.get_tensors():
                nbytes += tensor.clone().numel() * tensor.element_size()  # it reuses buffers
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": nbytes, "cpu_s": _cpu() - start_cpu}


def local_worker(loader: str, path: Path) -> dict[str, Any]:
    """One load of a local file into CPU tensors, in this fresh process."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from runtime.handlers.torch_util import load_safetensors

    start_cpu = _cpu()
    start = time.perf_counter()
    if loader == "cat":
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        tensors: dict[str, torch.Tensor] = {}
    elif loader == "ember":
        tensors = load_safetensors(path, "cpu")
    elif loader == "safetensors":
        tensors = load_file(str(path))
    else:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    for t in tensors.values():  # one touch per 4 KiB page: a lazy map must read it now
        flat = t.view(-1).view(torch.uint8)
        flat[::4096].sum()
    return {
        "seconds": time.perf_counter() - start,
        "bytes": path.stat().st_size,
        "cpu_s": _cpu() - start_cpu,
    }


def drop_page_cache(path: Path) -> str | None:
    """Drop the page cache and check the file left it; None if that worked, else why not."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        return f"cannot drop the page cache ({exc.strerror}); cold rows are not cold"
    if shutil.which("fincore"):
        out = subprocess.run(
            ["fincore", "-nb", "-o", "RES", str(path)], capture_output=True, text=True
        )
        resident = int((out.stdout.split() or ["0"])[0])
        if resident > path.stat().st_size // 100:
            return f"{resident} bytes of the file stayed in the page cache after the drop"
    return None


def local_rows(model: Path, args: argparse.Namespace, notes: list[str]) -> list[dict[str, Any]]:
    path = model / "model.safetensors"
    rows = []
    for cache in ("cold", "warm"):
        for loader in LOCAL_LOADERS:
            runs = []
            for i in range(args.repeats):
                if cache == "cold":
                    problem = drop_page_cache(path)
                    if problem and problem not in notes:
                        notes.append(problem)
                else:
                    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
                cmd = [sys.executable, __file__, "--worker", f"local:{loader}", "--dest", str(path)]
                run = run_worker(
                    cmd, dict(os.environ), f"local {cache:4} {loader:11} run {i}", notes
                )
                if run is None:
                    break
                runs.append(run)
            if runs:
                rows.append(_row(loader, "local", cache, runs))
    return rows


def run_worker(
    cmd: list[str], env: dict[str, str], label: str, notes: list[str]
) -> dict[str, float] | None:
    """Run one measured load in a fresh process; its GB/s and CPU-s/GB, or None (noted)."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        notes.append(f"{label} failed: {done.stderr.strip()[-300:]}")
        return None
    run = json.loads(done.stdout.strip().splitlines()[-1])
    gb = run["bytes"] / 1e9
    result = {"gbps": gb / run["seconds"], "cpu_s_per_gb": run["cpu_s"] / gb}
    print(f"{label}: {result['gbps']:6.2f} GB/s, {result['cpu_s_per_gb']:.2f} CPU-s/GB", flush=True)
    return result


def _row(loader: str, source: str, cache: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "loader": loader,
        "source": source,
        "cache": cache,
        "gbps_median": statistics.median(r["gbps"] for r in runs),
        "cpu_s_per_gb": statistics.median(r["cpu_s_per_gb"] for r in runs),
        "runs": len(runs),
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def available(loader: str) -> bool:
    if loader != "runai":
        return True
    try:
        import runai_model_streamer  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------ driver
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="where to write the JSON results")
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--chunk-mb", type=int, default=8)
    parser.add_argument("--loaders", default=",".join(LOADERS), help="S3 loaders to run")
    parser.add_argument("--skip-local", action="store_true", help="only the S3 rows")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker and args.worker.startswith("local:"):
        print(json.dumps(local_worker(args.worker.removeprefix("local:"), Path(args.dest))))
        return 0
    if args.worker:
        result = worker(args.worker, args.uri, Path(args.dest), args.concurrency, args.chunk_mb)
        print(json.dumps(result))
        return 0
    if not args.out:
        parser.error("--out is required")

    notes: list[str] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ember-bench-load-") as tmp:
        work = Path(tmp)
        port = free_port()
        data = work / "s3rver"
        data.mkdir()
        cmd = [str(s3rver_bin()), "-d", str(data), "-a", "127.0.0.1", "-p", str(port)]
        server = subprocess.Popen(
            [*cmd, "--silent", "--configure-bucket", BUCKET],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "S3RVER",
            "AWS_SECRET_ACCESS_KEY": "S3RVER",
            "AWS_DEFAULT_REGION": "us-east-1",
            "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        try:
            _wait_port(port)
            model = make_checkpoint(work / "model", args.size_gb)
            if not args.skip_local:
                results += local_rows(model, args, notes)
            uri = f"s3://{BUCKET}/model"
            push = subprocess.run(
                [sys.executable, "-m", "ember", "cache", "push", str(model), uri],
                env=env,
                capture_output=True,
                text=True,
            )
            if push.returncode != 0:
                raise SystemExit(f"push failed: {push.stderr}")
            size = (model / "model.safetensors").stat().st_size
            print(f"pushed {size / 1e9:.2f} GB to s3rver at {endpoint}", flush=True)
            for loader in args.loaders.split(","):
                if not available(loader):
                    notes.append(f"{loader}: not installed here, skipped")
                    continue
                runs = []
                for i in range(args.repeats):
                    dest = work / f"dest-{loader}-{i}"
                    cmd = [sys.executable, __file__, "--worker", loader, "--uri", uri]
                    cmd += ["--dest", str(dest), "--concurrency", str(args.concurrency)]
                    cmd += ["--chunk-mb", str(args.chunk_mb)]
                    run = run_worker(cmd, env, f"s3 {loader:13} run {i}", notes)
                    shutil.rmtree(dest, ignore_errors=True)
                    if run is None:
                        break
                    runs.append(run)
                if runs:
                    results.append({**_row(loader, "s3", "cold", runs), "endpoint": "s3rver"})
        finally:
            server.terminate()
            server.wait(10)
    notes.append(
        "s3rver reads from the page cache of this machine: these figures are the client's cost, "
        "not a network's; no bandwidth shaper was used"
    )
    report = {
        "results": results,
        "notes": notes,
        "settings": vars(args) | {"worker": None},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for r in results:
        print(
            f"| {r['source']} | {r['cache']} | {r['loader']} | {r['gbps_median']:.2f} | "
            f"{r['cpu_s_per_gb']:.2f} |"
        )
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {out}")
    return 0


def _wait_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"s3rver did not listen on port {port}")


if __name__ == "__main__":
    raise SystemExit(main())
