"""``ember``: the user's entry point. Each subcommand imports its package only when it runs, so
commands that need no model (the activator, deploy, reports) never import torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ember.cache_cli import cache_dir
    from runtime.config import ServerSettings, load_model_configs
    from runtime.errors import ConfigError
    from runtime.protocol import validation_message
    from runtime.server import serve

    try:
        configs = load_model_configs(args.config)
        settings = ServerSettings(
            host=args.host,
            port=args.port,
            max_request_bytes=args.max_request_bytes,
            grace_period_s=args.grace_period,
            log_level=args.log_level,
            access_log=args.access_log,
            cache_dir=cache_dir(args),
            cache_budget_bytes=int(args.cache_budget_gb * 1e9) if args.cache_budget_gb else None,
            fetch_concurrency=args.fetch_concurrency,
        )
    except ConfigError as exc:
        print(f"ember serve: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"ember serve: {validation_message(exc)}", file=sys.stderr)
        return 2
    try:
        return serve(settings, configs)
    except OSError as exc:
        print(
            f"ember serve: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember",
        description="Ember: a scale-to-zero inference runtime speaking the KServe v2 protocol.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve models over the v2 / Open Inference Protocol REST API",
        description=(
            "Serve the models of a config file over the KServe v2 / Open Inference Protocol. "
            "/v2/health/live answers at once; models load in the background and "
            "/v2/health/ready turns 200 when all of them can answer. SIGTERM stops accepting "
            "connections, lets in-flight requests finish within --grace-period, and exits 0."
        ),
    )
    serve.add_argument("--config", required=True, help="model config file (YAML or JSON)")
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
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
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
        "--fetch-concurrency",
        type=int,
        default=8,
        help="ranged reads in flight when streaming an s3:// source (default 8)",
    )
    serve.set_defaults(func=_serve)

    from ember import cache_cli  # imports nothing heavy; the commands import lazily

    cache_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
