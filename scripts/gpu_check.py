#!/usr/bin/env python3
"""The prepared run for a lent GPU machine: GPU tests, cold start from zero, sleep and wake, load
rows onto cuda.

Five steps, in this order, each in its own bounded child process with its own time budget (a step
past its budget is stopped, SIGTERM then SIGKILL to its whole process group, and whatever it had
measured is kept); a failed step is recorded in ``notes`` and the next one still runs:

    tests      ``python -m pytest -q -p no:cacheprovider tests/gpu`` (``--junitxml``: the counts
               come from the XML, not the log)
    coldstart  a generated 2 GiB fp16 ``torch-module`` (64 x ``nn.Linear(4096, 4096,
               bias=False, dtype=float16)`` with ``tanh``, seeded random safetensors weights in a
               local directory, so they are in the page cache; ``device: cuda``, ``warmup: true``)
               served by ``ember up``: request at zero -> first answer with ``warm_pool: 1``
               (timed once ``ember_activator_warm_pool_ready`` >= 1) and ``warm_pool: 0``, with
               the load phases from the replica's ``ember_model_load_phase_seconds`` (else the
               activator's event log); and the hand-written load in a fresh process, timed from
               its spawn: import torch, build the module (on the CPU), ``load_file(device=
               "cuda")``, ``load_state_dict``, ``.to("cuda")``, one forward, synchronize (as the
               baseline in shared/gpu/RESULTS.md was measured)
    sleep      the same module, generated afresh, served by ``ember serve`` (scripts/
               gpu_sleep.py): the median of warm requests, then per level ``host`` (weights to
               pinned host memory) and ``disk`` (weights dropped, re-read from the page-cache-warm
               file), ``--repeats`` times: unload at that level, one request timed; its wake is
               that time minus the warm median, beside the runtime's own
               ``ember_model_wake_seconds``. The issue's targets: the 2 GiB fp16 module wakes from
               host in <= 0.1 s and from disk in <= 1.0 s (``met``: the client's median within)
    llm        a ~1B-parameter random-weight Llama in fp16 (scripts/gpu_llm.py): the first token
               of a one-token completion sent at zero through ``ember up``'s ``/v1/completions``
               with the warm pool, the page cache warm (target <= 1.0 s) and dropped (target
               <= 3 x the disk's read time, ``cat`` after a drop), and from a fresh process;
               against transformers' ``from_pretrained`` + ``generate`` in a new process
    rows       ``scripts/bench_load.py``'s own workers and row functions (imported, not copied) on
               a ``--size-gb`` checkpoint, ``--repeats`` fresh processes per row: the warm tier
               onto cuda (ember, safetensors, fastsafetensors, runai ``@cuda``), the directory
               store streamed into a fresh tier with the page cache dropped (cat, store-to-tier,
               ember, ember@staged-cpu, ember@cuda) and a local cold ``cat``; S3 rows only where
               npm's s3rver is already installed (``.bench-tools/``; never installed here: the
               GPU machine has no network), else a note. Last, as it makes do with the time left
               (it skips runs, not the step)

Writes ``--out`` as ``{"results": [bench_load rows], "coldstart": {"pool_s", "fresh_s",
"handwritten_s", "phases"}, "sleep": {"results": [{"model", "level", "device", "wake_s_median",
"runtime_wake_s_median", "runs", ...}], "targets": {"host_s": 0.1, "disk_s": 1.0}, "met":
{"host_s", "disk_s"}}, "llm": {"pool_s", "fresh_s", "cold_pool_s", "disk_read_s",
"handwritten_s", "bytes", "targets", "met"}, "tests": {"passed", "failed"}, "notes": [...]}``
and prints it.
Exit status: 0 when every step that ran succeeded, 1 when one failed (see ``notes``), 2 when
there is no CUDA device (and no ``--device cpu``). A Python module a step needs and cannot
import is named in a note and the step is skipped, not a traceback. Every process it starts
is on 127.0.0.1 only and is stopped before it exits; the whole run stays within ``--budget-s``
(500 s by default; the steps are capped at 90, 100, 60, 120 and 120 s, and a step that runs short of
time skips its remaining runs with a note rather than being cut off).

On the lent GPU machine (the device tool runs this in the repository root, after the wrapper
has installed the wheels of the modules that machine lacks; the timeout leaves a minute over the
budget for the probe and the steps' grace):

    python3 scripts/gpu_check.py --out "$OUT/gpu_check.json"          (timeout_s: 560)

Without a GPU, the same plumbing with tiny sizes (a 0.05 GiB checkpoint, a 4 x 256 module on the
CPU, no @cuda rows; ``--skip-STEP`` leaves a step out):

    .venv/bin/python scripts/gpu_check.py --device cpu --out /tmp/gpu_smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gpu_llm  # beside this file: on sys.path when this runs as a script
import gpu_sleep
from gpu_sleep import RunFailed, http_post, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"

# rows last: it is the step that makes do with what time is left (it skips runs, not rows)
STEPS = ("tests", "coldstart", "sleep", "llm", "rows")
STEP_BUDGET_S = {"tests": 90, "coldstart": 100, "sleep": 60, "llm": 120, "rows": 120}
GRACE_S = 10  # SIGTERM -> SIGKILL for a step's process group
# what each step imports (directly or in its processes): checked up front, so a missing one is
# named in a note instead of failing somewhere deep inside
_SERVE = ("fastapi", "starlette", "uvicorn", "httptools", "orjson", "prometheus_client")
_CORE = ("torch", "numpy", "safetensors", "yaml", "pydantic")
_STORE = ("aiobotocore", "botocore", "jmespath", "aioitertools", "blake3")
NEEDS = {
    "tests": ("pytest", "pytest_asyncio", "httpx", *_CORE, *_SERVE, *_STORE),
    "rows": (*_CORE, *_STORE),
    "coldstart": (*_CORE, *_SERVE, "aiohttp"),
    "sleep": (*_CORE, *_SERVE, "aiohttp"),
    "llm": (*_CORE, *_SERVE, "aiohttp", "transformers", "tokenizers"),
}
PEER_MODULES = {"fastsafetensors": "fastsafetensors", "runai": "runai_model_streamer"}
MISSING = re.compile(r"No module named '([\w.]+)'")

COLD_MODEL = "big"
MODULE = '''"""Generated by scripts/gpu_check.py: {layers} fp16 linear layers of {dim} x {dim}."""

import torch
from torch import nn


class Big(nn.Module):
    def __init__(self, layers: int = {layers}, dim: int = {dim}) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(dim, dim, bias=False, dtype=torch.float16) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x
'''
GENERATE = """
import sys
import torch
from safetensors.torch import save_file
layers, dim, device, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
g = torch.Generator(device=device).manual_seed(0)
state = {
    f"layers.{i}.weight": (torch.randn(dim, dim, generator=g, device=device) * 0.02).half().cpu()
    for i in range(layers)
}
save_file(state, path)
"""
HANDWRITTEN = """
import json, sys, time
import torch
from safetensors.torch import load_file
sys.path.insert(0, sys.argv[1])
from big import Big
device, weights, dim = sys.argv[2], sys.argv[3], int(sys.argv[4])
at = {"imports": time.time()}  # the CUDA context is made lazily, in load_file
m = Big()
at["build"] = time.time()
state = load_file(weights, device=device)
at["load_file"] = time.time()
m.load_state_dict(state)
m = m.to(device).eval()
at["load_state_dict"] = time.time()
with torch.inference_mode():
    y = m(torch.full((1, dim), 0.01, dtype=torch.float16, device=device))
if device == "cuda":
    torch.cuda.synchronize()
at["forward"] = time.time()
assert y.shape == (1, dim)
print(json.dumps(at))
"""


# ------------------------------------------------------------------------------ processes
def run_bounded(cmd: list[str], timeout_s: float, **kwargs: Any) -> tuple[int | None, str, str]:
    """Run ``cmd`` in its own process group; past ``timeout_s``, SIGTERM the group, then
    SIGKILL it. Returns (exit status or None if it timed out, stdout, stderr): captured when
    ``capture`` is true (the default), else empty (inherited)."""
    capture = kwargs.pop("capture", True)
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=pipe,
        stderr=pipe,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout_s))
        return proc.returncode, out or "", err or ""
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return None, out or "", err or ""
    finally:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # anything it started and left behind


def stop(proc: subprocess.Popen[Any], grace_s: float = 30) -> None:
    """SIGTERM a process started with ``start_new_session``, SIGKILL it (and its group) late."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def explain(text: str, limit: int = 300) -> str:
    """A failure's output in a line: the missing module when that is the cause, else its tail."""
    match = MISSING.search(text)
    if match:
        return f"missing Python module {match.group(1)!r}"
    return " | ".join(text.strip().splitlines()[-4:])[-limit:] or "(no output)"


def missing_modules(names: tuple[str, ...]) -> list[str]:
    gone = []
    for name in dict.fromkeys(names):
        try:
            if importlib.util.find_spec(name) is None:
                gone.append(name)
        except (ImportError, ValueError):
            gone.append(name)
    return gone


# ------------------------------------------------------------------------------ step: tests
def step_tests(timeout_s: float, work: Path) -> tuple[dict[str, int], list[str], bool]:
    xml = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"]
    cmd += ["--junitxml", str(xml)]
    rc, _, _ = run_bounded(cmd, timeout_s, cwd=ROOT, capture=False)
    counts = {"passed": 0, "failed": 0}
    notes: list[str] = []
    if rc is None:
        notes.append(f"pytest ran past {timeout_s:.0f}s and was stopped")
    if not xml.exists():
        notes.append(f"pytest wrote no junit XML (exit status {rc})")
        return counts, notes, False
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = failed = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    counts = {"passed": total - failed - skipped, "failed": failed}
    for case in root.iter("testcase"):
        for bad in (*case.findall("failure"), *case.findall("error")):
            detail = (bad.get("message") or "") + "\n" + (bad.text or "")
            notes.append(f"{case.get('classname')}.{case.get('name')}: {explain(detail)}")
        for skip in case.findall("skipped"):
            notes.append(f"{case.get('name')} skipped: {skip.get('message')}")
    if rc not in (0, None) and not failed:
        notes.append(f"pytest exited {rc} with no failed test (a forbidden skip, or no tests?)")
    return counts, notes, rc == 0 and failed == 0


# ------------------------------------------------------------------------------ child steps
class Partial:
    """A child step's results so far, rewritten after each unit so a stopped step keeps them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "results": [],
            "coldstart": {},
            "sleep": gpu_sleep.empty_report(),
            "llm": gpu_llm.empty_report(),
            "notes": [],
            "ok": True,
        }

    @property
    def notes(self) -> list[str]:
        notes: list[str] = self.data["notes"]
        return notes

    def fail(self, note: str) -> None:
        self.data["ok"] = False
        self.note(note)

    def note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)


def child_main(args: argparse.Namespace) -> int:
    partial = Partial(Path(args.partial))
    partial.save()
    # the parent's SIGTERM (a step past its budget): unwind, so finally blocks stop processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path[:0] = [str(ROOT), str(SCRIPTS)]
    try:
        steps = {"rows": step_rows, "coldstart": step_coldstart, "sleep": step_sleep}
        steps["llm"] = step_llm
        steps[args.step](args, partial)
    except ModuleNotFoundError as exc:
        partial.fail(f"missing Python module {exc.name!r}")
    except RunFailed as exc:
        partial.fail(str(exc))
    except Exception as exc:  # recorded; the parent carries on
        partial.fail(f"{type(exc).__name__}: {explain(str(exc))}")
    except SystemExit as exc:
        if exc.code not in (0, None):
            partial.fail(f"stopped ({exc.code})" if isinstance(exc.code, int) else str(exc.code))
    return 0 if partial.data["ok"] else 1


def step_rows(args: argparse.Namespace, partial: Partial) -> None:
    import bench_load as bl

    cuda = args.device == "cuda"
    deadline = args.deadline
    env = dict(os.environ)
    notes = partial.notes  # bench_load's run_worker and _note append to it
    work = Path(args.work)
    model = bl.make_checkpoint(work / "model", args.size_gb)
    files = bl.weight_files(model)
    size = sum(f.stat().st_size for f in files)
    partial.note(f"checkpoint: {size / 2**30:.2f} GiB, one file, {args.repeats} runs per row")
    per_run = [30.0]  # a worker's duration, for the time check before the next

    def time_left(label: str) -> bool:
        if time.time() + max(per_run) < deadline:
            return True
        partial.fail(f"{label}: skipped, out of this step's time")
        return False

    def measure(
        spec: str, cmd: list[str], label: str, before: Callable[[], None]
    ) -> list[dict[str, float]]:
        runs = []
        for i in range(args.repeats):
            if not time_left(f"{label} run {i}"):
                break
            before()
            started = time.time()
            run = bl.run_worker(cmd, env, f"{label} run {i}", notes)
            per_run.append(time.time() - started)
            if run is None:
                partial.fail(f"{label}: a run failed")
                break
            runs.append(run)
        return runs

    def warm() -> None:
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, timeout=120)

    def cold() -> None:
        problem = bl.drop_page_cache(files)
        if problem:
            bl._note(notes, problem)

    # the warm tier onto the device
    for loader in bl.CUDA_LOCAL_LOADERS:
        spec = f"{loader}@cuda" if cuda else loader
        gone = missing_modules((PEER_MODULES[loader],)) if loader in PEER_MODULES else []
        if gone:
            partial.fail(f"{spec}: skipped, missing Python module {gone[0]!r}")
            continue
        cmd = [sys.executable, bl.__file__, "--worker", f"local:{spec}", "--dest", str(model)]
        runs = measure(spec, cmd, f"local single warm {spec:20}", warm)
        if runs:
            partial.data["results"].append(
                {**bl._row(spec, "local", "warm", runs), "layout": "single"}
            )
        partial.save()

    # the directory store into a fresh tier, page cache dropped: bench_load.dir_rows, one spec
    # at a time so each row is kept as soon as it is measured
    store = work / "store"
    rc, _, err = run_bounded(
        [sys.executable, "-m", "ember", "cache", "push", str(model), f"file://{store}"],
        min(300.0, max(1.0, deadline - time.time())),
        cwd=ROOT,
    )
    if rc != 0:
        partial.fail(f"push to a directory store failed: {explain(err)}")
    else:
        ns = argparse.Namespace(repeats=args.repeats, concurrency=8, chunk_mb=8)
        # on a GPU the stream onto it first: the row most worth the time if time runs short
        for spec in (*(bl.CUDA_STREAM_LOADERS[:1] if cuda else ()), *bl.DIR_LOADERS):
            if not time_left(f"dir {spec}"):
                break
            started = time.time()
            rows = bl.dir_rows(store, work, ns, notes, specs=(spec,))
            per_run.append((time.time() - started) / max(1, args.repeats))
            if not rows:
                partial.fail(f"dir {spec}: no row")
            partial.data["results"] += rows
            partial.save()

    # a local cold cat: the disk's own speed, next to the rows above
    cmd = [sys.executable, bl.__file__, "--worker", "local:cat", "--dest", str(model)]
    runs = measure("cat", cmd, "local single cold cat", cold)
    if runs:
        partial.data["results"].append(
            {**bl._row("cat", "local", "cold", runs), "layout": "single"}
        )
    partial.save()

    s3_rows(bl, args, partial, model, work, env)


def s3_rows(
    bl: Any,
    args: argparse.Namespace,
    partial: Partial,
    model: Path,
    work: Path,
    env: dict[str, str],
) -> None:
    """S3 rows from an s3rver on loopback, only where it is installed already (no network)."""
    binary = bl.TOOLS / "node_modules" / ".bin" / "s3rver"
    if not binary.exists() or shutil.which("node") is None:
        partial.note(
            "S3 rows skipped: npm's s3rver is not installed here (.bench-tools/, and node); "
            "scripts/bench_load.py measures them where it is"
        )
        return
    if time.time() + 60 > args.deadline:
        partial.fail("S3 rows: skipped, out of this step's time")
        return
    port = bl.free_port()
    data = work / "s3rver"
    data.mkdir()
    cmd = [str(binary), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--silent"]
    server = subprocess.Popen(
        [*cmd, "--configure-bucket", bl.BUCKET],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        bl._wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        s3env = {
            **env,
            "AWS_ACCESS_KEY_ID": "S3RVER",
            "AWS_SECRET_ACCESS_KEY": "S3RVER",
            "AWS_DEFAULT_REGION": "us-east-1",
            "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": endpoint,
        }
        uri = f"s3://{bl.BUCKET}/model"
        rc, _, err = run_bounded(
            [sys.executable, "-m", "ember", "cache", "push", str(model), uri],
            max(1.0, args.deadline - time.time()),
            cwd=ROOT,
            env=s3env,
        )
        if rc != 0:
            partial.fail(f"push to s3rver failed: {explain(err)}")
            return
        loaders = ["ember", "store-to-tier"]
        if args.device == "cuda":
            loaders += ["ember@cuda"]
            if not missing_modules(("runai_model_streamer",)):
                loaders += ["runai@cuda"]
        ns = argparse.Namespace(repeats=args.repeats, concurrency=8, chunk_mb=8)
        for loader in loaders:
            if time.time() + 30 > args.deadline:
                partial.fail(f"s3 {loader}: skipped, out of this step's time")
                break
            rows = bl.s3_rows("s3rver", s3env, uri, work, ns, partial.notes, specs=(loader,))
            if not rows:
                partial.fail(f"s3 {loader}: no row")
            partial.data["results"] += rows
            partial.save()
        partial.note("s3rver reads from this machine's page cache: S3 rows are the client's cost")
    finally:
        stop(server, 10)


# ------------------------------------------------------------------------------ coldstart
class BigModule(NamedTuple):
    """The generated module: ``big.py`` and ``model.yaml`` in its work dir, weights under it."""

    config: Path
    weights: Path
    dim: int


def make_module(args: argparse.Namespace, partial: Partial) -> BigModule | None:
    """The coldstart and sleep steps' model in ``args.work``: 64 x 4096 on cuda, else 4 x 256;
    None (the failure noted) when generating its weights failed."""
    layers, dim = (64, 4096) if args.device == "cuda" else (4, 256)
    work = Path(args.work)
    weights = work / "weights"
    weights.mkdir(parents=True)
    (work / "big.py").write_text(MODULE.format(layers=layers, dim=dim))
    config = work / "model.yaml"
    config.write_text(
        f"name: {COLD_MODEL}\n"
        "handler: torch-module\n"
        f"source: {weights}\n"
        f"device: {args.device}\n"
        f"options: {{module: big.py:Big, kwargs: {{layers: {layers}, dim: {dim}}}}}\n"
        f"inputs: [{{name: x, datatype: FP16, shape: [{dim}]}}]\n"
        f"outputs: [{{name: y, datatype: FP16, shape: [{dim}]}}]\n"
        "max_batch_size: 8\n"
        "warmup: true\n"
    )
    generate = [sys.executable, "-c", GENERATE, str(layers), str(dim), args.device]
    generate.append(str(weights / "model.safetensors"))
    rc, _, err = run_bounded(generate, min(120.0, max(1.0, args.deadline - time.time())))
    if rc != 0:
        partial.fail(f"generating the weights failed: {explain(err)}")
        return None
    size = (weights / "model.safetensors").stat().st_size
    partial.note(
        f"module: {layers} x nn.Linear({dim}, {dim}, fp16) + tanh, {size / 2**30:.2f} GiB, "
        f"device {args.device}, weights in a local directory (page cache warm)"
    )
    return BigModule(config, weights / "model.safetensors", dim)


def step_coldstart(args: argparse.Namespace, partial: Partial) -> None:
    work = Path(args.work)
    cold = partial.data["coldstart"]
    cold.update({"pool_s": None, "fresh_s": None, "handwritten_s": None, "phases": {}})
    module = make_module(args, partial)
    if module is None:
        return
    dim = module.dim

    # the hand-written load, timed from the spawn of its process
    left = args.deadline - time.time()
    if left < 20:
        partial.fail("hand-written load: skipped, out of this step's time")
    else:
        hand = [sys.executable, "-c", HANDWRITTEN, str(work), args.device]
        hand += [str(module.weights), str(dim)]
        spawned = time.time()
        rc, out, err = run_bounded(hand, min(150.0, left))
        if rc != 0:
            partial.fail(f"hand-written load failed: {explain(err)}")
        else:
            at = json.loads(out.strip().splitlines()[-1])
            cold["handwritten_s"] = at["forward"] - spawned
            marks = ["spawn", "imports", "build", "load_file", "load_state_dict", "forward"]
            stamps = [spawned] + [at[k] for k in marks[1:]]
            cold["phases"]["handwritten"] = {
                k: stamps[i + 1] - stamps[i] for i, k in enumerate(marks[1:])
            }
            print(f"hand-written: {cold['handwritten_s']:.2f}s {cold['phases']['handwritten']}")
        partial.save()

    for pool, key in ((0, "fresh"), (1, "pool")):
        if args.deadline - time.time() < 30:
            partial.fail(f"ember up, warm_pool {pool}: skipped, out of this step's time")
            continue
        try:
            seconds, phases, source = up_cold(work, module.config, pool, dim, args.deadline)
        except RunFailed as exc:
            partial.fail(f"ember up, warm_pool {pool}: {exc}")
            continue
        cold[f"{key}_s"] = seconds
        cold["phases"][key] = phases
        partial.note(f"{key} phases from {source}")
        print(f"ember up warm_pool {pool}: {seconds:.2f}s {phases}", flush=True)
        partial.save()


def up_cold(
    work: Path, config: Path, pool: int, dim: int, deadline: float
) -> tuple[float, dict[str, float], str]:
    """Request at zero -> first answer through ``ember up``; its seconds and load phases."""
    run = work / f"up-pool-{pool}"
    run.mkdir()
    (run / "ember.yaml").write_text(
        "activator:\n"
        "  events: events.jsonl\n"
        "  cache_dir: tier\n"
        "  keep_alive_s: 600\n"
        f"  startup_timeout_s: {max(10, int(deadline - time.time()))}\n"
        "  grace_period_s: 5\n"
        f"  warm_pool: {pool}\n"
        "models:\n"
        f"  - config: {config}\n"
        "    max_replicas: 1\n"
    )
    log_out, log_err = run / "stdout.log", run / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k not in ("EMBER_API_TOKEN", "EMBER_ADMIN_TOKEN")}
    with log_out.open("w") as out, log_err.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ember", "up", "--config", str(run / "ember.yaml"), "--port=0"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:

        def check_alive() -> None:
            if proc.poll() is not None:
                raise RunFailed(
                    f"ember up exited {proc.returncode}: {explain(log_err.read_text())}"
                )

        def listening() -> str | None:
            check_alive()
            found = re.search(r"listening on (http://\S+)", log_out.read_text())
            return found.group(1) if found else None

        url = wait_for(listening, min(60, deadline - time.time()), "ember up to listen")
        if pool:

            def pool_ready() -> bool:
                check_alive()
                return metric(http_get(url + "/metrics"), "ember_activator_warm_pool_ready") >= 1

            wait_for(pool_ready, min(120, deadline - time.time()), "the warm pool's standby")
        body = {
            "inputs": [{"name": "x", "shape": [1, dim], "datatype": "FP16", "data": [0.01] * dim}]
        }
        started = time.perf_counter()
        status, text = http_post(
            f"{url}/v2/models/{COLD_MODEL}/infer", body, max(5.0, deadline - time.time())
        )
        seconds = time.perf_counter() - started
        if status != 200:
            raise RunFailed(f"the first request answered {status}: {text[:300]}")
        answer = json.loads(text)
        if len(answer["outputs"][0]["data"]) != dim:
            raise RunFailed(f"the first answer has the wrong size: {text[:200]}")
        events = run / "events.jsonl"

        def logged() -> tuple[dict[str, Any], dict[str, Any]] | None:
            log = read_events(events)  # written in batches every 50 ms
            ready = next((e for e in log if e.get("event") == "replica_ready"), None)
            request = next((e for e in log if e.get("event") == "request"), None)
            return (ready, request) if ready and request else None

        ready, request = wait_for(logged, 5, "the replica_ready and request events")
        if pool and ready.get("warm_pool") is not True:
            raise RunFailed("the replica did not come from the warm pool")
        phases = {k: float(v) for k, v in (ready.get("phases") or {}).items()}
        source = "the activator's event log (replica_ready)"
        try:
            scraped = load_phases(http_get(ready["url"] + "/metrics"))
        except (OSError, KeyError):
            scraped = {}
        if scraped:
            phases.update(scraped)
            source = (
                "the replica's /metrics ember_model_load_phase_seconds; process_start and "
                "until_ready from the activator's replica_ready event"
            )
        if ready.get("cold_start_s") is not None:
            phases["cold_start"] = float(ready["cold_start_s"])
        if request.get("start") is not None:
            phases["queue_wait"] = request["start"] - request["arrival"]
            phases["first_answer"] = request["end"] - request["start"]
        return seconds, phases, source
    finally:
        stop(proc, 30)


# ------------------------------------------------------------------------------ sleep
def step_sleep(args: argparse.Namespace, partial: Partial) -> None:
    """The coldstart step's module served by ``ember serve``, put to sleep and woken
    (scripts/gpu_sleep.py measures)."""
    module = make_module(args, partial)
    if module is None:
        return
    report = partial.data["sleep"]

    def keep(row: dict[str, Any]) -> None:
        report["results"].append(row)
        report["met"] = gpu_sleep.met(report["results"])
        partial.save()

    if args.device != "cuda":
        partial.note("the targets are for the 2 GiB module on cuda: on the CPU 'met' means nothing")
    with gpu_sleep.serving(module.config, Path(args.work), args.deadline) as url:
        gpu_sleep.wakes(
            url,
            model=COLD_MODEL,
            dim=module.dim,
            device=args.device,
            repeats=args.repeats,
            deadline=args.deadline,
            on_result=keep,
            on_note=partial.fail,
        )
    if not report["results"]:
        partial.fail("no wake was measured")


# ------------------------------------------------------------------------------ llm
def step_llm(args: argparse.Namespace, partial: Partial) -> None:
    """A ~1B Llama in fp16 from zero to its first token (scripts/gpu_llm.py measures)."""
    import bench_load as bl

    if args.device != "cuda":
        partial.note("llm: the tiny model on the CPU: the targets are for the 1B one on cuda")
    gpu_llm.run(
        Path(args.work),
        args.device,
        args.deadline,
        partial.data["llm"],
        partial.save,
        partial.fail,
        run_bounded,
        bl.drop_page_cache,
    )


def http_get(url: str, timeout_s: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        text: str = r.read().decode()
        return text


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name}(?:\{{[^}}]*\}})?\s+(\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def load_phases(text: str) -> dict[str, float]:
    phases: dict[str, float] = {}
    pattern = r"^ember_model_load_phase_seconds\{([^}]*)\}\s+(\S+)$"
    for labels, value in re.findall(pattern, text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("model") == COLD_MODEL and "phase" in found:
            phases[found["phase"]] = float(value)
    return phases


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events


# ------------------------------------------------------------------------------ driver
def cuda_probe() -> tuple[bool, str]:
    """Whether torch sees a CUDA device (in a child: this process never imports torch)."""
    probe = (
        "import torch, platform; ok = torch.cuda.is_available(); "
        "print(ok, torch.__version__, torch.cuda.get_device_name(0) if ok else '-', sep='|')"
    )
    rc, out, err = run_bounded([sys.executable, "-c", probe], 120)
    if rc != 0:
        return False, f"torch does not load: {explain(err)}"
    ok, version, name = out.strip().splitlines()[-1].split("|")
    return ok == "True", f"torch {version}, device {name}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="where the JSON goes (required)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size-gb", type=float, help="the rows' checkpoint (1; cpu: 0.05)")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per row")
    parser.add_argument("--budget-s", type=float, default=500, help="for the whole run")
    for step in STEPS:
        parser.add_argument(f"--skip-{step}", action="store_true")
    children = [s for s in STEPS if s != "tests"]  # tests runs in this process
    parser.add_argument("--step", choices=children, help=argparse.SUPPRESS)
    parser.add_argument("--partial", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return child_main(args)
    if not args.out:
        parser.error("--out is required")
    if args.size_gb is None:
        args.size_gb = 1.0 if args.device == "cuda" else 0.05
    started = time.time()
    deadline = started + args.budget_s
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    has_cuda, machine = cuda_probe()
    if args.device == "cuda" and not has_cuda:
        print(f"gpu_check: no CUDA device here ({machine}); --device cpu runs the plumbing")
        return 2
    notes = [
        f"machine: {machine}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"--device {args.device}, --size-gb {args.size_gb:g}, --repeats {args.repeats}"
    ]
    report: dict[str, Any] = {
        "results": [],
        "coldstart": {"pool_s": None, "fresh_s": None, "handwritten_s": None, "phases": {}},
        "sleep": gpu_sleep.empty_report(),
        "llm": gpu_llm.empty_report(),
        "tests": {"passed": 0, "failed": 0},
        "notes": notes,
    }
    failed = False
    for step in STEPS:
        if getattr(args, f"skip_{step}"):
            notes.append(f"{step}: skipped (--skip-{step})")
            continue
        gone = missing_modules(NEEDS[step])
        if gone:
            notes.append(
                f"{step}: skipped, missing Python module(s) {', '.join(gone)} (the device "
                "wrapper installs them from wheels)"
            )
            failed = True
            continue
        left = deadline - time.time() - GRACE_S
        budget = min(STEP_BUDGET_S[step], left)
        if budget < 20:
            notes.append(f"{step}: skipped, {left:.0f}s of --budget-s left")
            failed = True
            continue
        print(f"== {step} (budget {budget:.0f}s)", flush=True)
        step_started = time.time()
        work = Path(tempfile.mkdtemp(prefix=f"ember-gpu-check-{step}-"))
        try:
            if step == "tests":
                counts, step_notes, ok = step_tests(budget, work)
                report["tests"] = counts
            else:
                ok, step_notes, data = run_step(step, args, work, budget)
                report["results"] += data.get("results", [])
                if step == "coldstart" and data.get("coldstart"):
                    report["coldstart"] = data["coldstart"]
                if step == "sleep" and data.get("sleep"):
                    report["sleep"] = data["sleep"]
                if step == "llm" and data.get("llm"):
                    report["llm"] = data["llm"]
        finally:
            shutil.rmtree(work, ignore_errors=True)
        notes += [f"{step}: {n}" for n in step_notes]
        notes.append(f"{step}: {'ok' if ok else 'FAILED'} in {time.time() - step_started:.0f}s")
        failed |= not ok
    notes.append(f"total {time.time() - started:.0f}s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    summarise(report)
    print(f"wrote {out}")
    return 1 if failed else 0


def run_step(
    step: str, args: argparse.Namespace, work: Path, budget: float
) -> tuple[bool, list[str], dict[str, Any]]:
    """A rows, coldstart or sleep step in its own process group, stopped past ``budget``."""
    partial = work / "partial.json"
    child_work = work / "work"
    child_work.mkdir()
    cmd = [sys.executable, __file__, "--step", step, "--partial", str(partial)]
    cmd += ["--work", str(child_work), "--device", args.device, "--size-gb", str(args.size_gb)]
    cmd += ["--repeats", str(args.repeats), "--deadline", str(time.time() + budget - GRACE_S)]
    rc, _, _ = run_bounded(cmd, budget, cwd=ROOT, capture=False)
    notes: list[str] = []
    if not partial.exists():
        empty = {"results": [], "coldstart": {}, "sleep": {}, "notes": [], "ok": False}
        partial.write_text(json.dumps(empty))
    data = json.loads(partial.read_text())
    notes += data.get("notes", [])
    if rc is None:
        notes.append(f"ran past its {budget:.0f}s budget and was stopped; rows so far are kept")
    elif rc != 0 and data.get("ok", False):
        notes.append(f"exited {rc}")
    return rc == 0 and bool(data.get("ok")), notes, data


def summarise(report: dict[str, Any]) -> None:
    print("| source | layout | cache | loader | device | GB/s | CPU-s/GB | runs |")
    for r in report["results"]:
        where = r.get("endpoint") or r.get("layout") or "-"
        print(
            f"| {r['source']} | {where} | {r['cache']} | {r['loader']} | {r['device']} | "
            f"{r['gbps_median']:.2f} | {r['cpu_s_per_gb']:.2f} | {r['runs']} |"
        )
    c = report["coldstart"]
    fmt = {k: "-" if c.get(k) is None else f"{c[k]:.2f}s" for k in c if k != "phases"}
    print(
        f"cold start: warm pool {fmt['pool_s']}, fresh {fmt['fresh_s']}, "
        f"hand-written {fmt['handwritten_s']}"
    )
    for line in gpu_sleep.summary(report["sleep"]):
        print(line)
    for line in gpu_llm.summary(report["llm"]):
        print(line)
    print(f"tests: {report['tests']['passed']} passed, {report['tests']['failed']} failed")
    for n in report["notes"]:
        print(f"note: {n}")


if __name__ == "__main__":
    raise SystemExit(main())
