#!/usr/bin/env python3
"""Build Ember's images, tag them, print their real sizes, and push them if asked.

    scripts/build_images [--images activator,runtime-cpu] [--base IMAGE | --base debian]
                         [--tag TAG] [--push REGISTRY] [--out FILE.json]

The images are the Dockerfiles in ``templates/`` (``activator``, ``runtime-cpu``; ``runtime-cuda``
when named, ~3 GB more), built from the repository root and tagged ``ember/NAME:TAG`` (TAG: the
project's version). The engine is Docker when its daemon answers, else buildah as root, with no
daemon (``--isolation chroot``, and the ``vfs`` storage driver unless ``STORAGE_DRIVER`` says
otherwise).

``--base`` is the image every stage starts from: ``python:3.11-slim`` (pulled from a registry) by
default; ``debian`` makes one from Debian's packages with mmdebstrap (bookworm's Python 3.11 and
venv, no documentation, no locales), for machines that reach Debian's mirrors but no registry. Its
root filesystem is kept under ``.cache/images/`` and imported once as ``localhost/ember-base``.

With buildah, the host's pip configuration (its files and ``PIP_*`` variables) goes into the build,
with the local folders and files it names (wheel folders, ``file://`` indexes, the constraint and
certificate files), and runtime-cpu's torch comes from wherever that pip finds it (``TORCH_INDEX``
empty; runtime-cuda's always from the CUDA index); with Docker, from the Dockerfiles' defaults
(the public CPU and CUDA indexes).

A size is the image's root filesystem, uncompressed, as measured once built (``du`` of the
mounted image with buildah, the engine's own figure with Docker). ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "images"
IMAGES = ("activator", "runtime-cpu", "runtime-cuda")
DEFAULT_IMAGES = ("activator", "runtime-cpu")
SLIM = "python:3.11-slim"
DEBIAN = "debian"
# what --base debian installs, and how: the cache key is every argument
MMDEBSTRAP = [
    "--variant=minbase",
    "--include=python3,python3-venv,ca-certificates",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",  # merged /usr without usrmerge's perl
    "--aptopt=Apt::Install-Recommends false",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "bookworm",
]
MIRROR = "http://deb.debian.org/debian"
# pip settings that name local paths, which the build must see where the host sees them
PATH_KEYS = {"find-links", "index-url", "extra-index-url", "constraint", "requirement", "cert"}


Mounts = list[tuple[Path, str]]  # (on the host, in the build), read-only


class BuildError(Exception):
    """A build could not be done; the message says why and what to do."""


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, check=True, **kw)


def output(cmd: list[str]) -> str:
    return run(cmd, capture_output=True).stdout.strip()


# ------------------------------------------------------------------------------------ engines
class Buildah:
    name = "buildah"

    def __init__(self) -> None:
        self.cmd = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
        self.isolation = os.environ.get("BUILDAH_ISOLATION", "chroot")

    def exists(self, image: str) -> bool:
        found = subprocess.run(
            [*self.cmd, "inspect", "--type", "image", image], capture_output=True, text=True
        )
        return found.returncode == 0

    def import_rootfs(self, tarball: Path, image: str) -> None:
        container = output([*self.cmd, "from", "scratch"])
        try:
            run([*self.cmd, "add", container, str(tarball), "/"], stdout=subprocess.DEVNULL)
            path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            run([*self.cmd, "config", "--env", path, "--cmd", '["/bin/bash"]', container])
            run([*self.cmd, "commit", "--quiet", container, image], stdout=subprocess.DEVNULL)
        finally:
            run([*self.cmd, "rm", container], stdout=subprocess.DEVNULL)

    def build(self, dockerfile: Path, image: str, args: dict[str, str], mounts: Mounts) -> None:
        # no --layers: on vfs every layer kept is a whole copy of the root filesystem; without
        # them a stage is one working container, committed once
        cmd = [*self.cmd, "bud", "--isolation", self.isolation, "-f", str(dockerfile)]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        for host, inside in mounts:
            cmd += ["--volume", f"{host}:{inside}:ro"]
        run([*cmd, "--tag", image, str(ROOT)])
        # the image an earlier build of this tag left untagged
        subprocess.run([*self.cmd, "rmi", "--prune"], capture_output=True, text=True)

    def size(self, image: str) -> int:
        with self.mounted(image) as root:
            return int(output(["du", "-sb", "--one-file-system", str(root)]).split()[0])

    @contextlib.contextmanager
    def mounted(self, image: str) -> Iterator[Path]:
        container = output([*self.cmd, "from", "--quiet", "--pull-never", image])
        try:
            yield Path(output([*self.cmd, "mount", container]))
        finally:
            subprocess.run([*self.cmd, "umount", container], capture_output=True)
            subprocess.run([*self.cmd, "rm", container], capture_output=True)

    def push(self, image: str, target: str) -> None:
        run([*self.cmd, "tag", image, target])
        run([*self.cmd, "push", target, f"docker://{target}"])


class Docker:
    name = "docker"

    def exists(self, image: str) -> bool:
        found = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
        return found.returncode == 0

    def import_rootfs(self, tarball: Path, image: str) -> None:
        run(["docker", "import", "--change", 'CMD ["/bin/bash"]', str(tarball), image])

    def build(self, dockerfile: Path, image: str, args: dict[str, str], mounts: Mounts) -> None:
        # docker build mounts nothing: the Dockerfiles' own sources (the public indexes)
        cmd = ["docker", "build", "-f", str(dockerfile), "-t", image]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        run([*cmd, str(ROOT)])

    def size(self, image: str) -> int:
        return int(output(["docker", "image", "inspect", "--format", "{{.Size}}", image]))

    def push(self, image: str, target: str) -> None:
        run(["docker", "tag", image, target])
        run(["docker", "push", target])


def engine() -> Buildah | Docker:
    """Docker when its daemon answers, else buildah (root, no daemon)."""
    if shutil.which("docker"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=True)
            return Docker()
    if shutil.which("buildah"):
        if os.geteuid() != 0:
            raise BuildError("buildah builds here as root: run as root, or start a Docker daemon")
        return Buildah()
    raise BuildError(
        "no container engine: start a Docker daemon, or install buildah "
        "(Debian: apt-get install buildah; scripts/setup does)"
    )


# ---------------------------------------------------------------------------------- the base
def debian_base(tool: Buildah | Docker) -> str:
    """``localhost/ember-base:bookworm-KEY``, made by mmdebstrap once per set of arguments."""
    key = hashlib.sha256(json.dumps([MMDEBSTRAP, MIRROR]).encode()).hexdigest()[:12]
    image = f"localhost/ember-base:bookworm-{key}"
    if tool.exists(image):
        return image
    tarball = CACHE / f"debian-bookworm-{key}.tar"
    if not tarball.exists():
        if not shutil.which("mmdebstrap"):
            raise BuildError(
                "--base debian needs mmdebstrap (Debian: apt-get install mmdebstrap; "
                "scripts/setup does), or give --base an image to start from"
            )
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"build_images: making the base with mmdebstrap ({tarball.name})", file=sys.stderr)
        partial = tarball.with_suffix(".partial.tar")
        run(["mmdebstrap", "--quiet", *MMDEBSTRAP, str(partial), MIRROR])
        partial.replace(tarball)
    tool.import_rootfs(tarball, image)
    return image


# ------------------------------------------------------------------------ the host's pip
def host_pip() -> tuple[str, list[Path]]:
    """The host pip's effective settings as one pip.conf (for ``/etc/pip.conf`` in the build),
    and the local paths they name."""
    listed = output([sys.executable, "-m", "pip", "config", "list"])
    settings: dict[str, str] = {}
    for line in listed.splitlines():  # e.g. global.find-links='/opt/wheels', :env:.cert='...'
        match = re.fullmatch(r"(?::env:|global|install)\.([\w-]+)='(.*)'", line.strip())
        if match:
            settings[match[1]] = match[2]  # env lines come last: they win, as in pip
    mounts: set[Path] = set()
    for key, value in settings.items():
        if key not in PATH_KEYS:
            continue
        for item in value.split():
            path = Path(item.removeprefix("file://"))
            if key.endswith("index-url") and path.name == "simple":
                path = path.parent  # its pages link to ../../files/, beside it
            if path.is_absolute() and path.exists():
                mounts.add(path)
    if Path("/etc/ssl/certs").is_dir():
        mounts.add(Path("/etc/ssl/certs"))
    text = "[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items()))
    return text, sorted(mounts)


# ------------------------------------------------------------------------------------ the run
def version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def build(args: argparse.Namespace) -> dict[str, Any]:
    tool = engine()
    base = debian_base(tool) if args.base == DEBIAN else args.base
    build_args = {"BASE": base}
    local_torch = False
    mounts: Mounts = []
    with tempfile.TemporaryDirectory(prefix="ember-images-") as tmp:
        if isinstance(tool, Buildah):
            conf, paths = host_pip()
            (Path(tmp) / "pip.conf").write_text(conf)
            # each path where the host has it; the settings where pip reads a global one
            mounts = [(path, str(path)) for path in paths]
            mounts.append((Path(tmp) / "pip.conf", "/etc/pip.conf"))
            local_torch = True
        results: dict[str, Any] = {}
        for name in args.images:
            image = f"ember/{name}:{args.tag}"
            started = time.monotonic()
            dockerfile = ROOT / "templates" / f"Dockerfile.{name}"
            # the CPU build of torch from where this host's pip finds it; the CUDA one never
            extra = {"TORCH_INDEX": ""} if local_torch and name == "runtime-cpu" else {}
            tool.build(dockerfile, image, {**build_args, **extra}, mounts)
            seconds = time.monotonic() - started
            size = tool.size(image)
            results[name] = {"image": image, "bytes": size, "build_s": round(seconds, 1)}
            print(f"{image}: {size / 1e6:.1f} MB (built in {seconds:.0f} s)", flush=True)
            if args.push:
                target = f"{args.push.rstrip('/')}/ember/{name}:{args.tag}"
                tool.push(image, target)
                results[name]["pushed"] = target
    return {
        "engine": tool.name,
        "base": base,
        "images": results,
        "command": "scripts/build_images " + " ".join(sys.argv[1:]),
        "measured": "the root filesystem, uncompressed (du -sb of the mounted image, or the "
        "engine's size)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/build_images",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[2:]),
    )
    parser.add_argument(
        "--images",
        type=lambda s: [i.strip() for i in s.split(",") if i.strip()],
        default=list(DEFAULT_IMAGES),
        help=f"which, comma-separated, of {', '.join(IMAGES)} (default: activator,runtime-cpu)",
    )
    parser.add_argument("--base", default=SLIM, help=f"the base image, or 'debian' ({SLIM})")
    parser.add_argument("--tag", default=version(), help="the images' tag (the project version)")
    parser.add_argument("--push", metavar="REGISTRY", help="push to REGISTRY/ember/NAME:TAG")
    parser.add_argument("--out", type=Path, help="write what was built, with sizes, as JSON")
    args = parser.parse_args(argv)
    unknown = [i for i in args.images if i not in IMAGES]
    if unknown or not args.images:
        parser.error(f"--images: choose from {', '.join(IMAGES)}, not {', '.join(unknown)}")
    try:
        result = build(args)
    except BuildError as exc:
        print(f"build_images: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(
            f"build_images: {' '.join(exc.cmd[:4])} ... failed (exit {exc.returncode})",
            file=sys.stderr,
        )
        return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
