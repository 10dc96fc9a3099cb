"""The Knative Service of a model another OpenAI-compatible server serves (``engine: command``).

On this machine ``ember serve`` pulls such a model's weights and starts its command
(:mod:`runtime.command_engine`). On Knative the engine's own image (the model config's
``image``, e.g. ``vllm/vllm-openai:v0.9.1``) runs the command as the pod's container, and
Ember's runtime image runs before it as an init container that fills the weight tier: ``ember
cache pull SOURCE`` (streamed and verified as for Ember's own handlers, hf:// through the
Hugging Face cache on the tier's volume) with ``--link``, which puts a symbolic link to the
model's folder at :data:`WEIGHTS`, the path the command gets as ``{weights}``, then exits. The
link lives in a small per-pod volume, so a new revision's pods never re-point an old one's.

The command is filled in as ``ember serve`` fills it (:func:`contracts.engine.command_argv`):
``{port}`` is the container's port (Knative's ``PORT``, 8080), ``{host}`` 0.0.0.0 and ``{model}``
the model's name. Knative probes ``health`` for readiness (no v2 routes: the engine has none) and
the port for liveness, once the revision's progress deadline is past (a loading engine answers
nothing). The Service is scaled, placed, timed (as a text-generation model's: its streams) and
given its tier as every model's (:func:`knative.service.service_values`); Knative takes
``initContainers`` only with ``kubernetes.podspec-init-containers`` enabled
(:mod:`knative.features`).
"""

from __future__ import annotations

from typing import Any

from contracts.engine import command_argv
from contracts.names import valid_image
from contracts.stack import ModelSpec, StackConfig
from knative.errors import DeployError
from knative.pods import TIER_PATH, tier_budget_gb
from knative.service import RUNTIME_PORT, check_name, model_config, service_values, ship
from knative.templating import render_objects

LINK_DIR = "/ember"  # the per-pod volume holding the link
WEIGHTS = f"{LINK_DIR}/weights"  # {weights}: the model's folder in the tier, through the link


def engine_objects(stack: StackConfig, spec: ModelSpec) -> list[dict[str, Any]]:
    """A command engine's ConfigMap (its config, for the activator and ``kubectl``: the pod does
    not read it) and its Knative Service."""
    what = f"model '{spec.name}'"
    check_name(spec.name, what)
    image = model_config(spec).get("image")
    if not image:
        raise DeployError(
            f"{what} is served by its command (engine: command): on Knative its engine's image "
            "runs it; set image: in its model config (e.g. image: vllm/vllm-openai:v0.9.1)"
        )
    if not valid_image(image):
        raise DeployError(f"{what}: image {image!r} is not a container image reference")
    if not spec.source:
        raise DeployError(
            f"{what} has no source: on Knative a command engine's weights come into the tier "
            "from a store (s3://, or hf://) before its command starts; set source"
        )
    shipped = ship(stack, spec, config_key="model.yaml")  # local weights: from models_uri
    config = shipped.config()
    fill_image = stack.knative.image or stack.knative.gpu_image
    if not fill_image:
        raise DeployError(
            f"{what}: set knative.image (or knative.gpu_image) in {stack.path.name}: Ember's "
            "runtime image fills the weight tier before the engine starts"
        )
    try:
        command = command_argv(
            config.get("command") or (),
            weights=WEIGHTS,
            port=RUNTIME_PORT,
            host="0.0.0.0",
            model=spec.name,
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise DeployError(f"{what}: its command has a placeholder it cannot fill: {exc}") from None
    values = service_values(
        stack,
        spec,
        what=what,
        config_map=f"{spec.name}-model",
        files=shipped.files,
        gpu=shipped.wants_gpu,
    )
    objects = render_objects(
        "engine-ksvc.yaml.j2",
        **values,
        fill_image=fill_image,
        fill_args=fill_args(stack, str(config["source"])),
        fill_limits={"memory": stack.knative.memory},  # no GPU: it only moves bytes
        link_dir=LINK_DIR,
        image=image,
        command=command,
        port=RUNTIME_PORT,
        health=spec.health or "/health",
        liveness_delay_s=stack.knative.progress_deadline_s,
    )
    objects[0]["data"] = dict(shipped.files)
    return objects


def fill_args(stack: StackConfig, source: str) -> list[str]:
    """The init container's ``ember`` arguments: the model into the tier (within its budget, as
    ``ember serve`` keeps it) and linked at :data:`WEIGHTS`."""
    budget = tier_budget_gb(stack.knative.cache_size_gi)
    return [
        "cache",
        "pull",
        source,
        "--cache-dir",
        TIER_PATH,
        "--cache-budget-gb",
        budget,
        "--link",
        WEIGHTS,
    ]
