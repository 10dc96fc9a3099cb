"""A group of ember.yaml deployed as one Knative Service (a generic replica serving its members).

Validated as every rendered object is (the CRD schema, the webhook's rules, Kubernetes' schema)
and compared with golden YAML; no cluster runs here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.stack import load_stack
from knative.errors import DeployError
from knative.groups import services
from knative.render import render, to_yaml
from tests.unit.knative.test_render import CPU_MODEL, GOLDEN, KNATIVE, NODE_LOCAL, validate_all

ENCODER_B = CPU_MODEL.replace("encoder", "ranker") + "device: cpu\n"
TORCH = (
    "name: {name}\nhandler: torch-module\nsource: s3://models/{name}\ndevice: {device}\n"
    "{extra}options: {{module: '{module}'}}\n"
)
GROUP = (
    "groups:\n"
    "  - name: shared\n"
    "    models:\n"
    "      - config: a.yaml\n"
    "      - config: b.yaml\n"
    "        keep_alive_s: 120\n"
    "{settings}"
)


def write_group(
    tmp_path: Path, a: str, b: str, knative: str = KNATIVE, settings: str = "", models: str = ""
) -> Path:
    """A stack with the group ``shared`` of the model configs ``a`` and ``b`` (and ``models:``
    entries before it, if given)."""
    (tmp_path / "a.yaml").write_text(a)
    (tmp_path / "b.yaml").write_text(b)
    path = tmp_path / "ember.yaml"
    path.write_text(f"knative:\n{knative}\n{models}" + GROUP.format(settings=settings))
    return path


def torch_model(tmp_path: Path, name: str, *, device: str = "cpu", extra: str = "") -> str:
    """A torch-module config whose class is in ``net.py`` beside it (one file, both members)."""
    (tmp_path / "net.py").write_text("class Net:\n    pass\n")
    return TORCH.format(name=name, device=device, extra=extra, module="net.py:Net")


def ksvcs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o for o in objects if o["apiVersion"] == "serving.knative.dev/v1"
    }


def config_map(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    return found


SETTINGS = (
    "    min_replicas: 0\n    max_replicas: 3\n    container_concurrency: 4\n"
    "    device_memory_budget: 95MB\n"
)


def test_a_group_is_one_service_serving_every_member_on_demand(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(CPU_MODEL)
    a = torch_model(tmp_path, "a")
    models = "models:\n  - config: m.yaml\n"
    stack = load_stack(write_group(tmp_path, a, ENCODER_B, settings=SETTINGS, models=models))
    objects = render(stack)
    validate_all(objects, stack)
    assert set(ksvcs(objects)) == {"encoder", "shared"}  # the members have none of their own
    group = ksvcs(objects)["shared"]["spec"]["template"]
    annotations = group["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/initial-scale"] == "0"  # scale to zero, too
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "3"
    assert annotations["autoscaling.knative.dev/target"] == "4"
    # the longest keep-alive of its members (b's 120 s), as the activator keeps the pool
    assert annotations["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "120s"
    assert group["spec"]["containerConcurrency"] == 4
    (container,) = group["spec"]["containers"]
    args = container["args"]
    configs = [args[i + 1] for i, arg in enumerate(args) if arg == "--config"]
    assert configs == ["/etc/ember/a.yaml", "/etc/ember/ranker.yaml"]
    assert "--load-on-demand" in args
    assert args[args.index("--device-memory-budget") + 1] == "95000000"
    # one member that cannot load must not end the pod serving the others
    assert "--exit-on-load-failure" not in args
    assert container["volumeMounts"][0] == {
        "name": "model-config",
        "mountPath": "/etc/ember",
        "readOnly": True,
    }
    files = config_map(objects, "shared-models")["data"]
    assert set(files) == {"a.yaml", "a-net.py", "ranker.yaml"}
    a = yaml.safe_load(files["a.yaml"])
    assert a["options"]["module"] == "a-net.py:Net"  # each member's module under its own name
    assert yaml.safe_load(files["ranker.yaml"])["source"] == "s3://models/ranker"


def test_ember_serve_takes_the_group_containers_arguments(tmp_path: Path) -> None:
    from ember.cli import build_parser

    path = write_group(tmp_path, torch_model(tmp_path, "a"), ENCODER_B, settings=SETTINGS)
    (container,) = ksvcs(render(load_stack(path)))["shared"]["spec"]["template"]["spec"][
        "containers"
    ]
    args = build_parser().parse_args(container["args"])  # what the image's `ember` takes
    assert args.config == ["/etc/ember/a.yaml", "/etc/ember/ranker.yaml"]
    assert args.load_on_demand is True and args.device_memory_budget == 95_000_000
    assert args.exit_on_load_failure is False


def test_the_activator_may_wake_the_group_and_not_its_members(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(CPU_MODEL)
    path = write_group(
        tmp_path,
        ENCODER_B.replace("ranker", "a"),
        ENCODER_B,
        models="models:\n  - config: m.yaml\n",
    )
    stack = load_stack(path)
    assert services(stack) == {"encoder": ("encoder",), "shared": ("a", "ranker")}
    (role,) = [o for o in render(stack) if o["kind"] == "Role"]
    assert role["rules"][0]["resourceNames"] == ["encoder", "shared"]


def test_the_activators_own_config_has_the_group(tmp_path: Path) -> None:
    """What the activator's pod mounts is a stack it starts from: the same group and pool."""
    settings = SETTINGS + (
        "    host_memory_budget: 1GiB\n    policy: tiered\n    wake: {host: 0.05, disk: 0.2}\n"
        "    host_hold_s: 10m\n"
    )
    stack = load_stack(
        write_group(tmp_path, torch_model(tmp_path, "a"), ENCODER_B, settings=settings)
    )
    activator = config_map(render(stack), "ember-activator")["data"]
    out = tmp_path / "activator"
    out.mkdir()
    for name, text in activator.items():
        (out / name).write_text(text)
    loaded = load_stack(out / "ember.yaml")
    assert set(loaded.models) == {"a", "ranker"} and set(loaded.groups) == {"shared"}
    moved = {"config_path", "configs"}  # the files are the ConfigMap's, under /etc/ember
    group, before = loaded.groups["shared"], stack.groups["shared"]
    assert group.pool.model_dump(exclude=moved) == before.pool.model_dump(exclude=moved)
    assert group.model_dump(exclude={"pool"}) == before.model_dump(exclude={"pool"})
    for name in ("a", "ranker"):
        member = loaded.models[name].model_dump(exclude=moved)
        assert member == stack.models[name].model_dump(exclude=moved)


@pytest.mark.parametrize(
    ("knative", "settings", "message"),
    [
        ("  image: cpu:1\n  activator_image: a:1", "", "group 'shared' \\(it wants a GPU\\)"),
        ("  gpu_image: gpu:1\n  activator_image: a:1", "", "group 'shared' has gpu_type L4"),
    ],
)
def test_a_group_knative_cannot_take_is_refused_naming_it(
    tmp_path: Path, knative: str, settings: str, message: str
) -> None:
    a = torch_model(tmp_path, "a", device="cuda", extra="gpu_type: L4\n")
    b = torch_model(tmp_path, "b", device="cuda", extra="gpu_type: L4\n")
    with pytest.raises(DeployError, match=message):
        render(load_stack(write_group(tmp_path, a, b, knative=knative, settings=settings)))


def test_a_group_name_knative_cannot_take_is_refused(tmp_path: Path) -> None:
    path = write_group(tmp_path, ENCODER_B.replace("ranker", "a"), ENCODER_B)
    path.write_text(path.read_text().replace("name: shared", "name: 1shared"))
    with pytest.raises(DeployError, match="group '1shared': a Knative Service name must be"):
        render(load_stack(path))


def gpu_group(tmp_path: Path) -> Path:
    """Two CUDA models on L4 nodes sharing replicas, with a node-local weight tier."""
    extra = "gpu_type: L4\n"
    return write_group(
        tmp_path,
        torch_model(tmp_path, "llm", device="cuda", extra=extra),
        torch_model(tmp_path, "coder", device="cuda", extra=extra).replace(
            "net.py:Net", "mypkg.models:Coder"
        ),
        knative=KNATIVE + NODE_LOCAL,
        settings=SETTINGS.replace("95MB", "20GiB") + "    host_memory_budget: 64GiB\n",
    )


def test_golden_yaml(tmp_path: Path) -> None:
    """A GPU group's objects, as a reader would check them. Regenerate after a deliberate change
    with ``python -m tests.unit.knative.test_groups`` and read the diff."""
    stack = load_stack(gpu_group(tmp_path))
    objects = render(stack)
    validate_all(objects, stack)
    pod = ksvcs(objects)["shared"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    golden = GOLDEN / "group.yaml"
    assert to_yaml(objects) == golden.read_text(), f"rendering changed; compare with {golden}"


if __name__ == "__main__":  # rewrite the golden file from the current rendering
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (GOLDEN / "group.yaml").write_text(to_yaml(render(load_stack(gpu_group(Path(tmp))))))
