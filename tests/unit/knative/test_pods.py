"""A model's pod beyond its container: placement by gpu_type, and the weight tier's volume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from contracts.errors import ConfigError
from contracts.stack import load_stack
from knative.errors import DeployError
from knative.features import enabled_keys, required_settings
from knative.pods import TIER_PATH, TIER_VOLUME, tier_budget_gb
from knative.render import render
from tests.unit.knative.test_render import CPU_MODEL, GPU_MODEL, KNATIVE, validate_all, write_stack
from weight_cache.tier import LocalTier

PLAIN = (
    "  image: registry.example.com/cpu:1\n  gpu_image: registry.example.com/gpu:1\n"
    "  activator_image: registry.example.com/activator:1\n"
)


def ksvc_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (ksvc,) = [o for o in objects if o["apiVersion"] == "serving.knative.dev/v1"]
    pod: dict[str, Any] = ksvc["spec"]["template"]["spec"]
    return pod


def test_a_gpu_type_becomes_the_pods_node_selector_and_tolerations(tmp_path: Path) -> None:
    stack = load_stack(write_stack(tmp_path, GPU_MODEL, KNATIVE))
    objects = render(stack)
    validate_all(objects, stack)
    pod = ksvc_pod(objects)
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert enabled_keys(required_settings(stack)) == {
        "allow-zero-initial-scale",
        "kubernetes.podspec-nodeselector",
        "kubernetes.podspec-tolerations",
    }


def test_a_cpu_model_is_not_placed(tmp_path: Path) -> None:
    stack = load_stack(write_stack(tmp_path, CPU_MODEL, KNATIVE))  # gpu_nodes listed, unused
    pod = ksvc_pod(render(stack))
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert enabled_keys(required_settings(stack)) == {"allow-zero-initial-scale"}


def test_a_gpu_type_with_no_entry_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"gpu_type L4: add knative\.gpu_nodes\.L4"):
        render(load_stack(write_stack(tmp_path, GPU_MODEL, PLAIN)))
    # an empty entry: any node with a free GPU, and no config-features flag needed
    stack = load_stack(write_stack(tmp_path, GPU_MODEL, PLAIN + "  gpu_nodes: {L4: {}}\n"))
    pod = ksvc_pod(render(stack))
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize(
    ("gpu_nodes", "message"),
    [
        ("{L4: {tolerations: [{operator: Exists, value: x}]}}", "takes no value"),
        ("{L4: {tolerations: [{value: x}]}}", "needs a key"),
        ("{L4: {node_selector: {'bad key!': x}}}", "not a Kubernetes label key"),
        ("{L4: {nodeSelector: {a: b}}}", "nodeSelector"),  # unknown keys are errors
    ],
)
def test_placement_is_checked_when_the_stack_loads(
    tmp_path: Path, gpu_nodes: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_stack(write_stack(tmp_path, GPU_MODEL, PLAIN + f"  gpu_nodes: {gpu_nodes}\n"))


def test_the_tier_is_an_empty_dir_by_default(tmp_path: Path) -> None:
    stack = load_stack(write_stack(tmp_path, CPU_MODEL, PLAIN + "  cache_size_gi: 50\n"))
    objects = render(stack)
    assert not [o for o in objects if o["metadata"]["name"] == "ember-weights"]
    volumes = {v["name"]: v for v in ksvc_pod(objects)["volumes"]}
    assert volumes[TIER_VOLUME] == {"name": TIER_VOLUME, "emptyDir": {"sizeLimit": "50Gi"}}


def test_a_persistent_volume_claim_tier_is_shared_by_every_model(tmp_path: Path) -> None:
    knative = PLAIN + "  tier: {kind: persistentVolumeClaim, storage_class: local-path}\n"
    stack = load_stack(write_stack(tmp_path, CPU_MODEL, knative))
    objects = render(stack)
    validate_all(objects, stack)
    claim = objects[0]  # before the Services that mount it
    assert (claim["kind"], claim["metadata"]["name"]) == ("PersistentVolumeClaim", "ember-weights")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # one node, any number of its pods
    assert claim["spec"]["storageClassName"] == "local-path"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    pod = ksvc_pod(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[TIER_VOLUME]["persistentVolumeClaim"] == {"claimName": "ember-weights"}
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == TIER_VOLUME]
    assert mount == {"name": TIER_VOLUME, "mountPath": TIER_PATH}  # written: not read-only
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
    assert "securityContext" not in pod  # no fsGroup: no recursive chown at every cold start
    assert {
        "kubernetes.podspec-persistent-volume-claim",
        "kubernetes.podspec-persistent-volume-write",
    } <= enabled_keys(required_settings(stack))


def test_a_host_path_tier_is_refused_with_why(tmp_path: Path) -> None:
    knative = PLAIN + "  tier: {kind: hostPath}\n"
    with pytest.raises(ConfigError, match="Knative mounts a hostPath volume read-only"):
        load_stack(write_stack(tmp_path, CPU_MODEL, knative))


def test_the_tiers_locks_live_on_the_tier_volume(tmp_path: Path) -> None:
    """Pods of one node share the tier through flock()s on files under --cache-dir, so the
    volume mounted there must hold them: the tier's own root, not /tmp or the image."""
    pod = ksvc_pod(render(load_stack(write_stack(tmp_path, CPU_MODEL, PLAIN))))
    (container,) = pod["containers"]
    args = container["args"]
    cache_dir = args[args.index("--cache-dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert cache_dir == TIER_PATH and mounts[cache_dir] == TIER_VOLUME
    tier = LocalTier(tmp_path / "tier")
    held = tier._lock_fd("some-entry")
    try:
        assert (tmp_path / "tier" / "locks" / "some-entry.lock").exists()
    finally:
        os.close(held)


def test_the_tier_budget_fits_the_volume() -> None:
    assert tier_budget_gb(20) == "21.47"
    for size_gi in (0.5, 1, 20, 123.4, 2000):
        assert float(tier_budget_gb(size_gi)) * 1e9 <= size_gi * 2**30
