#!/usr/bin/env python3
"""Loading a model: from the local tier (cold and warm page cache) and from an S3 endpoint.

Local rows: the same generated checkpoint, as one file and as four shards, read by Ember's tier
loader (what ``ember serve`` uses: the whole file asked for with ``POSIX_FADV_WILLNEED``, then
safetensors' memory map), ``safetensors.torch.load_file``, ``safe_open`` tensor by tensor,
run:ai's model streamer, fastsafetensors, tensorizer (its own format, serialised from the same
tensors) and ``cat`` to /dev/null, with the page cache dropped
first (``/proc/sys/vm/drop_caches``, checked with ``fincore``) or warmed. Every loader's tensors
are touched once per 4 KiB page, so a lazy memory map counts the reads it defers. Loaders that
hand out tensors aliasing their own reused buffers (run:ai, fastsafetensors) are charged a clone,
as a caller that keeps the tensors must do. The script sets up ``.venv`` with the peers itself
(``scripts/setup --bench``) and exits non-zero, naming it, if a peer it runs cannot be had.

S3 rows: a synthetic safetensors checkpoint (``--size-gb``, default 1) is pushed to an ``s3rver``
on loopback (npm's s3rver serves ranged GETs efficiently; moto re-reads the whole object for each
range and is useless for speed). Each loader then runs ``--repeats`` times, every time in a fresh
process with a fresh destination, and reports GB/s and client CPU-seconds per GB (user + system
of that process, all its threads). The same loaders then read through ``scripts/shaper.py``, a
loopback proxy that makes the endpoint behave like a far one (``--conn-mbps`` per connection,
``--total-mbps`` in all, ``--latency-ms`` to each first byte): rows with ``"endpoint":
"shaped"``, where concurrency matters. Medians go to ``--out``. Loaders:

    ember          ember's fetch into a fresh local tier (ranged GETs, each chunk verified) with
                   tensors made as the bytes arrive, timed until the tensors are there; the
                   fsync, the whole-file sha256 and the tier's marker follow in the background
                   (their CPU still counts). ``ember@staged-cpu`` runs the GPU's one-pass
                   staging pipeline on the CPU; ``ember@cuda`` (with a GPU) the real one
    store-to-tier  the same fetch with no tensors: the tier file only
    boto3          boto3 download_file (its own threaded multipart download) + safetensors load
    boto3-stream   one streamed GET to a file + safetensors load
    runai          run:ai model streamer reading s3:// into tensors, cloned (it reuses buffers)

Directory rows (``"source": "dir"``): the model pushed to a ``file://`` store, read cold by
``cat``, ``store-to-tier``, ``ember`` and ``ember@staged-cpu``. With a CUDA device, ``@cuda``
rows join: the warm tier onto the GPU (Ember's parallel pinned reads, safetensors, fastsafetensors,
run:ai) and the streams from the directory store and S3. Every row says where its tensors went
(``device``: cpu, cuda or staged-cpu).

    scripts/bench_load.py --out bench-results/load.json [--size-gb 1] [--repeats 3]
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".bench-tools"
BUCKET = "bench"
# "loader@device": device is where the tensors end up (cpu, cuda, or staged-cpu: the GPU's
# one-pass staging pipeline run on the CPU, to measure its CPU cost where there is no GPU)
LOADERS = ("ember", "ember@staged-cpu", "store-to-tier", "boto3", "boto3-stream", "runai")
DIR_LOADERS = ("cat", "store-to-tier", "ember", "ember@staged-cpu")
CUDA_LOCAL_LOADERS = ("ember", "safetensors", "fastsafetensors", "runai")
CUDA_STREAM_LOADERS = ("ember@cuda", "runai@cuda")
LOCAL_LOADERS = (
    "ember",
    "safetensors",
    "safe_open",
    "runai",
    "fastsafetensors",
    "tensorizer",
    "cat",
)
PEER_MODULES = {
    "boto3": "boto3",
    "boto3-stream": "boto3",
    "runai": "runai_model_streamer",
    "fastsafetensors": "fastsafetensors",
    "tensorizer": "tensorizer",
}


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


def make_shards(directory: Path, single: Path, shards: int = 4) -> Path:
    """The tensors of ``single`` in ``shards`` files, with a ``model.safetensors.index.json``."""
    from safetensors.numpy import load_file, save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(single))
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {n: tensors[n] for n in names[i::shards]}
        if chunk:
            save_file(chunk, str(directory / part))
            weight_map.update(dict.fromkeys(chunk, part))
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def make_tensorizer(single: Path, target: Path) -> Path | None:
    """The same tensors in tensorizer's format, or None if tensorizer is not installed."""
    try:
        from safetensors.torch import load_file
        from tensorizer import TensorSerializer
    except ImportError:
        return None
    serializer = TensorSerializer(str(target))
    serializer.write_state_dict(load_file(str(single)))
    serializer.close()
    return target


def weight_files(model: Path) -> list[Path]:
    return sorted(model.glob("*.safetensors"))


# ------------------------------------------------------------------------------------ workers
def split(spec: str) -> tuple[str, str]:
    loader, _, device = spec.partition("@")
    return loader, device or "cpu"


def worker(spec: str, uri: str, dest: Path, concurrency: int, chunk_mb: int) -> dict[str, Any]:
    """One load in this (fresh) process; returns seconds, bytes and this process's CPU seconds."""
    loader, device = split(spec)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    # imports first: the clock and the CPU count only the load itself
    if device == "cuda":
        import torch

        torch.cuda.init()  # the context is made before the clock starts
    if loader in ("ember", "store-to-tier"):
        import asyncio

        import aiobotocore.session  # noqa: F401 - imported before the clock, as boto3 is

        from weight_cache.fetch import fetch_to_tier
        from weight_cache.materialize import TensorSink
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
    if loader in ("ember", "store-to-tier"):

        async def run() -> tuple[int, float]:
            # as `ember serve` does: the clock stops when the tensors are there (made while
            # the bytes arrived); the fsync and the tier's marker finish behind it (their CPU
            # still counts). store-to-tier makes no tensors: the tier file only.
            sink = None
            if loader == "ember":
                staged = device == "staged-cpu"
                sink = TensorSink("cpu" if staged else device, stage=staged or None)
            try:
                async with open_store(uri, concurrency=concurrency) as store:
                    report = await fetch_to_tier(
                        store,
                        LocalTier(dest),
                        concurrency=concurrency,
                        chunk_bytes=chunk_mb << 20,
                        commit_in_background=True,
                        sink=sink,
                    )
                    ready = time.perf_counter()
                    assert sink is None or sink.tensors, "no tensors were made"
                    if report.committed is not None:
                        await report.committed
            finally:
                if sink is not None:
                    sink.close()
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
                # it reuses its buffers: a copy (to the device, or a clone) is what a caller keeps
                kept = tensor.to(device) if device != "cpu" else tensor.clone()
                nbytes += kept.numel() * kept.element_size()
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": nbytes, "cpu_s": _cpu() - start_cpu}


def local_worker(spec: str, model: Path) -> dict[str, Any]:
    """One load of a local model's weights onto a device, in this fresh process."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from runtime.handlers.torch_util import load_safetensors, readahead

    loader, device = split(spec)
    if device == "cuda":
        torch.cuda.init()  # the context is made before the clock starts
    files = weight_files(model)
    if loader == "runai":
        from runai_model_streamer import SafetensorsStreamer
    elif loader == "fastsafetensors":
        from fastsafetensors import fastsafe_open
    elif loader == "tensorizer":
        from tensorizer import TensorDeserializer

        files = [model / "model.tensors"]
    start_cpu = _cpu()
    start = time.perf_counter()
    tensors: dict[str, torch.Tensor] = {}
    if loader == "cat":
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    elif loader == "ember":
        for f in files:  # every shard's reads queued up front
            readahead(f)
        for f in files:
            tensors.update(load_safetensors(f, device))
    elif loader == "safetensors":
        for f in files:
            tensors.update(load_file(str(f), device=device))
    elif loader == "safe_open":
        for f in files:
            with safe_open(str(f), framework="pt") as opened:
                tensors.update({k: opened.get_tensor(k) for k in opened.keys()})  # noqa: SIM118
    elif loader == "runai":
        with SafetensorsStreamer() as streamer:
            streamer.stream_files([str(f) for f in files])
            for name, tensor in streamer.get_tensors():
                # it reuses its buffers: a copy (to the device, or a clone) is what a caller keeps
                tensors[name] = tensor.to(device) if device != "cpu" else tensor.clone()
    elif loader == "fastsafetensors":
        target = "cuda:0" if device == "cuda" else "cpu"
        with fastsafe_open([str(f) for f in files], nogds=True, device=target) as opened:
            for name in opened.keys():  # noqa: SIM118 - not a dict
                tensors[name] = opened.get_tensor(name).clone()  # freed when it closes
    elif loader == "tensorizer":
        with TensorDeserializer(str(files[0]), device="cpu") as deserialized:
            tensors = dict(deserialized.items())
    else:
        raise SystemExit(f"unknown loader {loader}")
    for t in tensors.values():  # one touch per 4 KiB page: a lazy map must read it now
        flat = t.reshape(-1).view(torch.uint8)
        flat[::4096].sum()
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - start,
        "bytes": sum(f.stat().st_size for f in files),
        "cpu_s": _cpu() - start_cpu,
    }


def drop_page_cache(paths: list[Path]) -> str | None:
    """Drop the page cache and check the files left it; None if that worked, else why not."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        return f"cannot drop the page cache ({exc.strerror}); cold rows are not cold"
    if shutil.which("fincore"):
        for path in paths:
            out = subprocess.run(
                ["fincore", "-nb", "-o", "RES", str(path)], capture_output=True, text=True
            )
            resident = int((out.stdout.split() or ["0"])[0])
            if resident > path.stat().st_size // 100:
                return f"{resident} bytes of {path.name} stayed in the page cache after the drop"
    return None


def local_rows(
    layouts: dict[str, Path],
    tensorizer_dir: Path | None,
    args: argparse.Namespace,
    notes: list[str],
) -> list[dict[str, Any]]:
    rows = []
    specs = list(LOCAL_LOADERS)
    if cuda_available():
        specs += [f"{loader}@cuda" for loader in CUDA_LOCAL_LOADERS]
    for layout, model in layouts.items():
        for cache in ("cold", "warm") if layout == "single" else ("cold",):
            for loader in specs:
                where = model
                if loader == "tensorizer":
                    if layout != "single" or tensorizer_dir is None:
                        continue  # its own one-file format
                    where = tensorizer_dir
                files = [where / "model.tensors"] if loader == "tensorizer" else weight_files(where)
                runs = []
                for i in range(args.repeats):
                    if cache == "cold":
                        problem = drop_page_cache(files)
                        if problem:
                            _note(notes, problem)
                    else:
                        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL)
                    cmd = [sys.executable, __file__, "--worker", f"local:{loader}"]
                    cmd += ["--dest", str(where)]
                    label = f"local {layout:7} {cache:4} {loader:15} run {i}"
                    run = run_worker(cmd, dict(os.environ), label, notes)
                    if run is None:
                        break
                    runs.append(run)
                if runs:
                    rows.append({**_row(loader, "local", cache, runs), "layout": layout})
    return rows


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


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


def dir_rows(
    store: Path,
    work: Path,
    args: argparse.Namespace,
    notes: list[str],
    specs: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """From a directory store (the model pushed to ``file://``) into a fresh tier, page cache
    dropped before each run, next to ``cat`` of the same file: what the streaming pipeline
    costs when the source is as fast as a local disk."""
    rows = []
    if specs is None:
        specs = list(DIR_LOADERS) + (list(CUDA_STREAM_LOADERS[:1]) if cuda_available() else [])
    files = weight_files(store)
    for spec in specs:
        runs = []
        for i in range(args.repeats):
            problem = drop_page_cache(files)
            if problem:
                _note(notes, problem)
            dest = work / f"dir-dest-{i}"
            if spec == "cat":
                cmd = [sys.executable, __file__, "--worker", "local:cat", "--dest", str(store)]
            else:
                cmd = [sys.executable, __file__, "--worker", spec, "--uri", f"file://{store}"]
                cmd += ["--dest", str(dest), "--concurrency", str(args.concurrency)]
                cmd += ["--chunk-mb", str(args.chunk_mb)]
            run = run_worker(cmd, dict(os.environ), f"dir    {spec:18} run {i}", notes)
            shutil.rmtree(dest, ignore_errors=True)
            if run is None:
                break
            runs.append(run)
        if runs:
            rows.append(_row(spec, "dir", "cold", runs))
    return rows


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _row(spec: str, source: str, cache: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    loader, device = split(spec)
    return {
        "loader": loader,
        "device": device,
        "source": source,
        "cache": cache,
        "gbps_median": statistics.median(r["gbps"] for r in runs),
        "cpu_s_per_gb": statistics.median(r["cpu_s_per_gb"] for r in runs),
        "runs": len(runs),
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


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
    parser.add_argument(
        "--sections",
        default="local,dir,s3",
        help="which sections run: local (the tier's loaders), dir (from a directory store), s3",
    )
    parser.add_argument("--skip-shaped", action="store_true", help="no shaped endpoint rows")
    parser.add_argument("--conn-mbps", type=float, default=100.0, help="shaper: per connection")
    parser.add_argument("--total-mbps", type=float, default=200.0, help="shaper: in all")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="shaper: to first byte")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.worker:
        import benchenv

        benchenv.ensure()
        wanted = {split(spec)[0] for spec in args.loaders.split(",")}
        if args.skip_local:
            args.sections = "s3"
        wanted |= set(LOCAL_LOADERS) if "local" in args.sections else set()
        benchenv.require({n: m for n, m in PEER_MODULES.items() if n in wanted})
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
        shaper: subprocess.Popen[str] | None = None
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "S3RVER",
            "AWS_SECRET_ACCESS_KEY": "S3RVER",
            "AWS_DEFAULT_REGION": "us-east-1",
            "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        try:
            _wait_port(port)
            model = make_checkpoint(work / "model", args.size_gb)
            sections = set(args.sections.split(","))
            if "local" in sections:
                layouts = {
                    "single": model,
                    "sharded": make_shards(work / "sharded", model / "model.safetensors"),
                }
                tdir = work / "tensorizer"
                tdir.mkdir()
                made = make_tensorizer(model / "model.safetensors", tdir / "model.tensors")
                results += local_rows(layouts, tdir if made else None, args, notes)
            if "dir" in sections:
                store = work / "store"
                push_dir = subprocess.run(
                    [sys.executable, "-m", "ember", "cache", "push", str(model), f"file://{store}"],
                    capture_output=True,
                    text=True,
                )
                if push_dir.returncode != 0:
                    raise SystemExit(f"push to a directory store failed: {push_dir.stderr}")
                results += dir_rows(store, work, args, notes)
            if "s3" in sections:
                uri = f"s3://{BUCKET}/model"
                endpoint = f"http://127.0.0.1:{port}"
                push = subprocess.run(
                    [sys.executable, "-m", "ember", "cache", "push", str(model), uri],
                    env={**env, "AWS_ENDPOINT_URL": endpoint},
                    capture_output=True,
                    text=True,
                )
                if push.returncode != 0:
                    raise SystemExit(f"push failed: {push.stderr}")
                size = (model / "model.safetensors").stat().st_size
                print(f"pushed {size / 1e9:.2f} GB to s3rver at {endpoint}", flush=True)
                endpoints = {"s3rver": endpoint}
                if not args.skip_shaped:
                    shaper = subprocess.Popen(
                        [
                            sys.executable,
                            str(ROOT / "scripts" / "shaper.py"),
                            "--upstream",
                            f"127.0.0.1:{port}",
                            "--conn-mbps",
                            str(args.conn_mbps),
                            "--total-mbps",
                            str(args.total_mbps),
                            "--latency-ms",
                            str(args.latency_ms),
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    assert shaper.stdout is not None
                    endpoints["shaped"] = "http://" + shaper.stdout.readline().split()[-1]
                for name, url in endpoints.items():
                    results += s3_rows(
                        name, {**env, "AWS_ENDPOINT_URL": url}, uri, work, args, notes
                    )
        finally:
            for proc in (shaper, server):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    notes.append(
        "s3rver reads from the page cache of this machine: the s3rver rows are the client's "
        "cost, not a network's; the shaped rows go through scripts/shaper.py at "
        f"{args.conn_mbps:g} MB/s per connection, {args.total_mbps:g} MB/s in all, "
        f"{args.latency_ms:g} ms to each first byte"
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
        where = r.get("endpoint") or r.get("layout")
        print(
            f"| {r['source']} | {where or '-'} | {r['cache']} | {r['loader']} | {r['device']} | "
            f"{r['gbps_median']:.2f} | {r['cpu_s_per_gb']:.2f} |"
        )
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {out}")
    return 0


def s3_rows(
    endpoint: str,
    env: dict[str, str],
    uri: str,
    work: Path,
    args: argparse.Namespace,
    notes: list[str],
    specs: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    if specs is None:
        specs = args.loaders.split(",") + (list(CUDA_STREAM_LOADERS) if cuda_available() else [])
    for loader in specs:
        runs = []
        for i in range(args.repeats):
            dest = work / f"dest-{loader}-{i}"
            cmd = [sys.executable, __file__, "--worker", loader, "--uri", uri]
            cmd += ["--dest", str(dest), "--concurrency", str(args.concurrency)]
            cmd += ["--chunk-mb", str(args.chunk_mb)]
            run = run_worker(cmd, env, f"{endpoint:6} {loader:13} run {i}", notes)
            shutil.rmtree(dest, ignore_errors=True)
            if run is None:
                break
            runs.append(run)
        if runs:
            rows.append({**_row(loader, "s3", "cold", runs), "endpoint": endpoint})
    return rows


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
