"""Render the stack of ``ember.yaml`` as Kubernetes/Knative objects.

Per model: a ConfigMap holding the model's config (and, for a ``torch-module`` model, the Python
file its class comes from) and a Knative Service running ``ember serve`` on it with the slim
runtime image (the CUDA one when the model wants a GPU), starting at zero pods
(``initial-scale: "0"``), placed by its ``gpu_type`` and with its weight tier on the volume
``knative.tier`` names (:mod:`knative.pods`; the Service itself: :mod:`knative.service`); a
model another server serves (``engine: command``) runs that server's image instead, after
Ember's image has filled the tier (:mod:`knative.engine`). Per
group: one such Service named after the group, serving every member (:mod:`knative.groups`); its
members get none. For the cluster: the tier's PersistentVolumeClaim (when it has one), the
activator's ConfigMap (its ember.yaml, with the Knative scaler, and its groups), ServiceAccount,
Role (GET and PATCH on exactly these Knative Services), RoleBinding, the PersistentVolumeClaim of
its event log, its Deployment and Service, and one CronJob per pre-warm window. A model whose
weights are local (a directory, ``pkg://``) is served in the cluster from
``knative.models_uri``/NAME, where ``ember cache push`` puts it. Everything is checked
(:mod:`knative.rules`, against the cluster settings :mod:`knative.features` lists) before it is
printed.
"""

from __future__ import annotations

from typing import Any

import yaml

from contracts.stack import StackConfig
from knative.engine import engine_objects
from knative.errors import DeployError
from knative.features import enabled_keys, required_settings
from knative.groups import activator_entry, group_objects, services
from knative.pods import claim, tier_objects
from knative.rules import check_objects
from knative.service import model_objects, number
from knative.templating import render_objects

EVENTS_CLAIM = "ember-activator-events"


def render(stack: StackConfig) -> list[dict[str, Any]]:
    """Every object of the stack, checked; raises :class:`DeployError` naming what is wrong."""
    if stack.knative.tier.claim == EVENTS_CLAIM:
        raise DeployError(f"knative.tier.claim: {EVENTS_CLAIM} is the activator's event log")
    _check_events_fit(stack)
    objects = tier_objects(stack)
    model_files: dict[str, str] = {}
    for spec in stack.models.values():
        if spec.group is None:  # a group's members are served by the group's Service
            command = spec.engine == "command"  # another server's image runs it
            rendered = engine_objects(stack, spec) if command else model_objects(stack, spec)
            model_files[spec.name] = rendered[0]["data"]["model.yaml"]
            objects += rendered
    for group in stack.groups.values():
        rendered, configs = group_objects(stack, group)
        model_files.update(configs)
        objects += rendered
    objects += _activator_objects(stack, model_files)
    _unique(objects)
    check_objects(objects, enabled_keys(required_settings(stack)))
    return objects


def _check_events_fit(stack: StackConfig) -> None:
    """The event log at its bound (the live file and every rotated one) fits its claim."""
    s, size_gi = stack.settings, stack.knative.events.size_gi
    bound = (s.event_log_keep + 1) * s.event_log_max_bytes
    if bound > size_gi * 2**30:
        raise DeployError(
            f"the event log may grow to {bound / 2**30:.2f} GiB ((event_log_keep + 1) x "
            f"event_log_max_bytes) but knative.events.size_gi is {size_gi:g}: raise size_gi "
            "or lower the bound"
        )


def _unique(objects: list[dict[str, Any]]) -> None:
    """Two objects of one kind and name would overwrite each other when applied."""
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
        if key in seen:
            raise DeployError(f"two objects are {key[1]} '{key[2]}': rename a model or group")
        seen.add(key)


def _activator_objects(stack: StackConfig, model_files: dict[str, str]) -> list[dict[str, Any]]:
    """The activator's config, RBAC, Deployment and Service, with the Knative scaler."""
    k = stack.knative
    if not k.activator_image:
        raise DeployError(f"set knative.activator_image in {stack.path.name}")
    s = stack.settings
    config = {
        "activator": {
            "events": "/var/lib/ember/events.jsonl",
            "event_log_max_bytes": int(s.event_log_max_bytes),
            "event_log_keep": s.event_log_keep,
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
            if spec.group is None
        ],
    }
    if stack.groups:
        config["groups"] = [activator_entry(stack, group) for group in stack.groups.values()]
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
        services=sorted(services(stack)),
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
            args += ["--model", spec.name, "--seconds", number(window.duration_s)]
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
