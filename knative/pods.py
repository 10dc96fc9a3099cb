"""What a model's pod holds besides its container: where it may run and its weight tier's volume.

Placement comes from the model's ``gpu_type`` through ``knative.gpu_nodes``: its
``node_selector`` and ``tolerations`` go into the pod spec. A ``gpu_type`` with no entry is a
config error rather than a guessed label: a wrong guess leaves the pod Pending, and with
``initial-scale: "0"`` that would show only at the model's first request. An empty entry
(``L4: {}``) says "any node with a free GPU".

The weight tier (``--cache-dir``) is an ``emptyDir`` by default or one PersistentVolumeClaim that
every model's pods mount (``knative.tier``); its lock files (``locks/``) live on the same volume,
so the pods of one node share entries safely. The tier's budget is the volume's size.
"""

from __future__ import annotations

import math
from typing import Any

from contracts.stack import ModelSpec, StackConfig
from knative.errors import DeployError
from knative.templating import render_objects

TIER_PATH = "/var/cache/ember"
TIER_VOLUME = "weight-tier"


def placement(stack: StackConfig, spec: ModelSpec) -> dict[str, Any]:
    """``nodeSelector``/``tolerations`` for the model's pod spec (none without a gpu_type)."""
    if not spec.gpu_type:
        return {}
    nodes = stack.knative.gpu_nodes.get(spec.gpu_type)
    if nodes is None:
        known = ", ".join(sorted(stack.knative.gpu_nodes)) or "none"
        whose = f"group '{spec.name}'" if spec.members else f"model '{spec.name}'"
        raise DeployError(
            f"{whose} has gpu_type {spec.gpu_type}: add knative.gpu_nodes."
            f"{spec.gpu_type} to {stack.path.name} with the node_selector (and tolerations) of "
            "those nodes, e.g. {node_selector: {cloud.google.com/gke-accelerator: nvidia-l4}}, "
            f"or {{}} for any GPU node (listed: {known})"
        )
    out: dict[str, Any] = {}
    if nodes.node_selector:
        out["nodeSelector"] = dict(nodes.node_selector)
    if nodes.tolerations:
        out["tolerations"] = [t.manifest() for t in nodes.tolerations]
    return out


def tier_volume(stack: StackConfig) -> dict[str, Any]:
    """The pod volume the tier is mounted from."""
    tier = stack.knative.tier
    if tier.kind == "persistentVolumeClaim":
        return {"name": TIER_VOLUME, "persistentVolumeClaim": {"claimName": tier.claim}}
    return {"name": TIER_VOLUME, "emptyDir": {"sizeLimit": gibibytes(stack.knative.cache_size_gi)}}


def tier_objects(stack: StackConfig) -> list[dict[str, Any]]:
    """The tier's PersistentVolumeClaim, when it has one."""
    k = stack.knative
    if k.tier.kind != "persistentVolumeClaim":
        return []
    return claim(stack, k.tier.claim, size_gi=k.cache_size_gi, storage_class=k.tier.storage_class)


def claim(
    stack: StackConfig, name: str, *, size_gi: float, storage_class: str | None
) -> list[dict[str, Any]]:
    return render_objects(
        "pvc.yaml.j2",
        name=name,
        namespace=stack.knative.namespace,
        labels={"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "ember"},
        storage_class=storage_class,
        size=gibibytes(size_gi),
    )


def tier_budget_gb(size_gi: float) -> str:
    """``--cache-budget-gb`` for a volume of ``size_gi`` GiB, rounded down: the tier evicts
    before the volume is full (an emptyDir past its sizeLimit gets the pod evicted)."""
    return f"{math.floor(size_gi * 2**30 / 1e7) / 100:g}"


def gibibytes(value: float) -> str:
    return f"{int(value)}Gi" if float(value).is_integer() else f"{value}Gi"
