"""Apply, delete and report the stack's objects through the kubernetes client.

Applying is server-side apply (``PATCH`` with ``application/apply-patch+yaml``, field manager
``ember``, forced): one call creates or updates each object. Then every model's Knative Service
is watched until Knative reports it ``Ready`` for the generation just applied; a ``False``
condition or the timeout ends the wait with the condition, its reason and its message. A Service
rendered with ``initial-scale: "0"`` and ``min-scale: "0"`` is Ready without a pod (Knative's
autoscaler counts it initialized at zero ready pods), so this wait starts no model and holds no
GPU: it says the revision was accepted, its image resolved and its route programmed, not that
the model loads (its first request says that). Deleting leaves PersistentVolumeClaims in place:
they hold the weight tier and the activator's event log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from knative.client import load_cluster_config
from knative.errors import DeployError

FIELD_MANAGER = "ember"
APPLY = "application/apply-patch+yaml"
KSVC = ("serving.knative.dev", "v1", "services")


class Cluster:
    """The few typed calls ``ember deploy`` makes, by kind."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Cluster:
        load_cluster_config(kubeconfig)  # first: it says so if the client is not installed
        from kubernetes import client

        return cls(client.ApiClient())

    def _calls(self, obj: dict[str, Any]) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """(apply, delete) for the object's kind."""
        kind, version = obj["kind"], obj["apiVersion"]
        if version == "serving.knative.dev/v1" and kind == "Service":

            def apply_ksvc(name: str, ns: str, body: Any, **kw: Any) -> Any:
                return self.custom.patch_namespaced_custom_object(
                    *KSVC[:2], ns, KSVC[2], name, body, **kw
                )

            def delete_ksvc(name: str, ns: str) -> Any:
                return self.custom.delete_namespaced_custom_object(*KSVC[:2], ns, KSVC[2], name)

            return apply_ksvc, delete_ksvc
        table = {
            ("v1", "ConfigMap"): (self.core, "config_map"),
            ("v1", "Service"): (self.core, "service"),
            ("v1", "ServiceAccount"): (self.core, "service_account"),
            ("v1", "PersistentVolumeClaim"): (self.core, "persistent_volume_claim"),
            ("apps/v1", "Deployment"): (self.apps, "deployment"),
            ("rbac.authorization.k8s.io/v1", "Role"): (self.rbac, "role"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding"): (self.rbac, "role_binding"),
            ("batch/v1", "CronJob"): (self.batch, "cron_job"),
        }
        if (version, kind) not in table:
            raise DeployError(f"cannot apply {version} {kind}")
        api, noun = table[(version, kind)]
        return getattr(api, f"patch_namespaced_{noun}"), getattr(api, f"delete_namespaced_{noun}")

    def apply(self, obj: dict[str, Any]) -> None:
        apply, _ = self._calls(obj)
        meta = obj["metadata"]
        _call(
            f"apply {obj['kind']} {meta['namespace']}/{meta['name']}",
            apply,
            meta["name"],
            meta["namespace"],
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )

    def delete(self, obj: dict[str, Any]) -> bool:
        """Delete the object; False if it was not there."""
        from kubernetes.client.exceptions import ApiException

        _, delete = self._calls(obj)
        meta = obj["metadata"]
        try:
            delete(meta["name"], meta["namespace"])
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise DeployError(
                f"delete {obj['kind']} {meta['namespace']}/{meta['name']}: "
                f"{exc.status} {exc.reason}"
            ) from None
        return True

    def ksvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self.custom.get_namespaced_custom_object(*KSVC[:2], namespace, KSVC[2], name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise DeployError(f"get Knative service {namespace}/{name}: {exc.status}") from None
        return obj if isinstance(obj, dict) else None


def _call(what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return fn(*args, **kw)
    except ApiException as exc:
        detail = exc.body if isinstance(exc.body, str) and len(exc.body) < 500 else exc.reason
        raise DeployError(f"{what}: {exc.status} {detail}") from None
    except OSError as exc:  # urllib3 wraps connection failures in OSError subclasses
        raise DeployError(f"{what}: cannot reach the cluster: {exc}") from None


def apply_all(
    cluster: Cluster,
    objects: list[dict[str, Any]],
    *,
    timeout_s: float = 300.0,
    poll_s: float = 1.0,
    log: Callable[[str], None] = print,
) -> None:
    for obj in objects:
        cluster.apply(obj)
        log(f"applied {obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}")
    for obj in objects:
        if obj["apiVersion"] == "serving.knative.dev/v1":
            meta = obj["metadata"]
            wait_ready(cluster, meta["namespace"], meta["name"], timeout_s, poll_s)
            annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
            idle = annotations.get("autoscaling.knative.dev/min-scale", "0") == "0"
            why = " (no pod: its first request starts one)" if idle else ""
            log(f"ready: Knative service {meta['namespace']}/{meta['name']}{why}")


def wait_ready(
    cluster: Cluster, namespace: str, name: str, timeout_s: float, poll_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    where = f"Knative service {namespace}/{name}"
    conditions: list[dict[str, Any]] = []
    while True:
        ksvc = cluster.ksvc(namespace, name)
        if ksvc is None:
            raise DeployError(f"{where} vanished after it was applied")
        status = ksvc.get("status") or {}
        conditions = status.get("conditions") or []
        current = status.get("observedGeneration") == ksvc.get("metadata", {}).get("generation")
        ready = next((c for c in conditions if c.get("type") == "Ready"), None)
        if current and ready and ready.get("status") == "True":
            return
        if current and ready and ready.get("status") == "False":
            raise DeployError(f"{where} is not ready: {_describe(conditions)}")
        if time.monotonic() > deadline:
            pending = _describe(conditions) or "no conditions reported yet"
            raise DeployError(f"{where} not ready within {timeout_s:g}s: {pending}")
        time.sleep(poll_s)


def _describe(conditions: list[dict[str, Any]]) -> str:
    """The conditions that are not True: type, reason and message."""
    out = []
    for c in conditions:
        if c.get("status") != "True":
            text = f"{c.get('type')}={c.get('status')}"
            if c.get("reason"):
                text += f" ({c['reason']}"
                text += f": {c['message']})" if c.get("message") else ")"
            out.append(text)
    return "; ".join(out)


def delete_all(
    cluster: Cluster, objects: list[dict[str, Any]], log: Callable[[str], None] = print
) -> None:
    for obj in reversed(objects):
        what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if obj["kind"] == "PersistentVolumeClaim":
            log(f"kept {what} (its data; kubectl delete it to drop that)")
            continue
        gone = cluster.delete(obj)
        log(f"deleted {what}" if gone else f"not there: {what}")


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """A model's (or a group's) Knative Service as ``ember status`` reports it."""

    name: str
    deployed: bool
    ready: bool
    min_scale: str = "0"
    revision: str = "-"
    url: str = "-"
    reason: str = ""  # when not ready: the conditions that are not True, with reason and message
    members: tuple[str, ...] = ()  # a group's Service: the models its replicas serve

    def line(self) -> str:
        """The human line: ``NAME: ready, min-scale N, revision R, URL`` or why it is not; a
        group's name is followed by its members: ``NAME (group: A, B)``."""
        name = f"{self.name} (group: {', '.join(self.members)})" if self.members else self.name
        if not self.deployed:
            return f"{name}: not deployed"
        state = "ready" if self.ready else f"not ready ({self.reason})"
        details = f"min-scale {self.min_scale}, revision {self.revision}, {self.url}"
        return f"{name}: {state}, {details}"


def service_status(
    cluster: Cluster, namespace: str, name: str, members: tuple[str, ...] = ()
) -> ServiceStatus:
    ksvc = cluster.ksvc(namespace, name)
    if ksvc is None:
        return ServiceStatus(name, deployed=False, ready=False, members=members)
    status = ksvc.get("status") or {}
    conditions = status.get("conditions") or []
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    annotations = ksvc["spec"]["template"].get("metadata", {}).get("annotations", {})
    is_ready = ready.get("status") == "True"
    return ServiceStatus(
        name,
        deployed=True,
        ready=is_ready,
        min_scale=annotations.get("autoscaling.knative.dev/min-scale", "0"),
        revision=status.get("latestReadyRevisionName", "-"),
        url=(status.get("address") or {}).get("url") or status.get("url") or "-",
        reason="" if is_ready else _describe(conditions),
        members=members,
    )


def service_statuses(
    cluster: Cluster,
    namespace: str,
    names: list[str],
    groups: Mapping[str, tuple[str, ...]] | None = None,
) -> list[ServiceStatus]:
    """Each Service of ``names``; those in ``groups`` are groups' and list their members."""
    groups = groups or {}
    return [service_status(cluster, namespace, name, groups.get(name, ())) for name in names]
