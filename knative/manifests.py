"""``ember deploy --kn DIR``: every rendered object in a file of DIR, and the commands that apply
those files as they are.

One object per file, numbered in the order they must be applied (a model's ConfigMap before its
Knative Service, the event log's claim before the activator's Deployment): ``kubectl apply -f
DIR`` takes them in that order too. Core objects are applied the way ``ember deploy`` applies
them (server-side, field manager ``ember``, conflicts forced: a model's ConfigMap may be near 1
MiB, too big for client-side apply's annotation); Knative Services with ``kn service apply``,
which waits for Ready (immediate: they start at zero pods) and keeps ``--cluster-local``. Both
create or update, so the commands can be run again. Files an earlier run wrote that this one
does not are removed, so that DIR holds the stack as it is now.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from knative.errors import DeployError
from knative.features import ClusterSetting
from knative.render import to_yaml

KSVC_API = "serving.knative.dev/v1"
_OURS = re.compile(r"^\d{2,}-[a-z]+-[a-z0-9][a-z0-9.-]*\.yaml$")


@dataclass(frozen=True, slots=True)
class Manifest:
    """One object and the file it was written to."""

    path: Path
    obj: dict[str, Any]

    @property
    def is_ksvc(self) -> bool:
        return bool(self.obj["apiVersion"] == KSVC_API and self.obj["kind"] == "Service")


def file_name(index: int, obj: dict[str, Any], *, width: int = 2) -> str:
    kind = "ksvc" if obj["apiVersion"] == KSVC_API else str(obj["kind"]).lower()
    return f"{index:0{width}d}-{kind}-{obj['metadata']['name']}.yaml"


def write_manifests(objects: Sequence[dict[str, Any]], directory: Path) -> list[Manifest]:
    """Write each object to its file under ``directory`` (made if missing)."""
    width = max(2, len(str(len(objects) - 1)))
    out = [
        Manifest(directory / file_name(i, obj, width=width), obj) for i, obj in enumerate(objects)
    ]
    names = {m.path.name for m in out}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            if _OURS.match(old.name) and old.name not in names and old.is_file():
                old.unlink()  # an object this stack no longer has
        for manifest in out:
            partial = manifest.path.with_name(manifest.path.name + ".partial")
            partial.write_text(to_yaml([manifest.obj]))
            partial.replace(manifest.path)
    except OSError as exc:
        raise DeployError(f"cannot write the manifests to {directory}: {exc.strerror}") from None
    return out


def apply_commands(manifests: Sequence[Manifest]) -> list[str]:
    """A shell line per file, in order, applying it as written."""
    lines = []
    for m in manifests:
        meta = m.obj["metadata"]
        if m.is_ksvc:
            cmd = ["kn", "service", "apply", meta["name"], "--namespace", meta["namespace"]]
            cmd += ["--filename", str(m.path), "--cluster-local"]
        else:
            cmd = ["kubectl", "apply", "--server-side", "--field-manager=ember"]
            cmd += ["--force-conflicts", "-f", str(m.path)]
        lines.append(shlex.join(cmd))
    return lines


def settings_comment(settings: Sequence[ClusterSetting]) -> list[str]:
    """Shell comments: what knative-serving's ConfigMaps must hold, and how to set it (left to
    the cluster's owner: these are cluster-wide)."""
    lines = ["# knative-serving's ConfigMaps must hold (docs/knative.md):"]
    lines += [f"#   {s.line()}" for s in settings]
    by_map: dict[str, dict[str, str]] = {}
    for s in settings:
        by_map.setdefault(s.config_map, {})[s.key] = s.value
    for config_map, data in by_map.items():
        patch = json.dumps({"data": data}, separators=(",", ":"))
        cmd = ["kubectl", "patch", f"configmap/{config_map}", "-n", "knative-serving"]
        lines.append("#   " + shlex.join([*cmd, "--type", "merge", "-p", patch]))
    return lines


def images_comment(objects: Sequence[dict[str, Any]]) -> list[str]:
    """Shell comments: the images the objects run (every container's), and how to make them."""
    lines = [
        "# the images these objects run (scripts/build_images --push REGISTRY builds Ember's; "
        "a command engine's image is its own):"
    ]
    lines += [f"#   {image}" for image in images(objects)]
    return lines


def expects_comment(objects: Sequence[dict[str, Any]]) -> list[str]:
    """Shell comments: what the objects read that they do not create: the Secrets their
    containers name, and the weights their model configs load."""
    secrets: set[str] = set()
    sources: set[str] = set()
    todo: list[Any] = list(objects)
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            for key in ("secretRef", "secretKeyRef"):
                ref = node.get(key)
                if isinstance(ref, dict) and isinstance(ref.get("name"), str):
                    secrets.add(ref["name"])
            if node.get("kind") == "ConfigMap":
                for text in (node.get("data") or {}).values():
                    sources.update(_sources(text))
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    lines: list[str] = []
    if secrets:
        lines.append("# the Secrets they read (create them in the namespace first):")
        lines += [f"#   {name}" for name in sorted(secrets)]
    if sources:
        lines.append(
            "# the weights they load (s3://: ember cache push DIR URI first; hf://: from the hub):"
        )
        lines += [f"#   {source}" for source in sorted(sources)]
    return lines


def _sources(text: object) -> list[str]:
    """The ``source`` of a model config a ConfigMap ships (nothing for its other files)."""
    if not isinstance(text, str) or "source:" not in text:
        return []
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:  # a module file, not a config
        return []
    source = doc.get("source") if isinstance(doc, dict) else None
    return [source] if isinstance(source, str) else []


def images(objects: Sequence[dict[str, Any]]) -> list[str]:
    """Every container image the objects name (Deployments, Knative Services, CronJobs)."""
    found: set[str] = set()
    todo: list[Any] = list(objects)
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if isinstance(node.get("image"), str) and "name" in node:  # a container
                found.add(node["image"])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return sorted(found)
