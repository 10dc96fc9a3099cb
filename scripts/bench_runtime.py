#!/usr/bin/env python3
"""Ember's runtime vs KServe's ModelServer vs a bare FastAPI app, side by side in one run.

The same 784-512-10 MLP (examples/mlp), the same load generator (scripts/loadgen.py, closed loop,
keep-alive, in a process of its own), on loopback. The three servers run side by side and the runs
are interleaved (every case, every server, then the next repeat), so a noisy neighbour hits all.
For each server and case it records requests/s, p50/p99 latency and the server process's CPU
milliseconds per request (from /proc, warm-up included). Each case runs ``--repeats`` times and
the medians are reported, since this machine is shared and noisy. Cases:

    json-b1-c1   json-b1-c8   json-b1-c64   one row per request, JSON, concurrency 1/8/64
    binary-b1-c8                           one row, input in the binary tensor extension
    json-b32-c8                            32 rows per request, JSON

    scripts/bench_runtime.py --out bench-results/runtime.json [--seconds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CASES = {
    "json-b1-c1": ("json", 1, 1),
    "json-b1-c8": ("json", 1, 8),
    "json-b1-c64": ("json", 1, 64),
    "binary-b1-c8": ("binary", 1, 8),
    "json-b32-c8": ("json", 32, 8),
}
SERVERS = ("ember", "kserve", "fastapi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(name: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    peers = ROOT / "scripts" / "bench_peers"
    if name == "ember":
        cmd = [PY, "-m", "ember", "serve", "--config", str(ROOT / "examples/mlp/model.yaml")]
        cmd += ["--port", str(port), "--log-level", "warning"]
    else:
        cmd = [PY, str(peers / f"{name}_mlp.py"), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(peers)}
    out = log.open("wb")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server not ready:\n{log.read_text()[-3000:]}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def request_body(kind: str, rows: int, workdir: Path) -> tuple[Path, list[str]]:
    x = np.random.default_rng(rows).random((rows, 784), dtype=np.float32)
    headers = ["Content-Type: application/json"]
    if kind == "json":
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [rows, 784],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        ).encode()
    else:
        raw = x.tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [rows, 784],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
        ).encode()
        body = header + raw
        headers = [
            "Content-Type: application/octet-stream",
            f"Inference-Header-Content-Length: {len(header)}",
        ]
    path = workdir / f"{kind}-{rows}.body"
    path.write_bytes(body)
    return path, headers


def run_case(
    proc: subprocess.Popen[bytes],
    port: int,
    body: Path,
    headers: list[str],
    concurrency: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    cmd = [
        PY,
        str(ROOT / "scripts/loadgen.py"),
        "--url",
        f"http://127.0.0.1:{port}/v2/models/mlp/infer",
    ]
    cmd += ["--body", str(body), "--concurrency", str(concurrency)]
    cmd += ["--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    for h in headers:
        cmd += ["--header", h]
    before = cpu_seconds(proc.pid)
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.seconds + args.warmup + 120
    )
    after = cpu_seconds(proc.pid)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["cpu_ms_per_req"] = (after - before) * 1000 / max(1, result["total_requests"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; medians reported")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    args = parser.parse_args()
    subprocess.run([PY, str(ROOT / "examples/mlp/make_weights.py")], check=True)

    servers = [s for s in args.servers.split(",") if s]
    cases = [c for c in args.cases.split(",") if c]
    results: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bodies = {c: request_body(CASES[c][0], CASES[c][1], workdir) for c in cases}
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for server in servers:  # all up at once (idle ones cost nothing), runs interleaved
                port = free_port()
                log = workdir / f"{server}.log"
                procs[server] = (start_server(server, port, log), port)
                wait_ready(procs[server][0], port, log)
            for i in range(args.repeats):
                for case in cases:
                    body, headers = bodies[case]
                    for server in servers:
                        proc, port = procs[server]
                        sample = run_case(proc, port, body, headers, CASES[case][2], args)
                        samples.setdefault((server, case), []).append(sample)
                        runs.append({"server": server, "case": case, "run": i, **sample})
                        print(
                            f"{server:8} {case:13} run {i}: {sample['rps']:8.0f} req/s  "
                            f"p50 {sample['p50_ms']:6.2f} ms  p99 {sample['p99_ms']:6.2f} ms  "
                            f"cpu {sample['cpu_ms_per_req']:.3f} ms/req  errors {sample['errors']}",
                            flush=True,
                        )
        finally:
            for proc, _ in procs.values():
                proc.terminate()
            for proc, _ in procs.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    for (server, case), group in samples.items():
        results.append(
            {
                "server": server,
                "case": case,
                "rps": statistics.median(s["rps"] for s in group),
                "p50_ms": statistics.median(s["p50_ms"] for s in group),
                "p99_ms": statistics.median(s["p99_ms"] for s in group),
                "cpu_ms_per_req": statistics.median(s["cpu_ms_per_req"] for s in group),
                "errors": sum(s["errors"] for s in group),
            }
        )

    report = {
        "results": results,
        "ratios": ratios(results),
        "runs": runs,
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "repeats": args.repeats},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"wrote {out}")
    return 0


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per case: Ember's CPU per request over each peer's, and its req/s over each peer's."""
    by = {(r["server"], r["case"]): r for r in results}
    out: dict[str, dict[str, float]] = {}
    for (server, case), r in by.items():
        if server != "ember":
            continue
        for peer in ("kserve", "fastapi"):
            p = by.get((peer, case))
            if p:
                out.setdefault(case, {})[f"cpu_vs_{peer}"] = (
                    r["cpu_ms_per_req"] / p["cpu_ms_per_req"]
                )
                out[case][f"rps_vs_{peer}"] = r["rps"] / p["rps"]
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| case | server | req/s | p50 ms | p99 ms | CPU ms/req |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in sorted(
        results, key=lambda r: (list(CASES).index(r["case"]), SERVERS.index(r["server"]))
    ):
        lines.append(
            f"| {r['case']} | {r['server']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['cpu_ms_per_req']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
