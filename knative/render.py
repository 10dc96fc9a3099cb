"""Render the stack of ``ember.yaml`` as Kubernetes/Knative objects.

Per model: a ConfigMap holding the model's config (and, for a ``torch-module`` model, the Python
file its class comes from) and a Knative Service running ``ember serve`` on it with the slim
runtime image (the CUDA one when the model wants a GPU), starting at zero pods
(``initial-scale: "0"``), placed by its ``gpu_type`` and with its weight tier on the volume
``knative.tier`` names (:mod:`knative.pods`). For the cluster: the tier's PersistentVolumeClaim
(when it has one), the activator's ConfigMap (its ember.yaml, with the Knative scaler),
ServiceAccount, Role (GET and PATCH on exactly these Knative Services), RoleBinding, the
PersistentVolumeClaim of its event log, its Deployment and Service, and one CronJob per pre-warm
window. A model whose weights are local (a directory, ``pkg://``) is served in the cluster from
``knative.models_uri``/NAME, where ``ember cache push`` puts it. Everything is checked
(:mod:`knative.rules`, against the cluster settings :mod:`knative.features` lists) before it is
printed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from contracts.stack import ModelSpec, StackConfig
from knative.errors import DeployError
from knative.features import enabled_keys, required_settings
from knative.pods import TIER_PATH, claim, placement, tier_budget_gb, tier_objects, tier_volume
from knative.rules import check_objects
from knative.templating import render_objects

CONFIGMAP_LIMIT = 900 * 1024  # Kubernetes refuses ConfigMaps over 1 MiB; leave room
RUNTIME_PORT = 8080
EVENTS_CLAIM = "ember-activator-events"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def render(stack: StackConfig) -> list[dict[str, Any]]:
    """Every object of the stack, checked; raises :class:`DeployError` naming what is wrong."""
    if stack.knative.tier.claim == EVENTS_CLAIM:
        raise DeployError(f"knative.tier.claim: {EVENTS_CLAIM} is the activator's event log")
    objects = tier_objects(stack)
    model_files: dict[str, str] = {}
    for spec in stack.models.values():
        rendered = _model_objects(stack, spec)
        model_files[spec.name] = rendered[0]["data"]["model.yaml"]
        objects += rendered
    objects += _activator_objects(stack, model_files)
    check_objects(objects, enabled_keys(required_settings(stack)))
    return objects


def _activator_objects(stack: StackConfig, model_files: dict[str, str]) -> list[dict[str, Any]]:
    """The activator's config, RBAC, Deployment and Service, with the Knative scaler."""
    k = stack.knative
    if not k.activator_image:
        raise DeployError(f"set knative.activator_image in {stack.path.name}")
    s = stack.settings
    config = {
        "activator": {
            "events": "/var/lib/ember/events.jsonl",
            "scaler": "knative",
            "keep_alive_s": s.keep_alive_s,
            "queue_size": s.queue_size,
            "deadline_s": s.deadline_s,
            "startup_timeout_s": s.startup_timeout_s,
            "grace_period_s": s.grace_period_s,
            "admin_token_env": s.admin_token_env,
            "max_request_bytes": s.max_request_bytes,
        },
        "knative": {"namespace": k.namespace},
        "models": [
            {
                "config": f"{spec.name}.yaml",
                "min_replicas": spec.min_replicas,
                "max_replicas": spec.max_replicas,
                "container_concurrency": spec.container_concurrency,
                "target": spec.target,
                "keep_alive_s": spec.keep_alive_s,
                "queue_size": spec.queue_size,
                "deadline_s": spec.deadline_s,
                "startup_timeout_s": spec.startup_timeout_s,
            }
            for spec in stack.models.values()
        ],
    }
    files = {"ember.yaml": yaml.safe_dump(config, sort_keys=False)}
    files.update({f"{name}.yaml": text for name, text in model_files.items()})
    selector = {"app.kubernetes.io/name": "ember-activator"}
    # the event log outlives the pod: a claim of its own, and Recreate (a ReadWriteOnce volume,
    # one writer of the JSON lines at a time)
    events = claim(
        stack, EVENTS_CLAIM, size_gi=k.events.size_gi, storage_class=k.events.storage_class
    )
    objects = render_objects(
        "activator.yaml.j2",
        namespace=k.namespace,
        labels={**selector, "app.kubernetes.io/part-of": "ember"},
        selector=selector,
        services=sorted(stack.models),
        files=files,
        image=k.activator_image,
        admin_secret=k.admin_secret,
        api_secret=k.api_secret,
        events_claim=EVENTS_CLAIM,
    )
    deployment = next(i for i, o in enumerate(objects) if o["kind"] == "Deployment")
    return objects[:deployment] + events + objects[deployment:] + _prewarm_objects(stack)


def _prewarm_objects(stack: StackConfig) -> list[dict[str, Any]]:
    """A CronJob per pre-warm window: ``ember prewarm`` against the activator at its start."""
    k = stack.knative
    out: list[dict[str, Any]] = []
    for spec in stack.models.values():
        windows = spec.prewarm
        if windows and not k.admin_secret:
            raise DeployError(
                f"model '{spec.name}' has pre-warm windows: set knative.admin_secret (a Secret "
                "whose key 'token' the activator's admin API and its CronJobs share)"
            )
        for i, window in enumerate(windows):
            name = f"{spec.name}-prewarm-{i}"
            if len(name) > 52:
                raise DeployError(f"CronJob name {name!r} is over 52 characters: shorten the model")
            args = ["prewarm", "--activator", f"http://ember-activator.{k.namespace}.svc"]
            args += ["--model", spec.name, "--seconds", _number(window.duration_s)]
            args += ["--replicas", str(window.replicas)]
            out += render_objects(
                "prewarm-cronjob.yaml.j2",
                name=name,
                namespace=k.namespace,
                labels={"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "ember"},
                schedule=window.cron.text,
                time_zone=window.tz.key,
                image=k.activator_image,
                args=args,
                admin_secret=k.admin_secret,
            )
    return out


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a model's config, its module) as literal blocks, readable in a diff."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and value.strip(" \n") != "" else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _model_objects(stack: StackConfig, spec: ModelSpec) -> list[dict[str, Any]]:
    k = stack.knative
    if not _NAME.match(spec.name):
        raise DeployError(
            f"model '{spec.name}': a Knative Service name must be a DNS label (lower case "
            "letters, digits and '-', starting with a letter, at most 63 characters)"
        )
    model = _model_config(spec)
    wants_gpu = str(model.get("device", "auto")).startswith("cuda") or bool(model.get("gpu_type"))
    image = k.gpu_image if wants_gpu else k.image
    if not image:
        which = "knative.gpu_image" if wants_gpu else "knative.image"
        why = " (it wants a GPU)" if wants_gpu else ""
        raise DeployError(f"model '{spec.name}'{why}: set {which} in {stack.path.name}")
    files = {"model.yaml": ""}
    source = str(model.get("source") or "")
    if not source.startswith("s3://"):
        if not k.models_uri:
            raise DeployError(
                f"model '{spec.name}': its weights are local ({source or 'no source'}); push "
                f"them with `ember cache push DIR s3://BUCKET/PREFIX/{spec.name}` and set "
                "knative.models_uri to s3://BUCKET/PREFIX"
            )
        model["source"] = f"{k.models_uri.rstrip('/')}/{spec.name}"
    options = dict(model.get("options") or {})
    module = str(options.get("module", ""))
    if model.get("handler") == "torch-module" and ".py:" in module:
        path_part, _, attr = module.partition(":")
        module_file = Path(path_part)
        if not module_file.is_absolute():
            module_file = spec.config_path.parent / module_file
        try:
            files[module_file.name] = module_file.read_text()
        except OSError as exc:
            raise DeployError(f"model '{spec.name}': cannot read {module_file}: {exc}") from None
        options["module"] = f"{module_file.name}:{attr}"
        model["options"] = options
    model.setdefault("device", "cuda" if wants_gpu else "cpu")
    files["model.yaml"] = yaml.safe_dump(model, sort_keys=False)
    if sum(len(v.encode()) for v in files.values()) > CONFIGMAP_LIMIT:
        raise DeployError(f"model '{spec.name}': its config and module are over 900 KiB")

    pod = placement(stack, spec)  # DeployError for a gpu_type knative.gpu_nodes lacks
    env = [{"name": "EMBER_CACHE_DIR", "value": TIER_PATH}]
    limits: dict[str, str] = {"memory": k.memory}
    if wants_gpu:
        limits["nvidia.com/gpu"] = "1"
    labels = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": "ember"}
    values = {
        "service": spec.name,
        "config_map": f"{spec.name}-model",
        "namespace": k.namespace,
        "labels": labels,
        # reachable only inside the cluster: clients come in through the activator (its tokens)
        "service_labels": {**labels, "networking.knative.dev/visibility": "cluster-local"},
        "model_yaml": files["model.yaml"],
        # no pod at deploy time (nor a GPU held for one): the first request starts it
        "initial_scale": 0,
        "min_scale": spec.min_replicas,
        "max_scale": spec.max_replicas,
        "target": _number(spec.target),
        "retention": f"{int(spec.keep_alive_s)}s",
        "progress_deadline": f"{k.progress_deadline_s}s",
        "container_concurrency": spec.container_concurrency,
        "timeout_s": k.timeout_s,
        "image": image,
        "args": [
            "serve",
            "--config",
            "/etc/ember/model.yaml",
            "--host",
            "0.0.0.0",
            "--port",
            str(RUNTIME_PORT),
            "--cache-dir",
            TIER_PATH,
            "--cache-budget-gb",
            tier_budget_gb(k.cache_size_gi),
            # a model that cannot load ends the pod with why (ExitCode3, its termination
            # message): the activator's Knative scaler sees Ready=False at once instead of an
            # unready pod until its startup timeout
            "--exit-on-load-failure",
        ],
        "env": env,
        "env_from": [{"secretRef": {"name": k.s3_secret}}] if k.s3_secret else [],
        "requests": {"cpu": k.cpu, "memory": k.memory},
        "limits": limits,
        "node_selector": pod.get("nodeSelector", {}),
        "tolerations": pod.get("tolerations", []),
        "tier_path": TIER_PATH,
        "tier_volume": tier_volume(stack),
    }
    objects = render_objects("ksvc.yaml.j2", **values)
    config_map = objects[0]
    config_map["data"].update({name: body for name, body in files.items() if name != "model.yaml"})
    return objects


def _model_config(spec: ModelSpec) -> dict[str, Any]:
    raw = yaml.safe_load(spec.config_path.read_text())
    if isinstance(raw, list):
        raw = raw[0]
    if isinstance(raw, dict) and "models" in raw:
        raw = raw["models"][0]
    if not isinstance(raw, dict):
        raise DeployError(f"{spec.config_path}: not a model config")
    return dict(raw)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
