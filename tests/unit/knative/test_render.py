"""``ember deploy``: rendered objects valid for Knative's CRD schema, its webhook and Kubernetes.

A cluster cannot run here: the Services are validated against the CRD's openAPIV3Schema in the
vendored ``tests/data/specs/knative`` and the webhook's rules (knative/rules.py), the ConfigMaps
against Kubernetes' own schema (kubernetes-validate), and two stacks are compared with golden YAML.
"""

from __future__ import annotations

import copy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from contracts.stack import load_stack
from knative.errors import DeployError
from knative.render import kn_commands, render, to_yaml
from knative.rules import ksvc_errors
from tests.servers import ROOT
from tests.spec import KNATIVE_SERVICE_CRD, data_path

GOLDEN = Path(__file__).resolve().parent / "golden"
K8S_VERSION = "1.33"


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(data_path(KNATIVE_SERVICE_CRD).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def validate_all(objects: list[dict[str, Any]]) -> None:
    schema = crd_schema()
    for obj in objects:
        if obj["apiVersion"] == "serving.knative.dev/v1":
            jsonschema.validate(obj, schema)
            assert ksvc_errors(obj) == []
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def write_stack(tmp_path: Path, model: str, knative: str, entry: str = "") -> Path:
    (tmp_path / "m.yaml").write_text(model)
    path = tmp_path / "ember.yaml"
    path.write_text(f"knative:\n{knative}\nmodels:\n  - config: m.yaml\n{entry}")
    return path


CPU_MODEL = "name: encoder\nhandler: hf-encoder\nsource: s3://models/encoder\nmax_batch_size: 8\n"
GPU_MODEL = (
    "name: llm\nhandler: torch-module\nsource: s3://models/llm\ndevice: cuda\ngpu_type: L4\n"
    "options: {module: 'mypkg.models:LLM'}\n"
)
KNATIVE = (
    "  namespace: serving\n  image: registry.example.com/ember/runtime-cpu:1\n"
    "  gpu_image: registry.example.com/ember/runtime-cuda:1\n  s3_secret: s3-creds\n"
    "  activator_image: registry.example.com/ember/activator:1\n"
)


def test_the_example_stack_renders_valid_objects() -> None:
    objects = render(load_stack(ROOT / "examples" / "ember.yaml"))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "mlp-model"),
        ("Service", "mlp"),
        ("ConfigMap", "minilm-model"),
        ("Service", "minilm"),
        ("ServiceAccount", "ember-activator"),
        ("Role", "ember-activator"),
        ("RoleBinding", "ember-activator"),
        ("ConfigMap", "ember-activator"),
        ("Deployment", "ember-activator"),
        ("Service", "ember-activator"),
    ]
    validate_all(objects)
    assert list(yaml.safe_load_all(to_yaml(objects))) == objects
    mlp_config = yaml.safe_load(objects[0]["data"]["model.yaml"])
    assert mlp_config["source"] == "s3://models/ember/mlp"  # local weights: served from models_uri
    assert mlp_config["options"]["module"] == "mlp.py:MLP"
    assert "class MLP" in objects[0]["data"]["mlp.py"]  # the module travels with the config
    ksvc = objects[1]["spec"]["template"]
    annotations = ksvc["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "2"
    assert annotations["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "60s"
    container = ksvc["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert ksvc["spec"]["containerConcurrency"] == 64


def test_a_model_that_cannot_load_ends_the_pod_with_why() -> None:
    """Knative routes nothing to an unready pod, so the replica's index cannot say a load
    failed; its exit can: ``ember serve`` exits 3 having written the reason to the termination
    log, and a crash before that leaves the log's tail (ContainerHealthy=False, Ready=False)."""
    from ember.cli import build_parser

    objects = render(load_stack(ROOT / "examples" / "ember.yaml"))
    for ksvc in (o for o in objects if o["apiVersion"] == "serving.knative.dev/v1"):
        (container,) = ksvc["spec"]["template"]["spec"]["containers"]
        assert "--exit-on-load-failure" in container["args"]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert "terminationMessagePath" not in container  # the default, /dev/termination-log
        args = build_parser().parse_args(container["args"])  # what the image's `ember` takes
        assert args.exit_on_load_failure is True
        assert args.termination_log == Path("/dev/termination-log")


@pytest.mark.parametrize(
    ("name", "model", "entry"),
    [
        ("cpu", CPU_MODEL, "    max_replicas: 3\n    keep_alive_s: 90\n"),
        ("gpu", GPU_MODEL, "    container_concurrency: 4\n    target: 2.5\n"),
    ],
)
def test_golden_yaml(tmp_path: Path, name: str, model: str, entry: str) -> None:
    stack = load_stack(write_stack(tmp_path, model, KNATIVE, entry))
    objects = render(stack)
    validate_all(objects)
    text = to_yaml(objects)
    golden = GOLDEN / f"{name}.yaml"
    assert text == golden.read_text(), f"rendering changed; compare with {golden}"


def test_a_gpu_model_asks_for_a_gpu_and_the_cuda_image(tmp_path: Path) -> None:
    (cm, ksvc, *_) = render(load_stack(write_stack(tmp_path, GPU_MODEL, KNATIVE)))
    container = ksvc["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("runtime-cuda:1")
    assert yaml.safe_load(cm["data"]["model.yaml"])["device"] == "cuda"


@pytest.mark.parametrize(
    ("model", "knative", "message"),
    [
        (GPU_MODEL, "  image: cpu:1", "set knative.gpu_image"),
        (CPU_MODEL, "  gpu_image: gpu:1", "set knative.image"),
        (CPU_MODEL, "  image: cpu:1", "set knative.activator_image"),
        ("name: m\nhandler: hf-encoder\nsource: ./weights\n", "  image: cpu:1", "models_uri"),
        ("name: Big_Model\nhandler: hf-encoder\nsource: s3://b/m\n", "  image: cpu:1", "DNS label"),
        (
            "name: m\nhandler: torch-module\nsource: s3://b/m\noptions: {module: 'gone.py:X'}\n",
            "  image: cpu:1",
            "cannot read",
        ),
    ],
)
def test_configs_knative_cannot_take_are_refused(
    tmp_path: Path, model: str, knative: str, message: str
) -> None:
    with pytest.raises(DeployError, match=message):
        render(load_stack(write_stack(tmp_path, model, knative)))


def test_a_config_knative_would_refuse_is_stopped_before_it_is_sent(tmp_path: Path) -> None:
    path = write_stack(tmp_path, CPU_MODEL, KNATIVE, "    container_concurrency: 2000\n")
    with pytest.raises(DeployError, match=r"containerConcurrency 2000 is outside 0\.\.1000"):
        render(load_stack(path))
    path = write_stack(tmp_path, CPU_MODEL, KNATIVE + "  timeout_s: 900\n")
    with pytest.raises(DeployError, match="timeoutSeconds 900"):
        render(load_stack(path))


def test_every_container_runs_non_root_on_a_read_only_root_with_a_writable_tmp() -> None:
    objects = render(load_stack(ROOT / "examples" / "ember.yaml"))
    pods = []
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":
            pods.append(spec["jobTemplate"]["spec"]["template"]["spec"])
        elif obj["kind"] in ("Deployment", "Service") and "template" in spec:
            pods.append(spec["template"]["spec"])
    assert len(pods) >= 3  # the activator, the models' services, the pre-warm jobs
    for pod in pods:
        for container in pod["containers"]:
            context = {**pod.get("securityContext", {}), **container["securityContext"]}
            assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            if container["name"] != "prewarm":  # it writes nothing
                assert "emptyDir" in volumes[mounts["/tmp"]]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    env = {
        e["name"]: e["valueFrom"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["EMBER_API_TOKEN"]["secretKeyRef"] == {"name": "ember-api", "key": "token"}
    assert env["EMBER_ADMIN_TOKEN"]["secretKeyRef"] == {"name": "ember-admin", "key": "token"}
    for ksvc in (o for o in objects if o["apiVersion"] == "serving.knative.dev/v1"):
        # only the activator (and its tokens) faces clients
        assert ksvc["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


def test_the_webhook_rules() -> None:
    (_, ksvc, *_) = render(load_stack(ROOT / "examples" / "ember.yaml"))
    assert ksvc_errors(ksvc) == []
    bad = copy.deepcopy(ksvc)
    template = bad["spec"]["template"]
    template["spec"]["nodeSelector"] = {"gpu": "yes"}
    template["spec"]["initContainers"] = []
    template["spec"]["containerConcurrency"] = 2000
    template["spec"]["timeoutSeconds"] = 900
    template["spec"]["containers"][0]["ports"] = [
        {"containerPort": 8080, "name": "grpc"},
        {"containerPort": 9090},
    ]
    annotations = template["metadata"]["annotations"]
    annotations["autoscaling.knative.dev/min-scale"] = "3"
    annotations["autoscaling.knative.dev/max-scale"] = "2"
    annotations["autoscaling.knative.dev/target"] = "0.001"
    annotations["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] = "forever"
    context = template["spec"]["containers"][0]["securityContext"]
    context["privileged"] = True
    context["capabilities"]["add"] = ["SYS_ADMIN"]
    errors = " | ".join(ksvc_errors(bad))
    for expected in (
        "nodeSelector",
        "initContainers",
        "containerConcurrency 2000",
        "timeoutSeconds 900",
        "more than one port",
        "'grpc'",
        "min-scale 3 is above max-scale 2",
        "target 0.001",
        "'forever' is not a duration",
        "securityContext.privileged is not allowed",
        "capabilities.add 'SYS_ADMIN'",
    ):
        assert expected in errors
    jsonschema.validate(bad, crd_schema())  # the schema alone takes all of it


def test_the_activator_may_only_get_and_patch_its_own_services() -> None:
    objects = render(load_stack(ROOT / "examples" / "ember.yaml"))
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["rules"] == [
        {
            "apiGroups": ["serving.knative.dev"],
            "resources": ["services"],
            "resourceNames": ["minilm", "mlp"],
            "verbs": ["get", "patch"],
        }
    ]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ember-activator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ember-activator"
    ]
    stack = yaml.safe_load(config_map["data"]["ember.yaml"])
    assert stack["activator"]["scaler"] == "knative"
    assert [m["config"] for m in stack["models"]] == ["mlp.yaml", "minilm.yaml"]


def test_the_activators_own_config_loads(tmp_path: Path) -> None:
    """What the activator's pod mounts at /etc/ember is a stack it can start from."""
    objects = render(load_stack(ROOT / "examples" / "ember.yaml"))
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ember-activator"
    ]
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    stack = load_stack(tmp_path / "ember.yaml")
    assert stack.settings.scaler == "knative" and set(stack.models) == {"mlp", "minilm"}
    assert stack.models["mlp"].container_concurrency == 64


def test_prewarm_windows_become_cronjobs(tmp_path: Path) -> None:
    model = CPU_MODEL + (
        "prewarm:\n"
        "  - {cron: '0 8 * * 1-5', timezone: Europe/Paris, duration_s: 3600, replicas: 2}\n"
    )
    with pytest.raises(DeployError, match="admin_secret"):
        render(load_stack(write_stack(tmp_path, model, KNATIVE)))
    objects = render(load_stack(write_stack(tmp_path, model, KNATIVE + "  admin_secret: adm\n")))
    validate_all(objects)
    (cron,) = [o for o in objects if o["kind"] == "CronJob"]
    assert cron["metadata"]["name"] == "encoder-prewarm-0"
    assert cron["spec"]["schedule"] == "0 8 * * 1-5"
    assert cron["spec"]["timeZone"] == "Europe/Paris"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:3] == ["prewarm", "--activator", "http://ember-activator.serving.svc"]
    assert args[args.index("--seconds") + 1] == "3600" and args[args.index("--replicas") + 1] == "2"
    token = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "adm", "key": "token"}
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "adm", "key": "token"}


def test_kn_command_lines(tmp_path: Path) -> None:
    lines = kn_commands(load_stack(write_stack(tmp_path, CPU_MODEL, KNATIVE)))
    assert lines[0].startswith("kubectl create configmap encoder-model --namespace serving")
    kn = shlex.split(lines[1])
    assert kn[:4] == ["kn", "service", "create", "encoder"]
    assert kn[kn.index("--image") + 1] == "registry.example.com/ember/runtime-cpu:1"
    assert "autoscaling.knative.dev/min-scale=0" in kn
    assert kn[kn.index("--port") + 1] == "http1:8080"
    assert kn[kn.index("--env-from") + 1] == "secret:s3-creds"
    assert kn[kn.index("--exit-on-load-failure") - 1] == "--arg"


def test_cli_dry_run_kn_and_errors(tmp_path: Path) -> None:
    def ember(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ember", "deploy", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    out = ember("--config", "examples/ember.yaml", "--dry-run", "--namespace", "prod")
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert len(docs) == 10 and {d["metadata"]["namespace"] for d in docs} == {"prod"}
    kn = ember("--config", "examples/ember.yaml", "--kn")
    assert kn.returncode == 0 and kn.stdout.count("kn service create") == 2
    bad = ember("--config", str(write_stack(tmp_path, GPU_MODEL, "  image: cpu:1")), "--dry-run")
    assert bad.returncode == 2 and "gpu_image" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""
    both = ember("--config", "examples/ember.yaml", "--dry-run", "--kn")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
