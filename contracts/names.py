"""The one rule for model names, checked wherever a name arrives (model configs, ember.yaml).

A name becomes a URL path segment (``/v2/models/NAME``), a directory in the weight tier, a label
in metrics and, lower-cased, a Kubernetes object name (which ``ember deploy`` checks further
against DNS-1035). So: 1-63 characters, letters, digits, ``_``, ``.`` and ``-``, starting and
ending with a letter or digit; no ``/``, no ``..`` segment, nothing a shell or YAML would read.
"""

from __future__ import annotations

import re

MODEL_NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def valid_model_name(name: object) -> bool:
    return isinstance(name, str) and MODEL_NAME.fullmatch(name) is not None


# a Hugging Face Hub repository id, org/name (``hf://`` + it names a model source)
HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# a container image reference as Docker's reference grammar has it ([host[:port]/]path[:tag]
# [@algorithm:hex]): a command engine's image on Knative
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REF = re.compile(
    rf"^(?:{_HOST}(?::[0-9]+)?/)?{_PATH}(?:/{_PATH})*"
    r"(?::[\w][\w.-]{0,127})?(?:@[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,})?$"
)


def valid_image(ref: object) -> bool:
    """Whether ``ref`` is a container image reference (``vllm/vllm-openai:v0.9.1``,
    ``registry.example.com:5000/team/engine@sha256:...``), at most 255 characters."""
    return isinstance(ref, str) and len(ref) <= 255 and IMAGE_REF.fullmatch(ref) is not None
