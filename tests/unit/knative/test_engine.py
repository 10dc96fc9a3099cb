"""``engine: command`` on Knative: the engine's image runs the model's command, Ember's image fills
the tier before it as an init container.

Validated as every rendered Service is (the CRD's schema in ``tests/data/specs/knative``, the
webhook's rules, Kubernetes' schemas for the core objects) and, since the CRD lets an init
container through unchecked (``x-kubernetes-preserve-unknown-fields``), the pod spec as a core
Pod's, strictly. The init container's arguments are parsed by the ``ember`` CLI the image runs;
``tests/integration/test_knative_engine.py`` runs them.
"""

from __future__ import annotations

import copy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from contracts.stack import StackConfig, load_stack
from knative import features as f
from knative.engine import LINK_DIR, WEIGHTS
from knative.errors import DeployError
from knative.features import enabled_keys, required_settings
from knative.pods import TIER_PATH
from knative.render import render
from knative.rules import ksvc_errors
from tests.servers import ROOT
from tests.unit.knative.test_render import K8S_VERSION, KNATIVE, validate_all, write_stack

VLLM = (
    "name: llm\nengine: command\nsource: s3://models/llm\nimage: vllm/vllm-openai:v0.9.1\n"
    "gpu_type: L4\nhealth: /health\n"
    "command: [vllm, serve, '{weights}', --host, '{host}', --port, '{port}', "
    "--served-model-name, '{model}']\n"
)
KSVC_ONLY = {"containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds"}
KSVC_ONLY |= {"idleTimeoutSeconds"}  # the revision's fields, not a Pod's


def ksvc_of(objects: list[dict[str, Any]], name: str = "llm") -> dict[str, Any]:
    (ksvc,) = [
        o
        for o in objects
        if o["apiVersion"] == "serving.knative.dev/v1" and o["metadata"]["name"] == name
    ]
    return ksvc


def rendered(tmp_path: Path, model: str = VLLM, knative: str = KNATIVE) -> StackConfig:
    return load_stack(write_stack(tmp_path, model, knative))


def as_pod(ksvc: dict[str, Any]) -> dict[str, Any]:
    """The revision's pod spec as the core Pod Knative makes of it (less its own fields)."""
    spec = {k: v for k, v in ksvc["spec"]["template"]["spec"].items() if k not in KSVC_ONLY}
    meta = {"name": "p", "namespace": ksvc["metadata"]["namespace"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def test_a_command_engine_renders_valid_objects(tmp_path: Path) -> None:
    stack = rendered(tmp_path)
    objects = render(stack)
    validate_all(objects, stack)  # the CRD's schema, the webhook's rules, the core schemas
    ksvc = ksvc_of(objects)
    kubernetes_validate.validate(as_pod(ksvc), K8S_VERSION, strict=True)  # the init container
    (config_map,) = [o for o in objects if o["metadata"]["name"] == "llm-model"]
    assert yaml.safe_load(config_map["data"]["model.yaml"])["image"] == "vllm/vllm-openai:v0.9.1"
    # the activator is told of it as of any model: its config, for its metadata and routes
    (activator,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ember-activator"
    ]
    assert yaml.safe_load(activator["data"]["llm.yaml"])["engine"] == "command"


def test_the_engines_image_runs_its_command_on_the_tier_ember_filled(tmp_path: Path) -> None:
    from ember.cli import build_parser

    ksvc = ksvc_of(render(rendered(tmp_path)))
    pod = ksvc["spec"]["template"]["spec"]
    (fill,) = pod["initContainers"]
    (engine,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}

    # Ember's runtime image (the CPU one: it only moves bytes), as `ember cache pull`
    assert fill["image"] == "registry.example.com/ember/runtime-cpu:1"
    args = build_parser().parse_args(fill["args"])  # what the image's `ember` takes
    assert (args.command, args.cache_command) == ("cache", "pull")
    assert args.source == "s3://models/llm"
    assert (args.cache_dir, args.link) == (TIER_PATH, WEIGHTS)
    assert args.cache_budget_gb == pytest.approx(21.47)  # the volume's 20 GiB, rounded down
    assert fill["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert "nvidia.com/gpu" not in fill["resources"]["limits"]
    fill_mounts = {m["mountPath"]: m for m in fill["volumeMounts"]}
    assert set(fill_mounts) == {TIER_PATH, LINK_DIR, "/tmp"}
    assert not any(m.get("readOnly") for m in fill_mounts.values())  # it writes all three
    assert fill["securityContext"]["runAsUser"] == 10001  # as every Ember container
    assert fill["securityContext"]["readOnlyRootFilesystem"] is True

    # the engine's image, its command filled in: {weights} is the link, in the pod
    assert engine["image"] == "vllm/vllm-openai:v0.9.1"
    assert "args" not in engine  # the command replaces the image's entrypoint whole
    assert engine["command"] == [
        "vllm", "serve", WEIGHTS, "--host", "0.0.0.0", "--port", "8080",
        "--served-model-name", "llm",
    ]  # fmt: skip
    assert engine["ports"] == [{"containerPort": 8080, "name": "http1"}]
    engine_mounts = {m["mountPath"]: m for m in engine["volumeMounts"]}
    assert set(engine_mounts) == {TIER_PATH, LINK_DIR}  # the link's target is at the same path
    assert all(m["readOnly"] for m in engine_mounts.values())  # it reads the verified tier only
    for path in (TIER_PATH, LINK_DIR):  # the same volumes in both containers
        assert engine_mounts[path]["name"] == fill_mounts[path]["name"]
    assert volumes[fill_mounts[LINK_DIR]["name"]] == {
        "name": "weights-link",
        "emptyDir": {"sizeLimit": "1Mi"},  # per pod: a new revision never re-points an old one
    }
    assert "env" not in engine and "envFrom" not in engine  # S3 credentials stay in Ember's

    # probed at its health path; nothing of v2
    assert engine["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    assert engine["livenessProbe"]["tcpSocket"] == {"port": 8080}
    assert engine["livenessProbe"]["initialDelaySeconds"] == 600  # past the progress deadline
    assert "/v2/" not in yaml.safe_dump(ksvc)

    # a GPU, its node, and the scaling and stream settings of any model that streams
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/initial-scale"] == "0"
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["serving.knative.dev/progress-deadline"] == "600s"
    assert pod["timeoutSeconds"] == 600
    assert pod["responseStartTimeoutSeconds"] == pod["idleTimeoutSeconds"] == 300


def test_local_weights_come_from_models_uri_and_hub_weights_through_the_tiers_cache(
    tmp_path: Path,
) -> None:
    local = VLLM.replace("s3://models/llm", "./weights")
    knative = KNATIVE + "  models_uri: s3://models/ember\n"
    ksvc = ksvc_of(render(rendered(tmp_path, local, knative)))
    (fill,) = ksvc["spec"]["template"]["spec"]["initContainers"]
    assert fill["args"][2] == "s3://models/ember/llm"  # where `ember cache push` put them
    (tmp_path / "hub").mkdir()
    hub = VLLM.replace("s3://models/llm", "hf://org/llm@abc")
    ksvc = ksvc_of(render(rendered(tmp_path / "hub", hub, KNATIVE + "  hf_secret: hf\n")))
    (fill,) = ksvc["spec"]["template"]["spec"]["initContainers"]
    assert fill["args"][2] == "hf://org/llm@abc"
    env = {e["name"]: e for e in fill["env"]}
    assert env["HF_HUB_CACHE"]["value"] == f"{TIER_PATH}/huggingface"  # on the tier's volume
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_a_node_local_claim_is_written_by_ember_and_read_by_the_engine(tmp_path: Path) -> None:
    knative = KNATIVE + "  tier: {kind: persistentVolumeClaim, storage_class: local-path}\n"
    stack = rendered(tmp_path, knative=knative)
    objects = render(stack)
    validate_all(objects, stack)
    pod = ksvc_of(objects)["spec"]["template"]["spec"]
    tier = {v["name"]: v for v in pod["volumes"]}["weight-tier"]
    assert tier["persistentVolumeClaim"] == {"claimName": "ember-weights"}


def test_the_init_container_needs_its_feature_flag(tmp_path: Path) -> None:
    stack = rendered(tmp_path)
    settings = {s.key: s for s in required_settings(stack)}
    flag = settings[f.INIT_CONTAINERS]
    assert (flag.config_map, flag.value) == (f.FEATURES, "enabled")
    assert "engine: command (llm)" in flag.line()
    ksvc = ksvc_of(render(stack))
    without = enabled_keys(required_settings(stack)) - {f.INIT_CONTAINERS}
    assert ksvc_errors(ksvc, without) == [
        "spec.template.spec.initContainers needs config-features kubernetes.podspec-init-containers"
    ]
    # a stack with no command engine needs no such flag
    plain = load_stack(ROOT / "examples" / "ember.yaml")
    assert f.INIT_CONTAINERS not in enabled_keys(required_settings(plain))


def test_the_webhooks_rules_for_init_containers(tmp_path: Path) -> None:
    stack = rendered(tmp_path)
    ksvc = ksvc_of(render(stack))
    enabled = enabled_keys(required_settings(stack))
    assert ksvc_errors(ksvc, enabled) == []
    bad = copy.deepcopy(ksvc)
    pod = bad["spec"]["template"]["spec"]
    fill = pod["initContainers"][0]
    fill["readinessProbe"] = {"tcpSocket": {"port": 8080}}
    fill["name"] = "engine"
    fill["securityContext"]["privileged"] = True
    pod["initContainers"][0]["volumeMounts"].append({"name": "cache", "mountPath": "/c"})
    pod["volumes"].append({"name": "unused", "emptyDir": {}})
    assert ksvc_errors(bad, enabled) == [
        "mount /c: no volume 'cache'",
        "volume 'unused' is not mounted by any container",
        "init container 'engine': readinessProbe is not allowed",
        "duplicate container name 'engine'",
        "securityContext.privileged is not allowed in a Knative container",
    ]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (VLLM.replace("image: vllm/vllm-openai:v0.9.1\n", ""), "model 'llm' is served by its "
         "command \\(engine: command\\): on Knative its engine's image runs it; set image:"),
        (VLLM.replace("vllm/vllm-openai:v0.9.1", "'vllm serve'"), "not a container image"),
        (VLLM.replace("source: s3://models/llm\n", ""), "model 'llm' has no source"),
        (VLLM.replace("'{port}'", "'{nope}'"), "a placeholder it cannot fill: 'nope'"),
    ],
)  # fmt: skip
def test_what_knative_cannot_run_is_refused_naming_the_model(
    tmp_path: Path, model: str, message: str
) -> None:
    with pytest.raises(DeployError, match=message):
        render(rendered(tmp_path, model))


def test_ember_needs_its_own_image_to_fill_the_tier(tmp_path: Path) -> None:
    knative = "  activator_image: a:1\n  gpu_nodes: {L4: {}}\n"
    with pytest.raises(DeployError, match=r"set knative.image \(or knative.gpu_image\)"):
        render(rendered(tmp_path, knative=knative))
    only_gpu = ksvc_of(render(rendered(tmp_path, knative=knative + "  gpu_image: gpu:1\n")))
    assert only_gpu["spec"]["template"]["spec"]["initContainers"][0]["image"] == "gpu:1"


def test_ember_deploy_kn_writes_the_files_and_says_what_the_cluster_needs(tmp_path: Path) -> None:
    config = write_stack(tmp_path, VLLM, KNATIVE)
    out = tmp_path / "manifests"
    done = subprocess.run(
        [sys.executable, "-m", "ember", "deploy", "--config", str(config), "--kn", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(
        'config-features: kubernetes.podspec-init-containers: "enabled"' in line for line in lines
    )
    assert "#   vllm/vllm-openai:v0.9.1" in lines  # the images to have: the engine's too
    assert "#   registry.example.com/ember/runtime-cpu:1" in lines
    assert "#   s3://models/llm" in lines  # the weights the init container pulls
    (apply,) = [line for line in lines if line.startswith("kn service apply llm ")]
    words = shlex.split(apply)
    (ksvc,) = yaml.safe_load_all(Path(words[words.index("--filename") + 1]).read_text())
    assert ksvc == ksvc_of(render(load_stack(config)))


def test_the_image_belongs_to_a_command_engine_and_is_checked_where_configs_are(
    tmp_path: Path,
) -> None:
    from runtime.config import load_model_configs
    from runtime.errors import ConfigError

    (tmp_path / "ok.yaml").write_text(VLLM)
    assert load_model_configs(tmp_path / "ok.yaml")[0].image == "vllm/vllm-openai:v0.9.1"
    (tmp_path / "up.yaml").write_text(VLLM.replace("image: vllm/vllm-openai:v0.9.1\n", ""))
    assert load_model_configs(tmp_path / "up.yaml")[0].image is None  # ember up needs none
    (tmp_path / "bad.yaml").write_text(VLLM.replace("vllm/vllm-openai:v0.9.1", "'a b'"))
    with pytest.raises(ConfigError, match=r"image: .*must be a container image reference"):
        load_model_configs(tmp_path / "bad.yaml")
    (tmp_path / "ember.yaml").write_text(
        "name: m\nhandler: hf-encoder\nsource: s3://b/m\nimage: x/y:1\n"
    )
    with pytest.raises(ConfigError, match="'image' is for 'engine: command'"):
        load_model_configs(tmp_path / "ember.yaml")


def test_a_command_engine_alone_in_a_group_is_refused_on_knative(tmp_path: Path) -> None:
    sleeps = VLLM + "sleep: {host: 'POST /sleep?level=1'}\nwake: POST /wake_up\n"
    (tmp_path / "m.yaml").write_text(sleeps)
    path = tmp_path / "ember.yaml"
    path.write_text(
        f"knative:\n{KNATIVE}\ngroups:\n  - name: pool\n    policy: tiered\n"
        "    models: [{config: m.yaml}]\n"
    )
    with pytest.raises(DeployError, match="group 'pool': llm is served by its command"):
        render(load_stack(path))
