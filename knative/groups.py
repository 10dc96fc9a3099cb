"""A group of ember.yaml as one Knative Service: a warm "generic" replica serving every member.

A group's members get no Service of their own. The group's Service, named after the group, runs
``ember serve`` with one ``--config /etc/ember/MEMBER.yaml`` per member (the ConfigMap
``GROUP-models`` holds them, each shipped as a single model's is), ``--load-on-demand`` and the
group's budgets (a :class:`~contracts.serve_order.ServeOrder`, rendered): a pod is ready before
any member is loaded, and a request for a cold member costs its weight load, not a pod start.
It is scaled by the group's pool spec (min/max replicas, target, keep-alive,
containerConcurrency) and placed as its members are (they share one ``device`` and
``gpu_type``: :mod:`contracts.stack` checks it).

Unlike a model's, a group's container does not run ``--exit-on-load-failure`` and runs
``--stay-on-load-failure``: a member that cannot load must not take down the replica serving the
others, nor the failure of all of them a replica that the next request may find loadable.
With ``--load-on-demand`` the readiness probe passes before any load, so the activator's Knative
scaler reads a member's failure from the replica's repository index instead.
"""

from __future__ import annotations

from typing import Any

from contracts.stack import GroupSpec, StackConfig
from knative.errors import DeployError
from knative.service import CONFIG_DIR, check_name, pod_order, service_objects, ship


def group_objects(
    stack: StackConfig, group: GroupSpec
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The group's ConfigMap and Knative Service, and each member's shipped config (by name)."""
    what = f"group '{group.name}'"
    check_name(group.name, what)
    commands = [m for m in group.members if stack.models[m].engine == "command"]
    if commands:  # a group's Service runs Ember's server; a command engine runs its own image
        raise DeployError(
            f"{what}: {', '.join(commands)} is served by its command (engine: command), which "
            "sleeps through its calls on one machine only: on Knative deploy it as a model of "
            "its own (it scales to zero; its sleep calls are not used there)"
        )
    files: dict[str, str] = {}
    configs: dict[str, str] = {}
    configs_in_pod: list[str] = []
    gpu = False  # the members share device and gpu_type, so they all want one or none do
    for member in group.members:
        spec = stack.models[member]
        key = f"{member}.yaml"
        # a member's module file is prefixed with its name: two members' mlp.py may differ
        shipped = ship(stack, spec, config_key=key, prefix=f"{member}-")
        clash = set(files) & set(shipped.files)
        if clash:
            raise DeployError(f"{what}: two members ship {', '.join(sorted(clash))}")
        files.update(shipped.files)
        configs[member] = shipped.files[key]
        configs_in_pod.append(f"{CONFIG_DIR}/{key}")
        gpu = gpu or shipped.wants_gpu
    objects = service_objects(
        stack,
        group.pool,
        what=what,
        config_map=f"{group.name}-models",
        files=files,
        serve_args=pod_order(
            stack,
            configs_in_pod,
            load_on_demand=True,
            stay_on_load_failure=True,
            device_memory_budget=group.device_memory_budget,
            host_memory_budget=group.host_memory_budget,
        ),
        gpu=gpu,
    )
    return objects, configs


def services(stack: StackConfig) -> dict[str, tuple[str, ...]]:
    """Every Knative Service the stack renders, by name: a model's serves itself, a group's its
    members. Models first, in the stack's order, then groups."""
    out: dict[str, tuple[str, ...]] = {
        name: (name,) for name, spec in stack.models.items() if spec.group is None
    }
    out.update({name: group.members for name, group in stack.groups.items()})
    return out


def activator_entry(stack: StackConfig, group: GroupSpec) -> dict[str, Any]:
    """The group as the activator's own ember.yaml lists it (members' configs beside it)."""
    pool = group.pool
    entry: dict[str, Any] = {
        "name": group.name,
        "models": [
            {
                "config": f"{member}.yaml",
                "keep_alive_s": stack.models[member].keep_alive_s,
                "queue_size": stack.models[member].queue_size,
                "deadline_s": stack.models[member].deadline_s,
            }
            for member in group.members
        ],
        "min_replicas": pool.min_replicas,
        "max_replicas": pool.max_replicas,
        "container_concurrency": pool.container_concurrency,
        "target": pool.target,
        "keep_alive_s": pool.keep_alive_s,
        "startup_timeout_s": pool.startup_timeout_s,
        "policy": group.policy,
        "host_hold_s": group.host_hold_s,
        "disk_hold_s": group.disk_hold_s,
    }
    if group.wake:
        entry["wake"] = dict(group.wake)
    for key in ("device_memory_budget", "host_memory_budget"):
        if getattr(group, key) is not None:
            entry[key] = getattr(group, key)
    return entry
