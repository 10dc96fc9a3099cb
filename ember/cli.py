"""``ember``: the user's entry point. Each subcommand imports its package only when it runs, so
commands that need no model (the activator, deploy, reports) never import torch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contracts.stack import StackConfig


def _serve(args: argparse.Namespace) -> int:
    # Idle intra-op threads sleep instead of spinning (OpenMP spins for a while after each
    # parallel region by default): a spinning replica burns the CPU its activator, its batcher
    # and the node's other replicas need, and a pod's CPU quota. Read when torch is imported,
    # so it is set first; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not _status_fd_open(args.status_fd):
        return 2
    if args.standby:  # a warm interpreter of the activator's pool: become a replica when told
        from runtime.standby import wait_for_assignment

        try:
            argv = wait_for_assignment(status_fd=args.status_fd)
        except ValueError as exc:
            print(f"ember serve: {exc}", file=sys.stderr)
            return 2
        if argv is None:
            return 0
        status_fd = args.status_fd
        args = build_parser().parse_args(["serve", *argv])
        if args.standby:
            print(
                "ember serve: a standby replica's arguments cannot ask for --standby",
                file=sys.stderr,
            )
            return 2
        if args.status_fd is None:  # the replica it becomes keeps its status channel
            args.status_fd = status_fd
        elif not _status_fd_open(args.status_fd):
            return 2
    if args.config is None:
        print("ember serve: --config is required", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from ember.cache_cli import cache_dir
    from ember.checks import refuse
    from runtime.config import ServerSettings, load_model_config_files
    from runtime.errors import ConfigError
    from runtime.protocol import validation_message

    try:
        configs = load_model_config_files(args.config)
        settings = ServerSettings(
            host=args.host,
            port=args.port,
            max_request_bytes=args.max_request_bytes,
            grace_period_s=args.grace_period,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            log_level=args.log_level,
            access_log=args.access_log,
            cache_dir=cache_dir(args),
            cache_budget_bytes=int(args.cache_budget_gb * 1e9) if args.cache_budget_gb else None,
            device_memory_budget_bytes=args.device_memory_budget,
            host_memory_budget_bytes=args.host_memory_budget,
            load_on_demand=args.load_on_demand,
            fetch_concurrency=args.fetch_concurrency,
            status_fd=args.status_fd,
            exit_on_load_failure=args.exit_on_load_failure,
            termination_log=args.termination_log,
        )
    except ConfigError as exc:  # every problem of the model config, one line each
        return refuse("serve", exc)
    except ValidationError as exc:
        print(f"ember serve: {validation_message(exc)}", file=sys.stderr)
        return 2
    from runtime.server import serve

    try:
        return serve(settings, configs)
    except OSError as exc:
        print(
            f"ember serve: cannot listen on {args.host}:{args.port}: {exc.strerror}",
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
    import os

    if fd is None:
        return True
    try:
        os.fstat(fd)
    except OSError:
        print(f"ember serve: --status-fd {fd} is not an open file descriptor", file=sys.stderr)
        return False
    return True


def _up(args: argparse.Namespace) -> int:
    from activator.auth import Tokens
    from activator.server import up
    from contracts.errors import ConfigError
    from ember.checks import load_checked_stack, refuse

    try:
        # every model config too, as its replicas will read it: a typo stops the stack here
        stack = load_checked_stack(args.config)
        s = stack.settings  # a bad token stops the stack here, not at its first use
        Tokens.load(s.admin_token_env, s.admin_token_file, "admin")
        Tokens.load(s.api_token_env, s.api_token_file, "API")
    except ConfigError as exc:
        return refuse("up", exc)
    if args.log_level:
        stack = stack.model_copy(
            update={"settings": stack.settings.model_copy(update={"log_level": args.log_level})}
        )
    from knative.errors import DeployError

    try:
        return up(stack, args.host, args.port, access_log=args.access_log)
    except DeployError as exc:  # the Knative scaler found no cluster to talk to
        print(f"ember up: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"ember up: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 1


def _deploy(args: argparse.Namespace) -> int:
    from contracts.errors import ConfigError
    from ember.checks import load_checked_stack, refuse
    from knative.errors import DeployError
    from knative.render import render, to_yaml

    try:
        # every model config too: a manifest never ships what `ember serve` would refuse
        stack = _with_namespace(load_checked_stack(args.config), args.namespace)
        objects = render(stack)
        if args.kn:
            from knative.features import required_settings
            from knative.manifests import apply_commands, settings_comment, write_manifests

            manifests = write_manifests(objects, Path(args.kn))
            lines = settings_comment(required_settings(stack)) + apply_commands(manifests)
            print("\n".join(lines))
            return 0
        if args.dry_run:
            print(to_yaml(objects), end="")
            return 0
        from knative.apply import Cluster, apply_all, delete_all

        cluster = Cluster.from_environment(args.kubeconfig)
        if args.delete:
            delete_all(cluster, objects)
        else:
            apply_all(cluster, objects, timeout_s=args.timeout)
    except ConfigError as exc:
        return refuse("deploy", exc)
    except DeployError as exc:
        print(f"ember deploy: {exc}", file=sys.stderr)
        return 2 if args.dry_run or args.kn else 1
    return 0


def _prewarm(args: argparse.Namespace) -> int:
    """Ask a running activator to hold a model warm (what a pre-warm CronJob runs)."""
    import json
    import os
    import urllib.error
    import urllib.request

    url = f"{args.activator.rstrip('/')}/admin/models/{args.model}/warm"
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


def _cost_report(args: argparse.Namespace) -> int:
    import json

    from activator.cost import read_log, report
    from activator.cost_groups import from_stack
    from activator.cost_markdown import to_markdown
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
            from activator.report_html import to_html

            text = to_html(result)
        else:
            text = to_markdown(result)
    except ConfigError as exc:
        print(f"ember cost-report: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from activator.policy import Policy, parse_policy
    from activator.simulate import load_trace, simulate, to_json, to_markdown
    from activator.tiered import Tiered, parse_wakes
    from contracts.errors import ConfigError

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
        )
    except ConfigError as exc:
        print(f"ember simulate: {exc}", file=sys.stderr)
        return 2
    print(to_json(result) if args.format == "json" else to_markdown(result), end="")
    if args.format == "json":
        print()
    return 0


def _with_namespace(stack: StackConfig, namespace: str | None) -> StackConfig:
    """The stack with ``--namespace`` in place of knative.namespace, checked like the file's."""
    from pydantic import ValidationError

    from contracts.errors import ConfigError
    from contracts.stack import KnativeSettings

    if not namespace:
        return stack
    try:
        knative = KnativeSettings.model_validate(
            {**stack.knative.model_dump(), "namespace": namespace}
        )
    except ValidationError:
        raise ConfigError(f"--namespace {namespace!r} is not a Kubernetes namespace name") from None
    return stack.model_copy(update={"knative": knative})


def _status(args: argparse.Namespace) -> int:
    from contracts.errors import ConfigError
    from contracts.stack import load_stack
    from knative.apply import Cluster, service_statuses
    from knative.errors import DeployError
    from knative.groups import services

    try:
        stack = _with_namespace(load_stack(args.config), args.namespace)
        namespace = stack.knative.namespace
        groups = {name: group.members for name, group in stack.groups.items()}
        statuses = service_statuses(
            Cluster.from_environment(args.kubeconfig),
            namespace,
            list(services(stack)),  # a group's members have no Service: the group's serves them
            groups,
        )
    except ConfigError as exc:
        print(f"ember status: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:
        print(f"ember status: {exc}", file=sys.stderr)
        return 1
    print("\n".join(status.line() for status in statuses))
    return 0 if all(status.ready for status in statuses) else 3


def build_parser() -> argparse.ArgumentParser:
    from contracts.logs import LOG_LEVELS
    from ember.help import UP_REFERENCE, HelpFormatter, ember_version, finish

    parser = argparse.ArgumentParser(
        prog="ember",
        description="Ember: a scale-to-zero inference runtime speaking the KServe v2 protocol.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ember {ember_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve models over the v2 / Open Inference Protocol REST API",
        description=(
            "Serve the models of one or more config files over the KServe v2 / Open Inference "
            "Protocol. "
            "/v2/health/live answers at once; models load in the background and "
            "/v2/health/ready turns 200 when all of them can answer. SIGTERM stops accepting "
            "connections, lets in-flight requests finish within --grace-period, and exits 0. "
            "Exit status: 0 stopped, 1 cannot listen, 2 bad arguments or config, 3 a model could "
            "not load (only with --exit-on-load-failure)."
        ),
    )
    # required, unless --standby (whose process is given its --config later, on stdin)
    what = serve.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--config",
        action="append",
        help="model config file (YAML or JSON); give it again to serve the models of several "
        "files (a model name may be defined once); required, unless --standby",
    )
    what.add_argument(
        "--standby",
        action="store_true",
        help="(used by the activator's warm pool) do the imports, say 'standby' (on stdout, and "
        "on --status-fd), then read one JSON list of these arguments from stdin and serve as "
        "told, keeping the status fd",
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
        help="host memory the models put to sleep for the device memory budget may hold at "
        "level host (same units): past it the least recently used of them go down to level "
        "disk (their weights re-read from the local tier when woken), and a model larger than "
        "the whole budget sleeps at disk (default: no limit)",
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
        "staying unready. Without it the server keeps serving its other models",
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
    serve.set_defaults(func=_serve)

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
    up.add_argument("--config", required=True, help="the stack's ember.yaml")
    up.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    up.add_argument(
        "--port", type=int, default=8080, help="port to bind; 0 picks a free one (default 8080)"
    )
    up.add_argument(
        "--log-level", choices=LOG_LEVELS, help="overrides activator.log_level (default info)"
    )
    up.add_argument("--access-log", action="store_true", help="log every request")
    up.set_defaults(func=_up)

    deploy = sub.add_parser(
        "deploy",
        help="deploy the stack to Knative (or print it: --dry-run, --kn)",
        description=(
            "Render every object of ember.yaml's stack for Knative (per model: a ConfigMap with "
            "its config and a serving.knative.dev/v1 Service running the slim runtime image; for "
            "the cluster: the activator's ConfigMap, ServiceAccount, Role, RoleBinding, "
            "Deployment and Service), checked against the rules Knative's admission webhook "
            "applies, then apply them with server-side apply and wait until every Knative "
            "Service is Ready (--timeout), saying which condition failed and why. --dry-run "
            "prints multi-document YAML for `kubectl apply -f -`; --kn DIR writes one file per "
            "object into DIR and prints the kubectl/kn commands that apply them as written (and "
            "the knative-serving settings the stack needs, as comments); --delete removes the "
            "objects (PersistentVolumeClaims are kept: they hold the weights and the event log). "
            "The cluster comes from the pod's service account, --kubeconfig or $KUBECONFIG. "
            "Settings: the `knative:` section of ember.yaml (namespace, image, gpu_image, "
            "activator_image, s3_secret, models_uri, cache_size_gi, timeout_s, "
            "progress_deadline_s, cpu, memory, gpu_nodes, tier, events). "
            "Exit 2: a config that cannot be deployed; 1: the cluster refused or timed out."
        ),
    )
    deploy.add_argument("--config", required=True, help="the stack's ember.yaml")
    how = deploy.add_mutually_exclusive_group()
    how.add_argument("--dry-run", action="store_true", help="print the objects as YAML")
    how.add_argument(
        "--kn",
        metavar="DIR",
        help="write the manifests into DIR and print the kubectl/kn commands that apply them",
    )
    how.add_argument("--delete", action="store_true", help="delete the stack's objects")
    deploy.add_argument("--namespace", help="overrides knative.namespace")
    deploy.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    deploy.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for Ready (default 600)"
    )
    deploy.set_defaults(func=_deploy)

    prewarm = sub.add_parser(
        "prewarm",
        help="hold a model warm on a running activator for a while (pre-warm CronJobs run this)",
        description=(
            "POST /admin/models/MODEL/warm on the activator: it starts replicas now and keeps "
            "them, whatever the keep-alive, for --seconds. The bearer token comes from the "
            "environment variable named by --token-env."
        ),
    )
    prewarm.add_argument("--activator", required=True, help="the activator's URL")
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
            "sleeping vs by zero, host-memory-seconds)."
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
    sim.add_argument("--format", choices=["json", "md"], default="md")
    sim.set_defaults(func=_simulate)

    status = sub.add_parser(
        "status",
        help="the stack's Knative Services: ready or not (and why), min-scale, revision, URL",
        description="Report each model's Knative Service. Exit 0 when all are ready, 3 if not.",
    )
    status.add_argument("--config", required=True, help="the stack's ember.yaml")
    status.add_argument("--namespace", help="overrides knative.namespace")
    status.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    status.set_defaults(func=_status)

    from ember import cache_cli  # imports nothing heavy; the commands import lazily

    cache_cli.add_parser(sub)
    finish(parser)  # every command: its examples, laid out as written
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
