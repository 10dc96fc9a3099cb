"""The Knative cluster settings a rendered stack relies on.

Knative turns most pod-spec fields off by default (``config-features`` in ``knative-serving``) and
refuses ``autoscaling.knative.dev/initial-scale: "0"`` unless ``config-autoscaler`` allows it.
What a stack uses follows from its ``knative:`` settings; :func:`required_settings` lists it, the
webhook rules (:mod:`knative.rules`) let those fields through and no others, and ``ember deploy
--kn`` prints the list above its commands.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.stack import StackConfig

AUTOSCALER = "config-autoscaler"
FEATURES = "config-features"

ZERO_INITIAL_SCALE = "allow-zero-initial-scale"
NODE_SELECTOR = "kubernetes.podspec-nodeselector"
TOLERATIONS = "kubernetes.podspec-tolerations"
PVC = "kubernetes.podspec-persistent-volume-claim"
PVC_WRITE = "kubernetes.podspec-persistent-volume-write"
HOST_PATH = "kubernetes.podspec-volumes-hostpath"
SECURITY_CONTEXT = "kubernetes.podspec-securitycontext"
AFFINITY = "kubernetes.podspec-affinity"
RUNTIME_CLASS = "kubernetes.podspec-runtimeclassname"
INIT_CONTAINERS = "kubernetes.podspec-init-containers"


@dataclass(frozen=True, slots=True)
class ClusterSetting:
    """One key of a ``knative-serving`` ConfigMap that must hold ``value``, and why."""

    config_map: str
    key: str
    value: str
    why: str

    def line(self) -> str:
        return f'{self.config_map}: {self.key}: "{self.value}" ({self.why})'


def required_settings(stack: StackConfig) -> list[ClusterSetting]:
    """What ``knative-serving``'s ConfigMaps must allow for this stack's objects."""
    out = [
        ClusterSetting(
            AUTOSCALER,
            ZERO_INITIAL_SCALE,
            "true",
            "every model starts at zero pods: initial-scale 0",
        )
    ]
    k = stack.knative
    used = {spec.gpu_type for spec in stack.models.values() if spec.gpu_type}
    nodes = [k.gpu_nodes[t] for t in sorted(used) if t in k.gpu_nodes]
    if any(n.node_selector for n in nodes):
        out.append(ClusterSetting(FEATURES, NODE_SELECTOR, "enabled", "knative.gpu_nodes"))
    if any(n.tolerations for n in nodes):
        out.append(ClusterSetting(FEATURES, TOLERATIONS, "enabled", "knative.gpu_nodes"))
    if k.tier.kind == "persistentVolumeClaim":
        out.append(ClusterSetting(FEATURES, PVC, "enabled", "knative.tier"))
        out.append(ClusterSetting(FEATURES, PVC_WRITE, "enabled", "knative.tier"))
    engines = sorted(s.name for s in stack.models.values() if s.engine == "command")
    if engines:  # Ember's image fills the tier before the engine's starts (knative.engine)
        why = f"engine: command ({', '.join(engines)}): the init container filling its tier"
        out.append(ClusterSetting(FEATURES, INIT_CONTAINERS, "enabled", why))
    return out


def enabled_keys(settings: list[ClusterSetting]) -> frozenset[str]:
    return frozenset(s.key for s in settings)
