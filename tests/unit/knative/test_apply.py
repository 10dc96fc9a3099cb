"""``ember status``'s view of a Knative Service: typed (``ready`` decides), printed as before."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from knative.apply import ServiceStatus, service_status, service_statuses


class Services:
    """Stands in for :class:`knative.apply.Cluster`: the Knative Services by name."""

    def __init__(self, **ksvcs: dict[str, Any]) -> None:
        self.ksvcs = ksvcs
        self.asked: list[tuple[str, str]] = []

    def ksvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.asked.append((namespace, name))
        return self.ksvcs.get(name)


def ksvc(
    conditions: list[dict[str, str]], *, min_scale: str | None = None, **status: Any
) -> dict[str, Any]:
    annotations = {} if min_scale is None else {"autoscaling.knative.dev/min-scale": min_scale}
    return {
        "spec": {"template": {"metadata": {"annotations": annotations}}},
        "status": {"conditions": conditions, **status},
    }


READY = {"type": "Ready", "status": "True"}


def test_a_ready_service() -> None:
    cluster = Services(
        mlp=ksvc(
            [READY],
            min_scale="1",
            latestReadyRevisionName="mlp-00002",
            address={"url": "http://mlp.ember.svc.cluster.local"},
            url="http://mlp.ember.example.com",
        )
    )
    status = service_status(cluster, "ember", "mlp")  # type: ignore[arg-type]
    assert status == ServiceStatus(
        "mlp",
        deployed=True,
        ready=True,
        min_scale="1",
        revision="mlp-00002",
        url="http://mlp.ember.svc.cluster.local",  # the cluster-local address comes first
    )
    assert status.line() == (
        "mlp: ready, min-scale 1, revision mlp-00002, http://mlp.ember.svc.cluster.local"
    )
    assert cluster.asked == [("ember", "mlp")]


def test_a_service_not_ready_says_which_conditions_and_why() -> None:
    failing = [
        {"type": "ConfigurationsReady", "status": "False", "reason": "RevisionFailed",
         "message": 'Unable to fetch image "registry.example.com/ember"'},
        {"type": "Ready", "status": "Unknown", "reason": "Deploying"},
        {"type": "RoutesReady", "status": "True"},
    ]  # fmt: skip
    status = service_status(Services(minilm=ksvc(failing)), "ember", "minilm")  # type: ignore[arg-type]
    assert not status.ready and status.deployed
    assert status.reason == (
        'ConfigurationsReady=False (RevisionFailed: Unable to fetch image "registry.example.com/'
        'ember"); Ready=Unknown (Deploying)'
    )
    assert status.line() == f"minilm: not ready ({status.reason}), min-scale 0, revision -, -"


@pytest.mark.parametrize(
    "conditions",
    [[], [{"type": "Ready", "status": "False"}], [{"type": "Ready", "status": "Unknown"}]],
    ids=["no-conditions-yet", "false", "unknown"],
)
def test_only_a_true_ready_condition_is_ready(conditions: list[dict[str, str]]) -> None:
    status = service_status(Services(m=ksvc(conditions)), "ns", "m")  # type: ignore[arg-type]
    assert not status.ready


def test_a_missing_service_is_not_deployed() -> None:
    (status,) = service_statuses(Services(), "ember", ["mlp"])  # type: ignore[arg-type]
    assert status == ServiceStatus("mlp", deployed=False, ready=False)
    assert status.line() == "mlp: not deployed"


def test_readiness_is_not_read_from_the_text() -> None:
    """A message that happens to contain ``: ready,`` does not make a service ready."""
    says_ready = [
        {"type": "Ready", "status": "False", "reason": "Blocked", "message": "backend: ready, no"}
    ]
    (status,) = service_statuses(Services(m=ksvc(says_ready)), "ns", ["m"])  # type: ignore[arg-type]
    assert ": ready," in status.line() and not status.ready


def test_a_groups_service_lists_the_models_it_serves() -> None:
    cluster = Services(shared=ksvc([READY], min_scale="0", latestReadyRevisionName="shared-00001"))
    groups = {"shared": ("a", "b"), "gone": ("c",)}
    mlp, shared, gone = service_statuses(cluster, "ember", ["mlp", "shared", "gone"], groups)  # type: ignore[arg-type]
    assert mlp.line() == "mlp: not deployed" and mlp.members == ()
    assert shared.ready and shared.members == ("a", "b")
    assert shared.line() == "shared (group: a, b): ready, min-scale 0, revision shared-00001, -"
    assert gone.line() == "gone (group: c): not deployed"


def test_without_the_kubernetes_client_a_cluster_call_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from knative.apply import Cluster
    from knative.client import KnativeClient
    from knative.errors import DeployError

    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as where it is not installed
    for call in (Cluster.from_environment, lambda: KnativeClient.from_environment("ns")):
        with pytest.raises(DeployError, match=r"pip install 'ember\[activator\]'"):
            call()
