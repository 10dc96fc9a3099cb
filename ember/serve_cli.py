"""``ember serve``: its arguments, and the serving process they start (or the warm standby that
waits for its order). Both go through one :class:`~contracts.serve_order.ServeOrder`: the
arguments are read into one, a standby is sent one as JSON, and the server is built from it. The
runtime is imported only when the command runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contracts.serve_order import ServeOrder


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to ``sub``."""
    from contracts.logs import LOG_FORMATS, LOG_LEVELS

    serve = sub.add_parser(
        "serve",
        help="serve models over the v2 / Open Inference Protocol REST API",
        description=(
            "Serve the models of one or more config files over the KServe v2 / Open Inference "
            "Protocol. "
            "/v2/health/live answers at once; models load in the background and "
            "/v2/health/ready turns 200 when all of them can answer. SIGTERM stops accepting "
            "connections, lets in-flight requests finish within --grace-period, and exits 0. "
            "Exit status: 0 stopped, 1 cannot listen, 2 bad arguments or config, 3 no model "
            "could load (with --exit-on-load-failure: one model could not)."
        ),
    )
    # required, unless --standby (whose process is given its --config later, on stdin)
    what = serve.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "-c",
        "--config",
        action="append",
        help="model config file (YAML or JSON); give it again to serve the models of several "
        "files (a model name may be defined once); required, unless --standby",
    )
    what.add_argument(
        "--standby",
        action="store_true",
        help="(used by the activator's warm pool) do the imports, say 'standby' (on stdout, and "
        "on --status-fd), then read one serve order (a JSON object: contracts.serve_order) "
        "from stdin and serve as told, keeping the status fd",
    )
    serve.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODULE",
        help="(with --standby) a module to import ahead as well, for the models the activator "
        "serves (a text-generation model's transformers family); repeatable, a missing one "
        "skipped",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=8080, help="port to bind; 0 picks a free one (default 8080)"
    )
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="largest request body accepted, after decompression; larger ones get 413 "
        "(default 64 MiB)",
    )
    serve.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish after SIGTERM (default 30)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a request's head may take to arrive, from its first byte (the first "
        "request: from the connection opening); past it 408 (default 10)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="longest pause, in seconds, while a request body arrives; past it 408 (default 30)",
    )
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="(default info)")
    serve.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object a line (level, logger, message, exc), which is how "
        "ember up reads its replicas' logs (default text)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--cache-dir",
        help="local tier for s3:// sources (default $EMBER_CACHE_DIR or ~/.cache/ember)",
    )
    serve.add_argument(
        "--cache-budget-gb",
        type=float,
        help="size budget of the local tier; least recently used models are evicted past it",
    )
    serve.add_argument(
        "--device-memory-budget",
        type=_size,
        metavar="BYTES",
        help="device memory the awake models' weights may hold, in bytes or with a unit (2GiB, "
        "512MiB, 1.5GB): models past it sleep (level host) and a request for one puts the least "
        "recently used awake models to sleep, after their batches, to wake it. A model larger "
        "than the whole budget is UNAVAILABLE (default: what the CUDA device has free at start; "
        "on the CPU no budget)",
    )
    serve.add_argument(
        "--host-memory-budget",
        type=_size,
        metavar="BYTES",
        help="host memory the models asleep at level host may hold (same units), whether put "
        "to sleep for the device memory budget or asked to by an unload with a level: past it "
        "the least recently used of them go down to level disk (their weights re-read from the "
        "local tier when woken), and a model larger than the whole budget sleeps at disk "
        "(default: no limit)",
    )
    serve.add_argument(
        "--load-on-demand",
        action="store_true",
        help="(used by a replica serving a group of models) register the models without "
        "loading them: each is SLEEPING ('level disk (not loaded yet)'), so the server is "
        "ready at once, and loads on its first request or repository load, within the device "
        "memory budget; a failed load leaves that model UNAVAILABLE and the others serving",
    )
    serve.add_argument(
        "--fetch-concurrency",
        type=int,
        default=8,
        help="ranged reads in flight when streaming an s3:// source (default 8)",
    )
    serve.add_argument(
        "--status-fd",
        type=int,
        metavar="N",
        help="(used by the activator) write the replica's status events (its address, each "
        "model's state and why a load failed), one JSON object a line, to file descriptor N",
    )
    serve.add_argument(
        "--exit-on-load-failure",
        action="store_true",
        help="(used in a Knative Service) when a model cannot load, write one line saying which "
        "and why (e.g. \"model 'm' could not load (weights_missing): ...\") to "
        "--termination-log, log it, stop as SIGTERM would and exit 3, so that Kubernetes and "
        "Knative report the reason (ContainerHealthy=False, ExitCode3) instead of the pod "
        "staying unready. Without it the server keeps serving its other models, and stops "
        "(exit 3) only once none could load",
    )
    serve.add_argument(
        "--stay-on-load-failure",
        action="store_true",
        help="keep serving (unready) even when no model could load, instead of exiting 3; "
        "the activator starts its replicas so",
    )
    serve.add_argument(
        "--termination-log",
        type=Path,
        default=Path("/dev/termination-log"),
        metavar="PATH",
        help="where --exit-on-load-failure writes its line: the container's "
        "terminationMessagePath (default /dev/termination-log); if it cannot be written the "
        "line is only logged",
    )
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``ember serve``: its arguments as a serve order, or (``--standby``) the order it is sent."""
    # Idle intra-op threads sleep instead of spinning (OpenMP spins for a while after each
    # parallel region by default): a spinning replica burns the CPU its activator, its batcher
    # and the node's other replicas need, and a pod's CPU quota. Read when torch is imported,
    # so it is set first; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not _status_fd_open(args.status_fd):
        return 2
    if args.preload and not args.standby:
        print("ember serve: --preload is for a --standby process", file=sys.stderr)
        return 2
    if args.standby:  # a warm interpreter of the activator's pool: become a replica when told
        from contracts.replica import ContractViolation
        from runtime.standby import wait_for_assignment

        try:
            order = wait_for_assignment(status_fd=args.status_fd, extra=tuple(args.preload))
        except ContractViolation as exc:
            print(f"ember serve: {exc}", file=sys.stderr)
            return 2
        if order is None:
            return 0
        from contracts.proc import restart_the_clock

        restart_the_clock()  # its start-up, as its ready line says it, begins with its model
        return _serve(order, status_fd=args.status_fd)  # the replica keeps its status channel
    if args.config is None:
        print("ember serve: --config is required", file=sys.stderr)
        return 2
    return _serve(
        order_of(args),
        status_fd=args.status_fd,
        max_request_bytes=args.max_request_bytes,
        grace_period_s=args.grace_period,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        access_log=args.access_log,
        fetch_concurrency=args.fetch_concurrency,
        termination_log=args.termination_log,
    )


def order_of(args: argparse.Namespace) -> ServeOrder:
    """The serve order ``ember serve``'s arguments say (what a standby would be sent)."""
    from contracts.serve_order import ServeOrder

    return ServeOrder(
        configs=tuple(Path(c) for c in args.config),
        host=args.host,
        port=args.port,
        cache_dir=None if args.cache_dir is None else Path(args.cache_dir),
        cache_budget_gb=args.cache_budget_gb,
        device_memory_budget=args.device_memory_budget,
        host_memory_budget=args.host_memory_budget,
        load_on_demand=args.load_on_demand,
        exit_on_load_failure=args.exit_on_load_failure,
        stay_on_load_failure=args.stay_on_load_failure,
        log_level=args.log_level,
        log_format=args.log_format,
    )


def _serve(order: ServeOrder, *, status_fd: int | None, **more: Any) -> int:
    """Serve what ``order`` says; ``more`` are the server's settings an order does not carry
    (a standby's keep their defaults, which are ``ember serve``'s)."""
    from pydantic import ValidationError

    from ember.cache_cli import DEFAULT_CACHE_DIR
    from ember.checks import refuse
    from runtime.config import ServerSettings, load_model_config_files
    from runtime.errors import ConfigError
    from runtime.protocol import validation_message

    cache_dir = order.cache_dir or os.environ.get("EMBER_CACHE_DIR") or DEFAULT_CACHE_DIR
    budget_gb = order.cache_budget_gb
    try:
        configs = load_model_config_files(list(order.configs))
        settings = ServerSettings(
            host=order.host,
            port=order.port,
            log_level=order.log_level,
            log_format=order.log_format,
            cache_dir=Path(cache_dir).expanduser(),
            cache_budget_bytes=int(budget_gb * 1e9) if budget_gb else None,
            device_memory_budget_bytes=order.device_memory_budget,
            host_memory_budget_bytes=order.host_memory_budget,
            load_on_demand=order.load_on_demand,
            status_fd=status_fd,
            exit_on_load_failure=order.exit_on_load_failure,
            stay_on_load_failure=order.stay_on_load_failure,
            **more,
        )
    except ConfigError as exc:  # every problem of the model config, one line each
        return refuse("serve", exc)
    except ValidationError as exc:
        print(f"ember serve: {validation_message(exc)}", file=sys.stderr)
        return 2
    commands = [c for c in configs if c.engine == "command"]
    if commands:  # another server serves it: this process pulls its weights and watches it
        if len(configs) > 1:
            names = ", ".join(c.name for c in commands)
            print(
                f"ember serve: {names} is served by its own command: serve it alone "
                "(one --config, one model)",
                file=sys.stderr,
            )
            return 2
        from runtime.command_engine import serve_command

        return serve_command(settings, commands[0])
    from runtime.server import serve

    try:
        return serve(settings, configs)
    except OSError as exc:
        print(
            f"ember serve: cannot listen on {order.host}:{order.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1


def _size(text: str) -> int:
    from contracts.sizes import parse_bytes

    try:
        size = parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 bytes")
    return size


def _status_fd_open(fd: int | None) -> bool:
    if fd is None:
        return True
    try:
        os.fstat(fd)
    except OSError:
        print(f"ember serve: --status-fd {fd} is not an open file descriptor", file=sys.stderr)
        return False
    return True
