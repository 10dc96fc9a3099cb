"""``ember serve --standby``: a warm interpreter for the activator's pool.

The activator's local scaler keeps a few of these ready (``activator.warm_pool``). Each has done,
before any model is asked of it, what every replica's start repeats: the imports (torch, the
server, the handlers, the S3 client) and the S3 client's first construction. Then it says so (a
:class:`contracts.replica.Standby` on its status channel, ``--status-fd``, and ``ember serve:
standby ...`` on stdout for a human) and waits on stdin for one line, a
:class:`contracts.serve_order.ServeOrder` as JSON; with it, it becomes that replica, its server
built from the order directly (what ``ember serve`` would run given the order's arguments),
keeping the status channel. An empty stdin (the pool letting it go) ends it with status 0.

Safe by construction: it is its own ``exec``-ed process, never a ``fork`` of one that has threads
or a CUDA context. It still checks, and says in its standby line, that the preloading left one
thread and no CUDA context, so the replica it becomes starts from the same state as a fresh one.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
import time
from typing import IO, Any

from contracts.replica import Standby
from contracts.serve_order import ServeOrder, decode_order

# what a replica's start imports, heaviest first; a missing optional one is skipped
PRELOAD = (
    "torch",
    "safetensors.torch",
    "tokenizers",
    "runtime.server",
    "runtime.app",
    "runtime.handlers.torch_module",
    "runtime.handlers.hf_encoder",
    "runtime.handlers.bert",
    "runtime.sources",
    "weight_cache.pulling",  # pull; it imports weight_cache.fetch
    "weight_cache.materialize",
    "weight_cache.stores",  # open_store; it imports weight_cache.s3 and weight_cache.local
)


def preload(extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Import what a start needs (and the ``extra`` modules the activator named for its
    stack's models: :mod:`contracts.preload`) and build the S3 client once; report what it cost
    and left."""
    started = time.perf_counter()
    missing = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    for name in extra:  # named by the activator: one that fails to import, however, is said
        try:
            importlib.import_module(name)
        except Exception:
            missing.append(name)
    imports_s = time.perf_counter() - started
    from weight_cache import warm_session

    asyncio.run(warm_session())
    torch = sys.modules.get("torch")
    cuda = bool(torch is not None and torch.cuda.is_initialized())
    return {
        "preload_s": round(time.perf_counter() - started, 3),
        "imports_s": round(imports_s, 3),
        "threads": threading.active_count(),
        "cuda_initialized": cuda,
        "missing": missing,
    }


def wait_for_assignment(
    stdin: IO[str] | None = None, *, status_fd: int | None = None, extra: tuple[str, ...] = ()
) -> ServeOrder | None:
    """Preload (``extra`` too), say so, then read the replica's order (None: released before
    use); :class:`~contracts.replica.ContractViolation` when the line is not an order."""
    from runtime.status import StatusChannel

    report = preload(extra)
    print(f"ember serve: standby {json.dumps(report)}", flush=True)
    StatusChannel(status_fd).send(Standby(**{**report, "missing": tuple(report["missing"])}))
    line = (stdin or sys.stdin).readline()
    if not line.strip():
        return None
    return decode_order(line)
