"""``ember deploy``: rendered objects valid for Knative's CRD schema, its webhook and Kubernetes.

A cluster cannot run here: the Services are validated against the CRD's openAPIV3Schema in the
vendored ``tests/data/specs/knative`` and the webhook's rules (knative/rules.py), the ConfigMaps
against Kubernetes' own schema (kubernetes-validate), and two stacks are compared with golden YAML.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from contracts.stack import StackConfig, load_stack
from knative.errors import DeployError
from knative.features import enabled_keys, required_settings
from knative.render import render, to_yaml
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


def validate_all(objects: list[dict[str, Any]], stack: StackConfig) -> None:
    """The schemas, and the webhook's rules given the cluster settings the stack declares."""
    schema = crd_schema()
    enabled = enabled_keys(required_settings(stack))
    for obj in objects:
        if obj["apiVersion"] == "serving.knative.dev/v1":
            jsonschema.validate(obj, schema)
            assert ksvc_errors(obj, enabled) == []
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
    "  gpu_nodes:\n"
    "    L4:\n"
    "      node_selector: {cloud.google.com/gke-accelerator: nvidia-l4}\n"
    "      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]\n"
)


def test_the_example_stack_renders_valid_objects() -> None:
    stack = load_stack(ROOT / "examples" / "ember.yaml")
    objects = render(stack)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("PersistentVolumeClaim", "ember-weights"),  # the example's node-local weight tier
        ("ConfigMap", "mlp-model"),
        ("Service", "mlp"),
        ("ConfigMap", "minilm-model"),
        ("Service", "minilm"),
        ("ServiceAccount", "ember-activator"),
        ("Role", "ember-activator"),
        ("RoleBinding", "ember-activator"),
        ("ConfigMap", "ember-activator"),
        ("PersistentVolumeClaim", "ember-activator-events"),
        ("Deployment", "ember-activator"),
        ("Service", "ember-activator"),
    ]
    validate_all(objects, stack)
    assert list(yaml.safe_load_all(to_yaml(objects))) == objects
    claim = objects[0]["spec"]
    assert claim["storageClassName"] == "local-path" and claim["accessModes"] == ["ReadWriteOnce"]
    objects = objects[1:]
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


def test_every_model_starts_at_zero_pods() -> None:
    """No pod, and no GPU, per model at deploy time: the first request starts one (Knative
    takes initial-scale 0 only with config-autoscaler's allow-zero-initial-scale)."""
    stack = load_stack(ROOT / "examples" / "ember.yaml")
    ksvcs = [o for o in render(stack) if o["apiVersion"] == "serving.knative.dev/v1"]
    assert len(ksvcs) == 2
    for ksvc in ksvcs:
        annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/initial-scale"] == "0"
    settings = {(s.config_map, s.key, s.value) for s in required_settings(stack)}
    assert ("config-autoscaler", "allow-zero-initial-scale", "true") in settings


def test_the_event_log_outlives_the_activator_pod(tmp_path: Path) -> None:
    knative = KNATIVE + "  events: {storage_class: standard-rwo, size_gi: 5}\n"
    stack = load_stack(write_stack(tmp_path, CPU_MODEL, knative))
    objects = render(stack)
    validate_all(objects, stack)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    claim_at = kinds.index(("PersistentVolumeClaim", "ember-activator-events"))
    assert claim_at < kinds.index(("Deployment", "ember-activator"))
    claim = objects[claim_at]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["storageClassName"] == "standard-rwo"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    # one writer of the log at a time: a rolling update would start the next pod first
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["events"]["persistentVolumeClaim"] == {"claimName": "ember-activator-events"}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "ember-activator"
    ]
    events = yaml.safe_load(config_map["data"]["ember.yaml"])["activator"]["events"]
    assert Path(events).parent == Path(mounts["events"])
    assert pod["securityContext"]["fsGroup"] == 10001  # a fresh claim's root is root's


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


NODE_LOCAL = "  tier: {kind: persistentVolumeClaim, storage_class: local-path}\n"
GOLDEN_CASES = {  # name: (model config, knative: section, the model's entry)
    "cpu": (CPU_MODEL, KNATIVE, "    max_replicas: 3\n    keep_alive_s: 90\n"),
    "gpu": (GPU_MODEL, KNATIVE + NODE_LOCAL, "    container_concurrency: 4\n    target: 2.5\n"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_yaml(tmp_path: Path, name: str) -> None:
    """Regenerate after a deliberate change with ``python -m tests.unit.knative.test_render``
    and read the diff."""
    model, knative, entry = GOLDEN_CASES[name]
    stack = load_stack(write_stack(tmp_path, model, knative, entry))
    objects = render(stack)
    validate_all(objects, stack)
    text = to_yaml(objects)
    golden = GOLDEN / f"{name}.yaml"
    assert text == golden.read_text(), f"rendering changed; compare with {golden}"


def test_a_gpu_model_asks_for_a_gpu_and_the_cuda_image(tmp_path: Path) -> None:
    (cm, ksvc, *_) = render(load_stack(write_stack(tmp_path, GPU_MODEL, KNATIVE)))
    container = ksvc["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("runtime-cuda:1")
    assert yaml.safe_load(cm["data"]["model.yaml"])["device"] == "cuda"


def test_a_generation_models_streams_are_timed_by_their_silences(tmp_path: Path) -> None:
    model = "name: llm\nhandler: text-generation\nsource: s3://models/llm\n"
    stack = load_stack(write_stack(tmp_path, model, KNATIVE))
    objects = render(stack)
    validate_all(objects, stack)  # the fields are the vendored Revision schema's
    spec = next(o for o in objects if o["kind"] == "Service")["spec"]["template"]["spec"]
    # Knative cuts a request at timeoutSeconds: a stream gets the most it allows, and its
    # first byte and each silence get the activator's request timeout
    assert spec["timeoutSeconds"] == 600
    assert spec["responseStartTimeoutSeconds"] == spec["idleTimeoutSeconds"] == 300
    (tmp_path / "gpu").mkdir()
    other = render(load_stack(write_stack(tmp_path / "gpu", GPU_MODEL, KNATIVE)))
    plain = next(o for o in other if o["kind"] == "Service")["spec"]["template"]["spec"]
    assert plain["timeoutSeconds"] == 300 and "idleTimeoutSeconds" not in plain


def test_stream_timeouts_past_the_request_timeout_are_refused() -> None:
    stack = load_stack(ROOT / "examples" / "ember.yaml")
    (_, _, ksvc, *_) = render(stack)
    enabled = enabled_keys(required_settings(stack))
    bad = copy.deepcopy(ksvc)
    bad["spec"]["template"]["spec"]["idleTimeoutSeconds"] = 301
    assert ksvc_errors(bad, enabled) == [
        "idleTimeoutSeconds 301 is outside 0..timeoutSeconds (300)"
    ]


def test_a_hub_model_is_served_as_written_through_the_cache_on_the_tier(tmp_path: Path) -> None:
    model = "name: minilm\nhandler: hf-encoder\nsource: hf://sentence-transformers/x@abc\n"
    knative = KNATIVE + "  hf_secret: hf-token\n"
    (cm, ksvc, *_) = render(load_stack(write_stack(tmp_path, model, knative)))
    assert yaml.safe_load(cm["data"]["model.yaml"])["source"] == "hf://sentence-transformers/x@abc"
    env = {e["name"]: e for e in ksvc["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_HUB_CACHE"]["value"] == "/var/cache/ember/huggingface"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}


@pytest.mark.parametrize(
    ("model", "knative", "message"),
    [
        (GPU_MODEL, "  image: cpu:1", "set knative.gpu_image"),
        (GPU_MODEL, "  gpu_image: gpu:1\n  activator_image: a:1", "knative.gpu_nodes.L4"),
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
    stack = load_stack(ROOT / "examples" / "ember.yaml")
    (_, _, ksvc, *_) = render(stack)
    enabled = enabled_keys(required_settings(stack))
    # initial-scale 0, and the example's weight tier on a claim the replicas write
    assert enabled == {
        "allow-zero-initial-scale",
        "kubernetes.podspec-persistent-volume-claim",
        "kubernetes.podspec-persistent-volume-write",
    }
    assert ksvc_errors(ksvc, enabled) == []
    assert ksvc_errors(ksvc) == [
        "volume 'weight-tier' (persistentVolumeClaim) needs config-features "
        "kubernetes.podspec-persistent-volume-claim",
        "mount /var/cache/ember writes a persistentVolumeClaim: needs config-features "
        "kubernetes.podspec-persistent-volume-write",
        "initial-scale 0 needs config-autoscaler allow-zero-initial-scale: true",
    ]
    bad = copy.deepcopy(ksvc)
    template = bad["spec"]["template"]
    template["spec"]["nodeSelector"] = {"gpu": "yes"}
    template["spec"]["initContainers"] = []
    template["spec"]["securityContext"] = {"fsGroup": 10001}
    template["spec"]["volumes"] += [
        {"name": "claim", "persistentVolumeClaim": {"claimName": "c"}},
        {"name": "host", "hostPath": {"path": "/mnt/nvme"}},
        {"name": "nfs", "nfs": {"server": "s", "path": "/"}},
    ]
    template["spec"]["containers"][0]["volumeMounts"] += [
        {"name": "claim", "mountPath": "/claim"},
        {"name": "host", "mountPath": "/host"},
    ]
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
    errors = " | ".join(ksvc_errors(bad, {"allow-zero-initial-scale"}))
    for expected in (
        "nodeSelector needs config-features kubernetes.podspec-nodeselector",
        "initContainers",
        "securityContext needs config-features kubernetes.podspec-securitycontext",
        "volume 'claim' (persistentVolumeClaim) needs config-features "
        "kubernetes.podspec-persistent-volume-claim",
        "mount /claim writes a persistentVolumeClaim",
        "mount /host: Knative mounts hostPath volumes read-only",
        "nfs volumes are not supported",
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
    stack = load_stack(write_stack(tmp_path, model, KNATIVE + "  admin_secret: adm\n"))
    objects = render(stack)
    validate_all(objects, stack)
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
    assert len(docs) == 12 and {d["metadata"]["namespace"] for d in docs} == {"prod"}
    bad = ember("--config", str(write_stack(tmp_path, GPU_MODEL, "  image: cpu:1")), "--dry-run")
    assert bad.returncode == 2 and "gpu_image" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""
    both = ember("--config", "examples/ember.yaml", "--dry-run", "--kn", str(tmp_path / "out"))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    bare = ember("--config", "examples/ember.yaml", "--kn")  # --kn names the directory
    assert bare.returncode == 2 and "expected one argument" in bare.stderr


if __name__ == "__main__":  # rewrite the golden files from the current rendering
    import tempfile

    for case, (model, knative, entry) in GOLDEN_CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = write_stack(Path(tmp), model, knative, entry)
            (GOLDEN / f"{case}.yaml").write_text(to_yaml(render(load_stack(path))))


def test_the_event_log_bound_travels_to_the_activator_and_must_fit_its_claim(
    tmp_path: Path,
) -> None:
    bound = "activator:\n  event_log_max_bytes: 256MiB\n  event_log_keep: 3\n"

    def stack(size_gi: float) -> StackConfig:
        path = write_stack(tmp_path, CPU_MODEL, KNATIVE + f"  events: {{size_gi: {size_gi}}}\n")
        path.write_text(bound + path.read_text())
        return load_stack(path)

    with pytest.raises(DeployError, match=r"may grow to 1\.00 GiB .*events\.size_gi is 0\.5"):
        render(stack(0.5))
    objects = render(stack(1))
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and "ember.yaml" in o["data"]]
    settings = yaml.safe_load(config["data"]["ember.yaml"])["activator"]
    assert (settings["event_log_max_bytes"], settings["event_log_keep"]) == (256 * 2**20, 3)


def test_the_kn_output_names_the_secrets_and_weights_it_expects() -> None:
    from knative.manifests import expects_comment

    lines = expects_comment(render(load_stack(ROOT / "examples" / "ember.yaml")))
    secrets = lines[lines.index("# the Secrets they read (create them in the namespace first):") :]
    assert "#   ember-s3" in secrets and "#   ember-admin" in secrets
    assert "#   s3://models/ember/mlp" in lines and "#   s3://models/ember/minilm" in lines
