#!/usr/bin/env python3
"""A benchmark-only loopback TCP shaper in front of an S3 endpoint: it behaves like a far one.

Real S3 gives one connection ~100 MB/s and answers a GET after tens of milliseconds; a loopback
s3rver answers at once and as fast as its CPU allows, so concurrency hardly matters there. This
proxy restores both: each connection is capped at ``--conn-mbps`` and all of them together at
``--total-mbps`` (token buckets, 64 KiB at a time), and the first byte of each response waits
until ``--latency-ms`` after the request that asked for it. Requests are recognised as client
bytes arriving on a connection (the clients here send one request at a time and never pipeline).

    scripts/shaper.py --upstream 127.0.0.1:9000 [--port 0] [--conn-mbps 100] [--total-mbps 400]
                      [--latency-ms 30]

It prints ``shaper: listening on 127.0.0.1:PORT`` and runs until it gets SIGTERM or SIGINT.
Loopback only; not for tests (timing) and not for production.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import time

PIECE = 64 * 1024


class Bucket:
    """A token bucket of ``rate`` bytes/s holding at most ``burst`` bytes."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def delay(self, n: int) -> float:
        """Take ``n`` bytes' worth now; how long to wait before sending them."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Shaper:
    def __init__(
        self, upstream: tuple[str, int], conn_mbps: float, total_mbps: float, latency_ms: float
    ) -> None:
        self.upstream = upstream
        self.conn_rate = conn_mbps * 1e6
        self.latency = latency_ms / 1000
        self.total = Bucket(total_mbps * 1e6, total_mbps * 1e6 * 0.01)
        self.bytes_sent = 0

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        asked: collections.deque[float] = collections.deque()  # when each request arrived
        own = Bucket(self.conn_rate, self.conn_rate * 0.01)

        async def upstream() -> None:
            while data := await client_r.read(PIECE):
                if not asked:
                    asked.append(time.monotonic())
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(PIECE):
                if asked:
                    # the client sent a request since the last bytes went out, and it only does
                    # once it has read the whole previous answer: these open a new answer
                    wait = asked[0] + self.latency - time.monotonic()
                    asked.clear()
                    if wait > 0:
                        await asyncio.sleep(wait)
                wait = max(own.delay(len(data)), self.total.delay(len(data)))
                if wait > 0:
                    await asyncio.sleep(wait)
                client_w.write(data)
                await client_w.drain()
                self.bytes_sent += len(data)
            client_w.close()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            client_w.close()
            server_w.close()


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    shaper = Shaper((host, int(port)), args.conn_mbps, args.total_mbps, args.latency_ms)
    server = await asyncio.start_server(shaper.handle, "127.0.0.1", args.port)
    bound = server.sockets[0].getsockname()[1]
    print(f"shaper: listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the real endpoint")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--conn-mbps", type=float, default=100.0, help="MB/s per connection")
    parser.add_argument("--total-mbps", type=float, default=400.0, help="MB/s for all")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="to each first byte")
    asyncio.run(serve(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
