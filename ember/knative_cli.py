"""``ember deploy`` and ``ember status``: the stack on Knative. The Kubernetes client is imported
only when a command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contracts.stack import StackConfig


def add_deploy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``deploy`` to ``sub``."""
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
            "activator_image, s3_secret, hf_secret, models_uri, cache_size_gi, timeout_s, "
            "progress_deadline_s, cpu, memory, gpu_nodes, tier, events). "
            "Exit 2: a config that cannot be deployed; 1: the cluster refused or timed out."
        ),
    )
    deploy.add_argument(
        "-c", "--config", default="ember.yaml", help="the stack's ember.yaml (default ./ember.yaml)"
    )
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


def add_status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` to ``sub``."""
    status = sub.add_parser(
        "status",
        help="the stack's Knative Services, or (--url) a running activator's models",
        description=(
            "Report each model's Knative Service (ready or not and why, min-scale, revision, "
            "URL); exit 0 when all are ready, 3 if not. With --url, ask a running activator "
            "(ember up's, or the cluster's) instead: each model's state (SLEEPING with its "
            "level), replicas, queue and last cold start; exit 0, or 1 if it cannot be reached."
        ),
    )
    status.add_argument(
        "--url",
        help="a running activator (http://HOST:PORT, as ember up prints it): its models, "
        "not Knative's (tokens, where the stack sets them: $EMBER_API_TOKEN for its repository "
        "index, $EMBER_ADMIN_TOKEN for its admin API; on loopback the admin API needs none)",
    )
    status.add_argument(
        "-c", "--config", default="ember.yaml", help="the stack's ember.yaml (default ./ember.yaml)"
    )
    status.add_argument("--namespace", help="overrides knative.namespace")
    status.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    status.set_defaults(func=_status)


def _local_status(url: str) -> int:
    """A running activator's models: its repository index and its admin API's view."""
    import json
    import os
    import urllib.error
    import urllib.request

    from ember.urls import activator_base

    base = activator_base(url)

    def fetch(path: str, token_env: str, method: str = "GET") -> object:
        token = os.environ.get(token_env)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(base + path, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:  # the data plane's index with the API token, the admin API's view with the admin one
        index = fetch("/v2/repository/index", "EMBER_API_TOKEN", "POST")
        described = fetch("/admin/models", "EMBER_ADMIN_TOKEN")
    except urllib.error.HTTPError as exc:
        print(f"ember status: {base}: {exc.code} {exc.reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"ember status: cannot reach {base}: {exc}", file=sys.stderr)
        return 1
    by_name = {m["name"]: m for m in described} if isinstance(described, list) else {}
    rows = [("MODEL", "STATE", "REPLICAS", "QUEUED", "IN FLIGHT", "LAST COLD START", "REASON")]
    for entry in index if isinstance(index, list) else []:
        name = str(entry.get("name"))
        model = by_name.get(name, {})
        state = str(entry.get("state"))
        if entry.get("level"):
            state += f" ({entry['level']})"
        replicas = model.get("replicas") or []
        ready = sum(1 for r in replicas if r.get("state") == "ready")
        cold = model.get("last_cold_start_s")
        rows.append(
            (
                name,
                state,
                f"{ready}/{len(replicas)} ready" if replicas else "0",
                str(model.get("queued", "")),
                str(model.get("in_flight", "")),
                f"{cold:.2f}s" if isinstance(cold, int | float) else "-",
                str(entry.get("reason") or ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from contracts.errors import ConfigError
    from ember.checks import load_checked_stack, refuse
    from knative.errors import DeployError
    from knative.render import render, to_yaml

    try:
        # every model config too: a manifest never ships what `ember serve` would refuse
        stack = _with_namespace(load_checked_stack(args.config), args.namespace)
        objects = render(stack)
        from knative.manifests import expects_comment, images_comment

        if args.kn:
            from knative.features import required_settings
            from knative.manifests import apply_commands, settings_comment, write_manifests

            manifests = write_manifests(objects, Path(args.kn))
            lines = settings_comment(required_settings(stack)) + images_comment(objects)
            lines += expects_comment(objects)
            print("\n".join(lines + apply_commands(manifests)))
            return 0
        if args.dry_run:  # YAML on stdout (for kubectl apply -f -), the images on stderr
            print("\n".join(images_comment(objects) + expects_comment(objects)), file=sys.stderr)
            print(to_yaml(objects), end="")
            return 0
        if not args.delete:
            print("\n".join(images_comment(objects)))
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


def _status(args: argparse.Namespace) -> int:
    if args.url:
        return _local_status(args.url)
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
