#!/usr/bin/env python3
"""Estimate the images' sizes from the packages each installs, without a container engine.

Sums the installed size of every distribution an image's Dockerfile installs (with their
dependencies, resolved from this virtual environment's metadata) and adds the base image
(python:3.11-slim, ~125 MB unpacked). The CUDA image is not computable here: its torch build and
its NVIDIA libraries are not installed on this machine.

    scripts/image_sizes.py [--json]
"""

from __future__ import annotations

import argparse
import json
import re
from importlib import metadata

BASE_MB = 125.0  # python:3.11-slim, unpacked (Docker Hub, linux/amd64)
IMAGES = {
    "runtime-cpu": ["ember", "tokenizers"],  # ember[hf]: torch comes in as a dependency
    "activator": [
        "aiohttp",
        "httptools",
        "uvloop",
        "pydantic",
        "pyyaml",
        "prometheus-client",
        "jinja2",
        "kubernetes",
    ],
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str], skip_deps_of: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        if name in skip_deps_of:
            continue
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(_norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen


def size_mb(name: str) -> float:
    dist = metadata.distribution(name)
    total = 0
    for f in dist.files or []:
        try:
            total += f.locate().stat().st_size
        except OSError:
            continue
    return total / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = {}
    for image, roots in IMAGES.items():
        # the activator installs ember with --no-deps: its own deps are only the listed ones
        names = closure(roots, set()) | ({"ember"} if image == "activator" else set())
        sizes = {n: size_mb(n) for n in names}
        top = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        out[image] = {
            "packages_mb": round(sum(sizes.values()), 1),
            "total_mb": round(BASE_MB + sum(sizes.values()), 1),
            "largest": {k: round(v, 1) for k, v in top},
            "has_torch": "torch" in names,
        }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for image, row in out.items():
            largest = ", ".join(f"{k} {v:.0f}" for k, v in row["largest"].items())
            print(f"{image}: ~{row['total_mb']:.0f} MB ({largest} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
