"""The parts of ember.yaml's ``knative:`` section that place pods and hold their data.

::

    knative:
      gpu_nodes:                   # where a model's gpu_type runs: one entry per gpu_type
        L4:
          node_selector: {cloud.google.com/gke-accelerator: nvidia-l4}
          tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
        A100: {}                   # any node with a free nvidia.com/gpu
      tier:                        # the replicas' local weight tier (/var/cache/ember)
        kind: persistentVolumeClaim  # or emptyDir (the default: one per pod, gone with it)
        storage_class: local-path  # a node-local class: a cold start on its node reads NVMe
      events:                      # the activator's event log (the cost report's data)
        storage_class: null        # the cluster's default class
        size_gi: 1

Tolerations use Kubernetes' own field names, so that a node pool's documented toleration can be
pasted as it is.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
_CLAIM = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class Toleration(BaseModel):
    """One toleration of a pod, as Kubernetes spells it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(default=None, pattern=_LABEL_KEY)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("a toleration with operator Equal needs a key")
        return self

    def manifest(self) -> dict[str, str]:
        """The toleration as it goes into a pod spec (unset fields left out)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class GpuNodes(BaseModel):
    """Where the pods of models with one ``gpu_type`` may run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    @model_validator(mode="after")
    def _label_keys(self) -> GpuNodes:
        for key in self.node_selector:
            if not re.match(_LABEL_KEY, key):
                raise ValueError(f"node_selector key {key!r} is not a Kubernetes label key")
        return self


class WeightTier(BaseModel):
    """The volume the replicas' local weight tier lives on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["emptyDir", "persistentVolumeClaim"] = "emptyDir"
    storage_class: str | None = None  # persistentVolumeClaim: None is the cluster's default
    claim: str = Field(default="ember-weights", pattern=_CLAIM, max_length=253)

    @model_validator(mode="before")
    @classmethod
    def _no_host_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "hostPath":
            # Knative's revision defaulting sets readOnly on every volume mount except
            # emptyDir, persistentVolumeClaim and ephemeral ones: the tier could not be written
            raise ValueError(
                "kind hostPath cannot hold the tier: Knative mounts a hostPath volume read-only; "
                "use kind persistentVolumeClaim with a node-local storage_class"
            )
        return data


class EventsVolume(BaseModel):
    """The PersistentVolumeClaim the activator's event log is written to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage_class: str | None = None  # None: the cluster's default class
    size_gi: float = Field(default=1, gt=0)
