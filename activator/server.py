"""``ember up``: the activator and its local replicas, under uvicorn, until SIGTERM/SIGINT.

On SIGTERM the activator stops accepting connections, lets the requests it holds (queued ones
included) finish within the grace period, drains and stops every replica, and exits 0.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys

import uvicorn

from activator.app import Activator
from activator.config import StackConfig
from activator.scaler import LocalScaler


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def up(stack: StackConfig, host: str, port: int, *, access_log: bool = False) -> int:
    settings = stack.settings
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    scaler = LocalScaler(cache_dir=settings.cache_dir)
    activator = Activator(stack, scaler, host=host)
    config = uvicorn.Config(
        activator,
        log_level=settings.log_level,
        access_log=access_log,
        timeout_graceful_shutdown=int(settings.grace_period_s) or None,
        server_header=False,
        date_header=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once it has shut down; this turns that into a no-op
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    print(f"ember up: listening on http://{host}:{bound}", flush=True)
    server.run(sockets=[sock])
    return 0 if server.started else 1
