"""One Knative Service running ``ember serve``: a model's, or a group's (a generic replica).

Both are a ConfigMap holding the model configs the container serves (each as it is shipped: its
weights' source rewritten to ``knative.models_uri`` when they are local, a ``torch-module``'s
Python file beside it) and a Knative Service mounting it at ``/etc/ember``. They differ in what
the container is told: a model's runs ``ember serve --config /etc/ember/model.yaml
--exit-on-load-failure``; a group's (:mod:`knative.groups`) one ``--config`` per member and
``--load-on-demand``; both as a :class:`~contracts.serve_order.ServeOrder` rendered by its one
``serve_argv``. Scaling, placement and the weight tier come from the :class:`ModelSpec`
(a group's pool spec) in the same way for both (:func:`service_values`), and for a model another
server's image runs (``engine: command``, :mod:`knative.engine`) too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from contracts.configfile import class_file
from contracts.serve_order import ServeOrder, serve_argv
from contracts.stack import ModelSpec, StackConfig
from knative.errors import DeployError
from knative.pods import TIER_PATH, placement, tier_budget_gb, tier_volume
from knative.rules import MAX_TIMEOUT_S
from knative.templating import render_objects

CONFIGMAP_LIMIT = 900 * 1024  # Kubernetes refuses ConfigMaps over 1 MiB; leave room
RUNTIME_PORT = 8080
CONFIG_DIR = "/etc/ember"  # where the ConfigMap is mounted
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Shipped:
    """A model config as the cluster gets it: ConfigMap keys and their text."""

    config_key: str  # the key holding the model config
    files: dict[str, str]  # the config, and the module file of a torch-module model
    wants_gpu: bool

    def config(self) -> dict[str, Any]:
        """The model config as shipped (its source where the cluster reads it)."""
        return dict(yaml.safe_load(self.files[self.config_key]))


def check_name(name: str, what: str) -> None:
    """A Knative Service's name must be a DNS-1035 label; ``what`` says whose (``model 'm'``)."""
    if not _NAME.match(name):
        raise DeployError(
            f"{what}: a Knative Service name must be a DNS label (lower case letters, digits "
            "and '-', starting with a letter, at most 63 characters)"
        )


def wants_gpu(config: dict[str, Any]) -> bool:
    return str(config.get("device", "auto")).startswith("cuda") or bool(config.get("gpu_type"))


def ship(stack: StackConfig, spec: ModelSpec, *, config_key: str, prefix: str = "") -> Shipped:
    """``spec``'s model config as shipped under ``config_key``; a module file it names goes
    beside it as ``prefix`` + its file name (a group's members each get their own)."""
    k = stack.knative
    model = model_config(spec)
    gpu = wants_gpu(model)
    files = {config_key: ""}
    source = str(model.get("source") or "")
    # a store's URI is served from there: s3:// through the tier, hf:// through the Hugging
    # Face cache on the tier's volume (HF_HUB_CACHE)
    if not source.startswith(("s3://", "hf://")):
        if not k.models_uri:
            raise DeployError(
                f"model '{spec.name}': its weights are local ({source or 'no source'}); push "
                f"them with `ember cache push DIR s3://BUCKET/PREFIX/{spec.name}` and set "
                "knative.models_uri to s3://BUCKET/PREFIX"
            )
        model["source"] = f"{k.models_uri.rstrip('/')}/{spec.name}"
    options = dict(model.get("options") or {})
    module = str(options.get("module", ""))
    module_file = class_file(module, spec.config_path.parent)
    if model.get("handler") == "torch-module" and module_file is not None:
        attr = module.partition(":")[2]
        key = prefix + module_file.name
        try:
            files[key] = module_file.read_text()
        except OSError as exc:
            raise DeployError(f"model '{spec.name}': cannot read {module_file}: {exc}") from None
        options["module"] = f"{key}:{attr}"
        model["options"] = options
    model.setdefault("device", "cuda" if gpu else "cpu")
    files[config_key] = yaml.safe_dump(model, sort_keys=False)
    return Shipped(config_key, files, gpu)


def model_config(spec: ModelSpec) -> dict[str, Any]:
    raw = yaml.safe_load(spec.config_path.read_text())
    if isinstance(raw, list):
        raw = raw[0]
    if isinstance(raw, dict) and "models" in raw:
        raw = raw["models"][0]
    if not isinstance(raw, dict):
        raise DeployError(f"{spec.config_path}: not a model config")
    return dict(raw)


def model_objects(stack: StackConfig, spec: ModelSpec) -> list[dict[str, Any]]:
    """A model's ConfigMap and Knative Service."""
    check_name(spec.name, f"model '{spec.name}'")
    shipped = ship(stack, spec, config_key="model.yaml")
    # a model that cannot load ends the pod with why (ExitCode3, its termination message): the
    # activator's Knative scaler sees Ready=False at once instead of an unready pod until its
    # startup timeout
    return service_objects(
        stack,
        spec,
        what=f"model '{spec.name}'",
        config_map=f"{spec.name}-model",
        files=shipped.files,
        serve_args=pod_order(stack, [f"{CONFIG_DIR}/model.yaml"], exit_on_load_failure=True),
        gpu=shipped.wants_gpu,
    )


def service_objects(
    stack: StackConfig,
    spec: ModelSpec,
    *,
    what: str,
    config_map: str,
    files: dict[str, str],
    serve_args: list[str],
    gpu: bool,
) -> list[dict[str, Any]]:
    """The ConfigMap (``files``) and the Knative Service running ``ember serve`` with
    ``serve_args``, scaled as ``spec`` says, at zero pods until its first request."""
    k = stack.knative
    image = k.gpu_image if gpu else k.image
    if not image:
        which = "knative.gpu_image" if gpu else "knative.image"
        why = " (it wants a GPU)" if gpu else ""
        raise DeployError(f"{what}{why}: set {which} in {stack.path.name}")
    objects = render_objects(
        "ksvc.yaml.j2",
        **service_values(stack, spec, what=what, config_map=config_map, files=files, gpu=gpu),
        image=image,
        args=["serve", *serve_args],
    )
    objects[0]["data"] = dict(files)  # the template holds one file; the ConfigMap holds them all
    return objects


def service_values(
    stack: StackConfig,
    spec: ModelSpec,
    *,
    what: str,
    config_map: str,
    files: dict[str, str],
    gpu: bool,
) -> dict[str, Any]:
    """What every model's Knative Service has, whatever its pod runs (``ksvc.yaml.j2``'s
    values but the container's ``image`` and ``args``): the ConfigMap of ``files``, names and
    labels, the scaling annotations, the revision's timeouts, placement, resources, the S3 and
    Hugging Face credentials and the weight tier's volume."""
    k = stack.knative
    if sum(len(v.encode()) for v in files.values()) > CONFIGMAP_LIMIT:
        raise DeployError(f"{what}: its configs and modules are over 900 KiB")
    pod = placement(stack, spec)  # DeployError for a gpu_type knative.gpu_nodes lacks
    limits: dict[str, str] = {"memory": k.memory}
    if gpu:
        limits["nvidia.com/gpu"] = "1"
    labels = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": "ember"}
    # token streams: a generation model's, and whatever another OpenAI server (a command) serves
    streams = (
        spec.handler == "text-generation"
        or spec.engine == "command"
        or any(stack.models[m].handler == "text-generation" for m in spec.members)
    )
    return {
        "service": spec.name,
        "config_map": config_map,
        "namespace": k.namespace,
        "labels": labels,
        # reachable only inside the cluster: clients come in through the activator (its tokens)
        "service_labels": {**labels, "networking.knative.dev/visibility": "cluster-local"},
        "model_yaml": next(iter(files.values())),
        # no pod at deploy time (nor a GPU held for one): the first request starts it
        "initial_scale": 0,
        "min_scale": spec.min_replicas,
        "max_scale": spec.max_replicas,
        "target": number(spec.target),
        "retention": f"{int(spec.keep_alive_s)}s",
        "progress_deadline": f"{k.progress_deadline_s}s",
        "container_concurrency": spec.container_concurrency,
        # a generation model's streams: as long as the revision allows, timed by their silences
        "timeout_s": MAX_TIMEOUT_S if streams else k.timeout_s,
        "stream_timeout_s": min(k.timeout_s, MAX_TIMEOUT_S) if streams else None,
        "env": pod_env(stack),
        "env_from": [{"secretRef": {"name": k.s3_secret}}] if k.s3_secret else [],
        "requests": {"cpu": k.cpu, "memory": k.memory},
        "limits": limits,
        "node_selector": pod.get("nodeSelector", {}),
        "tolerations": pod.get("tolerations", []),
        "tier_path": TIER_PATH,
        "tier_volume": tier_volume(stack),
    }


def pod_env(stack: StackConfig) -> list[dict[str, Any]]:
    """The runtime's environment: its tier, the Hugging Face cache on the tier's volume (an
    hf:// model is downloaded once per volume, not per pod start), and the hub token from
    ``knative.hf_secret`` (its key ``token``) for private or gated models."""
    env: list[dict[str, Any]] = [
        {"name": "EMBER_CACHE_DIR", "value": TIER_PATH},
        {"name": "HF_HUB_CACHE", "value": f"{TIER_PATH}/huggingface"},
    ]
    if stack.knative.hf_secret:
        secret = {"name": stack.knative.hf_secret, "key": "token"}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": secret}})
    return env


def pod_order(stack: StackConfig, configs: list[str], **flags: Any) -> list[str]:
    """``ember serve``'s arguments for a pod serving ``configs``: its address and weight tier,
    the same in every Service, and ``flags`` (:class:`~contracts.serve_order.ServeOrder`'s)."""
    order = ServeOrder(
        configs=tuple(Path(c) for c in configs),
        host="0.0.0.0",
        port=RUNTIME_PORT,
        cache_dir=Path(TIER_PATH),
        cache_budget_gb=float(tier_budget_gb(stack.knative.cache_size_gi)),
        **flags,
    )
    return serve_argv(order)


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
