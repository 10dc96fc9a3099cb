"""The cluster settings a stack needs are real keys of Knative's ConfigMaps, off by default."""

from __future__ import annotations

import re

import pytest
import yaml

from knative import features as f
from tests.spec import data_path


def example(config_map: str) -> str:
    """The ``_example`` block of a vendored ``knative-serving`` ConfigMap (its documented keys
    and their defaults)."""
    name = {f.AUTOSCALER: "autoscaler", f.FEATURES: "features"}[config_map]
    doc = yaml.safe_load(data_path(f"specs/knative/configmaps/{name}.yaml").read_text())
    assert doc["metadata"]["name"] == config_map
    text: str = doc["data"]["_example"]
    return text


@pytest.mark.parametrize(
    ("config_map", "key", "off"),
    [
        (f.AUTOSCALER, f.ZERO_INITIAL_SCALE, "false"),
        (f.FEATURES, f.NODE_SELECTOR, "disabled"),
        (f.FEATURES, f.TOLERATIONS, "disabled"),
        (f.FEATURES, f.PVC, "disabled"),
        (f.FEATURES, f.PVC_WRITE, "disabled"),
        (f.FEATURES, f.HOST_PATH, "disabled"),
        (f.FEATURES, f.SECURITY_CONTEXT, "disabled"),
        (f.FEATURES, f.AFFINITY, "disabled"),
        (f.FEATURES, f.RUNTIME_CLASS, "disabled"),
        (f.FEATURES, f.INIT_CONTAINERS, "disabled"),
    ],
)
def test_each_setting_is_a_knative_key_that_is_off_by_default(
    config_map: str, key: str, off: str
) -> None:
    match = re.search(rf'^\s*{re.escape(key)}: "([^"]*)"', example(config_map), re.MULTILINE)
    assert match, f"{key} is not a key of {config_map}"
    assert match.group(1) == off


def test_a_setting_says_where_and_why() -> None:
    setting = f.ClusterSetting(f.FEATURES, f.TOLERATIONS, "enabled", "knative.gpu_nodes")
    assert setting.line() == (
        'config-features: kubernetes.podspec-tolerations: "enabled" (knative.gpu_nodes)'
    )
