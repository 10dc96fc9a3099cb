"""``ember``: the user's entry point. Each subcommand imports its package only when it runs, so
commands that need no model (the activator, deploy, reports) never import torch.

``serve`` lives in :mod:`ember.serve_cli`, ``deploy`` and ``status`` in :mod:`ember.knative_cli`,
``cache`` in :mod:`ember.cache_cli`; the activator's commands and the reports are here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _up(args: argparse.Namespace) -> int:
    from activator.auth import Tokens
    from activator.server import up
    from contracts.errors import ConfigError
    from ember.checks import check_local_files, load_checked_stack, refuse

    try:
        # every model config too, as its replicas will read it: a typo stops the stack here
        stack = load_checked_stack(args.config)
        if stack.settings.scaler == "local":  # its replicas read the files here
            check_local_files(stack)
        s = stack.settings  # a bad token stops the stack here, not at its first use
        Tokens.load(s.admin_token_env, s.admin_token_file, "admin")
        Tokens.load(s.api_token_env, s.api_token_file, "API")
    except ConfigError as exc:
        return refuse("up", exc)
    overrides: dict[str, object] = {}
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.quiet_replicas:
        overrides["quiet_replicas"] = True
    if overrides:
        stack = stack.model_copy(update={"settings": stack.settings.model_copy(update=overrides)})
    from activator.events import EventLogUnwritable
    from knative.errors import DeployError

    try:
        return up(stack, args.host, args.port, access_log=args.access_log)
    except (DeployError, EventLogUnwritable) as exc:  # no cluster to talk to, no log to write
        print(f"ember up: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"ember up: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 1


def _prewarm(args: argparse.Namespace) -> int:
    """Ask a running activator to hold a model warm (what a pre-warm CronJob runs)."""
    import json
    import os
    import urllib.error
    import urllib.request

    from ember.urls import activator_base

    url = f"{activator_base(args.activator)}/admin/models/{args.model}/warm"
    body = {"seconds": args.seconds, "replicas": args.replicas, "source": "prewarm"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    token = os.environ.get(args.token_env)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            state = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        print(f"ember prewarm: {exc.code}: {reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"ember prewarm: cannot reach {args.activator}: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.model}: warm for {args.seconds:g}s with {args.replicas} replica(s) "
        f"(now {state.get('state')})"
    )
    return 0


def _without_analysis(command: str, exc: ModuleNotFoundError) -> int:
    """The activator's image leaves the offline analysis out: say so, not a traceback."""
    if (exc.name or "").partition(".")[0] != "analysis":
        raise exc
    print(
        f"ember {command}: this installation has no offline analysis (the activator image "
        "leaves it out): run it where ember is installed with pip",
        file=sys.stderr,
    )
    return 1


def _cost_report(args: argparse.Namespace) -> int:
    import json

    try:
        from analysis.cost import read_log, report
        from analysis.cost_groups import from_stack
        from analysis.cost_markdown import to_markdown
    except ModuleNotFoundError as exc:
        return _without_analysis("cost-report", exc)
    from contracts.errors import ConfigError
    from contracts.stack import load_stack

    try:
        prices = {}
        for item in args.price:
            key, sep, value = item.partition("=")
            try:
                if not (key and sep):
                    raise ValueError(item)
                prices[key] = float(value)
            except ValueError:
                raise ConfigError(
                    f"--price {item!r}: expected GPU=USD_PER_HOUR, MODEL=USD_PER_HOUR or "
                    "cpu=USD_PER_CORE_HOUR, e.g. L4=0.71"
                ) from None
        groups = from_stack(load_stack(args.config)) if args.config else None
        events, skipped = read_log(Path(args.events))
        result = report(
            events,
            prices=prices,
            granularity_s=args.granularity_s,
            minimum_s=args.minimum_s,
            skipped=skipped,
            groups=groups,
        )
        if args.format == "json":
            text = json.dumps(result, indent=2) + "\n"
        elif args.format == "html":
            from analysis.report_html import to_html

            text = to_html(result)
        else:
            text = to_markdown(result)
    except ConfigError as exc:
        print(f"ember cost-report: {exc}", file=sys.stderr)
        return 2
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"ember cost-report: cannot write {args.output}: {exc}", file=sys.stderr)
            return 1
        print(f"ember cost-report: wrote {args.output}", file=sys.stderr)
        return 0
    print(text, end="")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from activator.policy import Policy, parse_policy
    from activator.tiered import Tiered, parse_wakes
    from contracts.errors import ConfigError

    try:
        from analysis.simulate import load_trace, simulate, to_json, to_markdown
    except ModuleNotFoundError as exc:
        return _without_analysis("simulate", exc)

    try:
        # a bad policy is told before the trace is read
        policy: Policy | Tiered
        if args.policy == "tiered":
            policy = Tiered(wake=parse_wakes(args.wake))
        elif args.wake:
            raise ConfigError("--wake applies to --policy tiered only")
        else:
            policy = parse_policy(args.policy)
        result = simulate(
            load_trace(Path(args.trace)),
            policy,
            cold_start_s=args.cold_start,
            price_per_hour=args.price,
            weight=args.weight,
        )
    except ConfigError as exc:
        print(f"ember simulate: {exc}", file=sys.stderr)
        return 2
    print(to_json(result) if args.format == "json" else to_markdown(result), end="")
    if args.format == "json":
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from contracts.logs import LOG_LEVELS
    from ember import cache_cli, knative_cli, serve_cli  # nothing heavy: the commands import lazily
    from ember.help import UP_REFERENCE, HelpFormatter, ember_version, finish

    parser = argparse.ArgumentParser(
        prog="ember",
        description="Ember: a scale-to-zero inference runtime speaking the KServe v2 protocol.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ember {ember_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_cli.add_parser(sub)

    up = sub.add_parser(
        "up",
        help="run the one-machine stack: the activator, scaling local replicas from zero",
        description=(
            "Run the activator for the models of ember.yaml. It speaks the same v2 REST paths "
            "as `ember serve`; a request for a model with no replica waits in the model's queue "
            "while one starts (`ember serve` on a loopback port), replicas are added under load "
            "and drained and stopped after the keep-alive. SIGTERM lets held requests finish, "
            "stops every replica and exits 0."
        ),
        epilog=UP_REFERENCE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument(
        "-c", "--config", default="ember.yaml", help="the stack's ember.yaml (default ./ember.yaml)"
    )
    up.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    up.add_argument(
        "--port", type=int, default=8080, help="port to bind; 0 picks a free one (default 8080)"
    )
    up.add_argument(
        "--log-level", choices=LOG_LEVELS, help="overrides activator.log_level (default info)"
    )
    up.add_argument("--access-log", action="store_true", help="log every request")
    up.add_argument(
        "--quiet-replicas",
        action="store_true",
        help="log what the replicas log at DEBUG only (overrides activator.quiet_replicas; by "
        "default each of their lines is logged at its own level, prefixed with model and pid)",
    )
    up.set_defaults(func=_up)

    knative_cli.add_deploy_parser(sub)

    prewarm = sub.add_parser(
        "prewarm",
        help="hold a model warm on a running activator for a while (pre-warm CronJobs run this)",
        description=(
            "POST /admin/models/MODEL/warm on the activator: it starts replicas now and keeps "
            "them, whatever the keep-alive, for --seconds. The bearer token comes from the "
            "environment variable named by --token-env."
        ),
    )
    prewarm.add_argument(
        "--activator",
        required=True,
        help="the activator's URL (http://HOST:PORT; a bare HOST:PORT is taken as http)",
    )
    prewarm.add_argument("--model", required=True)
    prewarm.add_argument("--seconds", type=float, required=True, help="how long to hold it")
    prewarm.add_argument("--replicas", type=int, default=1, help="how many (default 1)")
    prewarm.add_argument(
        "--token-env", default="EMBER_ADMIN_TOKEN", help="variable holding the admin token"
    )
    prewarm.add_argument("--timeout", type=float, default=30.0, help="seconds for the call")
    prewarm.set_defaults(func=_prewarm)

    cost = sub.add_parser(
        "cost-report",
        help="what scale to zero cost and saved, from the activator's event log",
        description=(
            "Per model and in total: requests, cold starts and the latency they added (p50/p99), "
            "replica-seconds (GPU-s or CPU-s) busy / warm-idle / loading / pre-warmed-but-unused, "
            "cost, cost per 1,000 requests, what one always-on replica would have cost and the "
            "saving (or loss, and why). Prices per replica-hour: --price MODEL=USD, else the "
            "model's price_per_hour, else for a GPU model its gpu_type in the default table "
            "(H100 6.88, A100-80GB 3.43, L4 0.71, T4 0.53 USD/h on demand; --price TYPE=USD "
            "overrides), for a CPU model --price cpu=USD per core-hour times its cores. "
            "A group's replicas are billed once, in the group's row, its members' requests "
            "under it (members need no price). "
            "--format html needs the report extra: pip install 'ember[report]'."
        ),
    )
    cost.add_argument("--events", required=True, help="the events file `ember up` writes")
    cost.add_argument(
        "--config",
        help="the stack's ember.yaml: its groups (members, price) where the events do not say",
    )
    cost.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="KEY=USD",
        help="GPU=USD per GPU-hour, MODEL=USD per replica-hour, cpu=USD per core-hour; repeatable",
    )
    cost.add_argument("--format", choices=["md", "html", "json"], default="md")
    cost.add_argument(
        "-o", "--output", metavar="FILE", help="write the report to FILE (default: stdout)"
    )
    cost.add_argument(
        "--granularity-s", type=float, default=1.0, help="billing step per replica (default 1 s)"
    )
    cost.add_argument(
        "--minimum-s", type=float, default=60.0, help="billed at least this per replica (60 s)"
    )
    cost.set_defaults(func=_cost_report)

    sim = sub.add_parser(
        "simulate",
        help="replay a trace through a keep-alive/pre-warm policy (no models run)",
        description=(
            "Replay an Azure Functions 2019 trace (a directory of *_inv.csv) or an Ember event "
            "log through a policy and report cold starts (count, rate, the 75th-percentile "
            "model's rate), warm-idle GPU-seconds, loading seconds, added latency and cost, per "
            "model and in total. Policies: fixed:DURATION (fixed:10m, fixed:90s), knative (60 s "
            "stable window + 30 s grace), hybrid (idle-time histogram, Shahrad et al. ATC'20, "
            "with Ember's guards), hybrid-paper (the paper's rule alone), tiered (sleep hot -> "
            "host RAM -> disk -> zero at times chosen from the idle-time prediction and the "
            "wake costs; adds wakes per level, wake latency p50/p99, device-seconds saved by "
            "sleeping vs by zero, host-memory-seconds). An event log's requests keep their own "
            "execution time (start to end) and, for LLM answers that said their usage, their "
            "prompt and completion tokens: then, per model and in total, the tokens, the share "
            "of tokens that met a cold start (cold_start_token_rate, and its 75th-percentile "
            "model), the added latency per 1k tokens and the cost per million tokens "
            "(cost_per_million_tokens_usd, as in ember cost-report) under the policy; null "
            "where the requests say no tokens (an Azure trace)."
        ),
    )
    sim.add_argument("--trace", required=True, help="a *_inv.csv directory or an events file")
    sim.add_argument(
        "--policy", required=True, help="fixed:10m | knative | hybrid | hybrid-paper | tiered"
    )
    sim.add_argument(
        "--cold-start",
        type=float,
        default=2.0,
        help="seconds a load takes (default 2; tiered: the wake from zero)",
    )
    sim.add_argument(
        "--wake",
        action="append",
        default=[],
        metavar="LEVEL=SECONDS",
        help="tiered: a level's wake time, host or disk (defaults host=0.05 disk=0.15, measured "
        "for MiniLM on one machine: replace with your own measurements)",
    )
    sim.add_argument("--price", type=float, default=0.71, help="USD per GPU-hour (default L4)")
    sim.add_argument(
        "--weight",
        choices=["requests", "tokens"],
        default="requests",
        help="what the headline cold-start rate counts: each request (default: every trace "
        "has them, v2 models too) or each token (the requests that said tokens; the JSON "
        "always has both)",
    )
    sim.add_argument("--format", choices=["json", "md"], default="md")
    sim.set_defaults(func=_simulate)

    knative_cli.add_status_parser(sub)

    cache_cli.add_parser(sub)
    finish(parser)  # every command: its examples, laid out as written
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
