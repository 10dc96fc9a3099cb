"""What Knative's admission webhook would refuse, checked before anything is printed or sent.

The CRDs' OpenAPI schema is necessary but not sufficient: the webhook also rejects, unless turned
on in ``config-features``, ``nodeSelector``, ``tolerations``, ``affinity``, ``runtimeClassName``
and ``initContainers``; container ports named anything but empty, ``h2c`` or ``http1``; more than
one port; container ``securityContext`` fields other than the ones it allows (no ``privileged``,
no ``procMount``...) and added capabilities other than ``NET_BIND_SERVICE``; and autoscaling
annotations out of range. Defaults are Knative's own
(``config-defaults``: ``container-concurrency-max-limit`` 1000, ``max-revision-timeout-seconds``
600; ``config-autoscaler``).
"""

from __future__ import annotations

import re
from typing import Any

from knative.errors import DeployError

FEATURE_GATED = ("nodeSelector", "tolerations", "affinity", "runtimeClassName", "initContainers")
PORT_NAMES = ("", "h2c", "http1")
SECURITY_CONTEXT_FIELDS = {
    "allowPrivilegeEscalation",
    "capabilities",
    "readOnlyRootFilesystem",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "seccompProfile",
}
MAX_CONTAINER_CONCURRENCY = 1000
MAX_TIMEOUT_S = 600
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_PREFIX = "autoscaling.knative.dev/"


def check_objects(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj.get("kind") == "Service" and obj.get("apiVersion") == "serving.knative.dev/v1":
            errors = ksvc_errors(obj)
            if errors:
                name = obj.get("metadata", {}).get("name", "?")
                raise DeployError(f"Knative Service '{name}': " + "; ".join(errors))


def ksvc_errors(ksvc: dict[str, Any]) -> list[str]:
    """Every webhook rule the Service breaks (empty when Knative would take it)."""
    errors = []
    template = ksvc.get("spec", {}).get("template", {})
    spec = template.get("spec", {})
    for key in FEATURE_GATED:
        if key in spec:
            errors.append(f"spec.template.spec.{key} needs a config-features flag")
    containers = spec.get("containers", [])
    if len(containers) != 1:
        errors.append(f"one container expected, got {len(containers)}")
    for container in containers:
        ports = container.get("ports", [])
        if len(ports) > 1:
            errors.append(f"container '{container.get('name')}': more than one port")
        for port in ports:
            if port.get("name", "") not in PORT_NAMES:
                errors.append(f"port name {port.get('name')!r} is not one of '', h2c, http1")
        context = container.get("securityContext", {})
        for key in sorted(set(context) - SECURITY_CONTEXT_FIELDS):
            errors.append(f"securityContext.{key} is not allowed in a Knative container")
        for cap in context.get("capabilities", {}).get("add", []):
            if cap != "NET_BIND_SERVICE":
                errors.append(
                    f"securityContext.capabilities.add {cap!r} needs a config-features flag"
                )
    cc = spec.get("containerConcurrency", 0)
    if not 0 <= cc <= MAX_CONTAINER_CONCURRENCY:
        errors.append(f"containerConcurrency {cc} is outside 0..{MAX_CONTAINER_CONCURRENCY}")
    timeout = spec.get("timeoutSeconds", 300)
    if not 0 <= timeout <= MAX_TIMEOUT_S:
        errors.append(f"timeoutSeconds {timeout} is outside 0..{MAX_TIMEOUT_S}")
    annotations = template.get("metadata", {}).get("annotations", {})
    errors += annotation_errors(annotations)
    return errors


def annotation_errors(annotations: dict[str, str]) -> list[str]:
    errors = []

    def integer(key: str) -> int | None:
        if key not in annotations:
            return None
        try:
            value = int(annotations[key])
        except ValueError:
            errors.append(f"{key}={annotations[key]!r} is not an integer")
            return None
        if value < 0:
            errors.append(f"{key}={value} is negative")
        return value

    low = integer(_PREFIX + "min-scale")
    high = integer(_PREFIX + "max-scale")
    if low is not None and high is not None and high and low > high:
        errors.append(f"min-scale {low} is above max-scale {high}")
    if _PREFIX + "target" in annotations:
        try:
            target = float(annotations[_PREFIX + "target"])
            if target < 0.01:
                errors.append(f"target {target} is below 0.01")
        except ValueError:
            errors.append(f"target {annotations[_PREFIX + 'target']!r} is not a number")
    for key in (
        _PREFIX + "scale-to-zero-pod-retention-period",
        "serving.knative.dev/progress-deadline",
    ):
        if key in annotations and not _DURATION.match(annotations[key]):
            errors.append(f"{key}={annotations[key]!r} is not a duration (e.g. 90s, 5m)")
    return errors
