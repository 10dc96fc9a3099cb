#!/usr/bin/env python3
"""How long the runtime image's interpreter takes to start, with and without the bytecode its
build compiled: what every scale from zero pays before ``ember serve`` can load a model.

Each image named (``--image``, built by ``scripts/build_images``; several to compare builds) gets
one working container, and each case (``--cases``, all by default) runs in it with ``buildah run``
(chroot isolation, as ``tests/images/`` runs the images), ``--repeats`` times after one unmeasured
run, one image after the other:

* ``python``: ``python -c pass``, buildah's own cost and the interpreter's floor;
* ``help``: ``ember serve --help``, the CLI's light start;
* ``import``: ``python -c 'import runtime.server, torch'``, what a replica imports before it
  serves.

Each case twice: as built, and with no bytecode (``PYTHONPYCACHEPREFIX`` names an empty folder,
so Python looks for bytecode only there and compiles every module it imports, as a start of an
image without any would; the image's ``PYTHONDONTWRITEBYTECODE`` keeps the folder empty). One more
run per case, with ``PYTHONVERBOSE``, counts the modules compiled from source.

Writes ``--out`` (JSON)::

    {"results": [{"image", "case", "bytecode", "median_s", "runs_s", "compiled"}], ...}

Medians of ``--repeats`` runs; a benchmark, not a test (this machine is shared and noisy). As root,
where ``buildah`` is. Usage: ``scripts/bench_image_start.py --image ember/runtime-cpu:0.1.0
--out bench-results/image-start.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
CASES = {
    "python": ["python", "-c", "pass"],
    "help": ["ember", "serve", "--help"],
    "import": ["python", "-c", "import runtime.server, torch"],
}
# an empty folder in the image's scratch: bytecode is looked for there alone
NO_BYTECODE = {"PYTHONPYCACHEPREFIX": "/tmp/bench-no-bytecode"}
COMPILED = re.compile(r"^# code object from [^'\s]+\.py$", flags=re.M)


@contextlib.contextmanager
def working_container(image: str) -> Iterator[str]:
    made = subprocess.run(
        [*BUILDAH, "from", "--quiet", "--pull-never", image], capture_output=True, text=True
    )
    if made.returncode != 0:
        raise SystemExit(f"bench_image_start: no image {image}: {made.stderr.strip()}")
    name = made.stdout.strip()
    try:
        yield name
    finally:
        subprocess.run([*BUILDAH, "rm", name], capture_output=True)


def run(container: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    envs = [f"{key}={value}" for key, value in env.items()]
    done = subprocess.run(
        [*BUILDAH, "run", "--isolation", "chroot", container, "--", "env", *envs, *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench_image_start: {' '.join(argv)} failed: {done.stderr[-2000:]}")
    return done


def measure(container: str, argv: list[str], env: dict[str, str], repeats: int) -> list[float]:
    run(container, argv, env)  # unmeasured: the page cache, as a node that has pulled the image
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(container, argv, env)
        runs.append(time.perf_counter() - started)
    return runs


def bench(images: list[str], cases: list[str], repeats: int) -> list[dict[str, Any]]:
    results = []
    with contextlib.ExitStack() as stack:
        containers = {image: stack.enter_context(working_container(image)) for image in images}
        # image after image within a case: the machine's load drifts alike for each
        for case in cases:
            argv = CASES[case]
            for bytecode, env in (("as built", {}), ("none", NO_BYTECODE)):
                for image, container in containers.items():
                    verbose = run(container, argv, {**env, "PYTHONVERBOSE": "1"})
                    runs = measure(container, argv, env, repeats)
                    result = {
                        "image": image,
                        "case": case,
                        "argv": argv,
                        "bytecode": bytecode,
                        "median_s": round(statistics.median(runs), 3),
                        "runs_s": [round(r, 3) for r in runs],
                        "compiled": len(COMPILED.findall(verbose.stderr)),
                    }
                    results.append(result)
                    print(
                        f"{image} {case:6} bytecode {bytecode:8}: {result['median_s']:.3f} s "
                        f"({result['compiled']} modules compiled)",
                        flush=True,
                    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench_image_start.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    parser.add_argument(
        "--image",
        action="append",
        help="an image to start (repeatable; default: ember/runtime-cpu:0.1.0)",
    )
    parser.add_argument(
        "--cases",
        type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
        default=list(CASES),
        help=f"which, comma-separated, of {', '.join(CASES)} (all)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per case (5)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("buildah runs the images here as root")
    if not args.cases or set(args.cases) - set(CASES):
        parser.error(f"--cases: choose from {', '.join(CASES)}")
    images = args.image or ["ember/runtime-cpu:0.1.0"]
    results = bench(images, args.cases, args.repeats)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "results": results,
            "repeats": args.repeats,
            "command": "scripts/bench_image_start.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"load {os.getloadavg()[0]:.1f} at the end",
            "measured": "wall time of `buildah run --isolation chroot` of the case, median of the "
            "runs after one unmeasured; compiled: modules Python compiled from source "
            "(PYTHONVERBOSE)",
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
