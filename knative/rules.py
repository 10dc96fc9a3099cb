"""What Knative's admission webhook would refuse, checked before anything is printed or sent.

The CRDs' OpenAPI schema is necessary but not sufficient: the webhook also rejects, unless turned
on in ``config-features``, ``nodeSelector``, ``tolerations``, ``affinity``, ``runtimeClassName``,
``initContainers`` and a pod ``securityContext``; volumes other than configMap, secret, projected
and emptyDir (``persistentVolumeClaim`` needs its flag, and a writable mount of one a second flag;
``hostPath`` its flag, and Knative mounts it read-only), a volume no container mounts and a mount
of no volume; container ports named anything but empty, ``h2c`` or ``http1``; more than one port;
container ``securityContext`` fields other than the ones it allows (no ``privileged``, no
``procMount``...) and added capabilities other than ``NET_BIND_SERVICE``, in init containers too;
probes or a ``lifecycle`` on an init container; two containers (init ones included) of one name;
``initial-scale`` 0 unless ``config-autoscaler`` allows it; and autoscaling annotations out of
range. Defaults are Knative's own (``config-defaults``:
``container-concurrency-max-limit`` 1000, ``max-revision-timeout-seconds`` 600;
``config-autoscaler``). ``enabled`` names the flags the stack declares it relies on
(:mod:`knative.features`); anything gated beyond them is an error.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from knative import features as f
from knative.errors import DeployError

FEATURE_GATED = {
    "nodeSelector": f.NODE_SELECTOR,
    "tolerations": f.TOLERATIONS,
    "affinity": f.AFFINITY,
    "runtimeClassName": f.RUNTIME_CLASS,
    "initContainers": f.INIT_CONTAINERS,
    "securityContext": f.SECURITY_CONTEXT,
}
UNGATED_VOLUMES = ("configMap", "secret", "projected", "emptyDir")
GATED_VOLUMES = {"persistentVolumeClaim": f.PVC, "hostPath": f.HOST_PATH}
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
# an init container runs to its end before the pod serves: nothing probes or hooks it
INIT_FORBIDDEN = ("livenessProbe", "readinessProbe", "startupProbe", "lifecycle")
MAX_CONTAINER_CONCURRENCY = 1000
MAX_TIMEOUT_S = 600
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_PREFIX = "autoscaling.knative.dev/"


def check_objects(objects: list[dict[str, Any]], enabled: Collection[str] = ()) -> None:
    for obj in objects:
        if obj.get("kind") == "Service" and obj.get("apiVersion") == "serving.knative.dev/v1":
            errors = ksvc_errors(obj, enabled)
            if errors:
                name = obj.get("metadata", {}).get("name", "?")
                raise DeployError(f"Knative Service '{name}': " + "; ".join(errors))


def ksvc_errors(ksvc: dict[str, Any], enabled: Collection[str] = ()) -> list[str]:
    """Every webhook rule the Service breaks (empty when Knative would take it), given the
    ``config-features``/``config-autoscaler`` keys in ``enabled``."""
    errors = []
    template = ksvc.get("spec", {}).get("template", {})
    spec = template.get("spec", {})
    for key, flag in FEATURE_GATED.items():
        if key in spec and flag not in enabled:
            errors.append(f"spec.template.spec.{key} needs config-features {flag}")
    errors += volume_errors(spec, enabled)
    containers = spec.get("containers", [])
    init = spec.get("initContainers", [])
    if len(containers) != 1:
        errors.append(f"one container expected, got {len(containers)}")
    for container in containers:
        ports = container.get("ports", [])
        if len(ports) > 1:
            errors.append(f"container '{container.get('name')}': more than one port")
        for port in ports:
            if port.get("name", "") not in PORT_NAMES:
                errors.append(f"port name {port.get('name')!r} is not one of '', h2c, http1")
    for container in init:
        for key in INIT_FORBIDDEN:
            if key in container:
                errors.append(f"init container '{container.get('name')}': {key} is not allowed")
    names = [c.get("name") for c in [*init, *containers]]
    for name in sorted({n for n in names if names.count(n) > 1}, key=str):
        errors.append(f"duplicate container name {name!r}")
    for container in [*init, *containers]:
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
    for key in ("responseStartTimeoutSeconds", "idleTimeoutSeconds"):
        value = spec.get(key)
        if value is not None and not 0 <= value <= timeout:
            errors.append(f"{key} {value} is outside 0..timeoutSeconds ({timeout})")
    annotations = template.get("metadata", {}).get("annotations", {})
    errors += annotation_errors(annotations, enabled)
    return errors


def volume_errors(spec: dict[str, Any], enabled: Collection[str] = ()) -> list[str]:
    """Volumes Knative takes only behind a flag, and mounts it would not let be written."""
    errors = []
    kinds: dict[str, tuple[str, dict[str, Any]]] = {}
    for volume in spec.get("volumes", []):
        sources = [k for k in volume if k != "name"]
        if len(sources) != 1:
            errors.append(f"volume '{volume.get('name')}' needs exactly one source")
            continue
        kind = sources[0]
        kinds[volume.get("name", "")] = (kind, volume.get(kind) or {})
        if kind in GATED_VOLUMES and GATED_VOLUMES[kind] not in enabled:
            errors.append(
                f"volume '{volume.get('name')}' ({kind}) needs config-features "
                f"{GATED_VOLUMES[kind]}"
            )
        elif kind not in UNGATED_VOLUMES and kind not in GATED_VOLUMES:
            errors.append(f"volume '{volume.get('name')}': {kind} volumes are not supported")
    declared = {volume.get("name", "") for volume in spec.get("volumes", [])}
    mounted: set[str] = set()
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for mount in container.get("volumeMounts", []):
            mounted.add(mount.get("name", ""))
            if mount.get("name", "") not in declared:
                errors.append(f"mount {mount.get('mountPath')}: no volume '{mount.get('name')}'")
                continue
            kind, source = kinds.get(mount.get("name", ""), ("", {}))
            if mount.get("readOnly") or source.get("readOnly"):
                continue
            if kind == "hostPath":
                errors.append(
                    f"mount {mount.get('mountPath')}: Knative mounts hostPath volumes read-only"
                )
            elif kind == "persistentVolumeClaim" and f.PVC_WRITE not in enabled:
                errors.append(
                    f"mount {mount.get('mountPath')} writes a persistentVolumeClaim: "
                    f"needs config-features {f.PVC_WRITE}"
                )
    for name in sorted(declared - mounted):
        errors.append(f"volume '{name}' is not mounted by any container")
    return errors


def annotation_errors(annotations: dict[str, str], enabled: Collection[str] = ()) -> list[str]:
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

    initial = integer(_PREFIX + "initial-scale")
    if initial == 0 and f.ZERO_INITIAL_SCALE not in enabled:
        errors.append(f"initial-scale 0 needs config-autoscaler {f.ZERO_INITIAL_SCALE}: true")
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
