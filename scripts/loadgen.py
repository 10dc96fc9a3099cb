#!/usr/bin/env python3
"""A small closed-loop HTTP/1.1 load generator for loopback benchmarks.

Each of ``--concurrency`` keep-alive connections sends the same prepared request, waits for the
answer, and sends again, for ``--seconds`` (after ``--warmup`` seconds that are not counted).
Raw asyncio streams keep the client's own CPU cost far below a server's, so it disturbs the
measurement little. Prints one JSON object: requests, total_requests (warm-up included), errors,
rps, p50/p90/p99 in ms.

    loadgen.py --url http://127.0.0.1:8080/v2/models/mlp/infer --body req.bin \
        --header 'Content-Type: application/json' --concurrency 8 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def build_request(url: str, body: bytes, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}"]
    lines += headers
    lines.append(f"Content-Length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length >= 0:
        await reader.readexactly(length)
    return status


async def worker(
    host: str, port: int, request: bytes, stop_at: float, count_from: float, out: dict
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            writer.write(request)
            status = await read_response(reader)
            end = time.perf_counter()
            out["total"] += 1
            if start >= count_from:
                out["latencies"].append(end - start)
                if status != 200:
                    out["errors"] += 1
    finally:
        writer.close()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run(args: argparse.Namespace, body: bytes) -> dict:
    host, port, request = build_request(args.url, body, args.header)
    now = time.perf_counter()
    count_from = now + args.warmup
    stop_at = count_from + args.seconds
    out: dict = {"latencies": [], "errors": 0, "total": 0}
    await asyncio.gather(
        *(worker(host, port, request, stop_at, count_from, out) for _ in range(args.concurrency))
    )
    latencies = sorted(out["latencies"])
    return {
        "requests": len(latencies),
        "total_requests": out["total"],  # warm-up included, for CPU per request
        "errors": out["errors"],
        "seconds": args.seconds,
        "rps": len(latencies) / args.seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p90_ms": percentile(latencies, 0.90) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", help="file holding the request body")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    body = Path(args.body).read_bytes() if args.body else b""
    json.dump(asyncio.run(run(args, body)), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
