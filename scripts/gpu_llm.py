"""The ``llm`` step of scripts/gpu_check.py: a ~1B-parameter random-weight Llama in fp16, from
zero to its first token.

Measured, each in fresh processes on 127.0.0.1:

    pool_s        ``ember up`` (one standby in the warm pool, its transformers imported ahead),
                  the model's files in the page cache (a warm tier): a completion of one token
                  sent at zero through the activator's ``/v1/completions``, to its answer
    fresh_s       the same with no warm pool (a new process)
    cold_pool_s   the same as ``pool_s`` after the page cache was dropped (a cold tier)
    disk_read_s   ``cat`` of the weights after the page cache was dropped: the disk's read time
    handwritten_s transformers' ``from_pretrained`` + ``.to(device)`` + ``generate`` of one
                  token, in a new process timed from its spawn

The targets (``met``): ``pool_s`` <= 1.0 s, ``cold_pool_s`` <= 3 x ``disk_read_s``. Without a
GPU (``--device cpu``) the model is examples/tiny-llm's 64-wide one and ``met`` means nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpu_sleep import RunFailed, http_get, http_post, wait_for

ROOT = Path(__file__).resolve().parent.parent
MODEL = "llm"
TARGETS = {"pool_s": 1.0, "cold_over_disk": 3.0}

# the model: examples/tiny-llm's tokenizer; on cuda a TinyLlama-shaped 1.0B Llama in fp16
# (2048 wide, 20 layers of 32 heads over 4 KV heads, 5632 MLP), initialised on the device
GENERATE = """
import importlib.util, sys
from pathlib import Path
root, out, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
spec = importlib.util.spec_from_file_location("make", root / "examples/tiny-llm/make.py")
make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make)
make.build(out)
if device == "cuda":
    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM
    tiny = AutoConfig.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=tiny.vocab_size, hidden_size=2048, intermediate_size=5632,
        num_hidden_layers=20, num_attention_heads=32, num_key_value_heads=4,
        max_position_embeddings=2048, bos_token_id=tiny.bos_token_id,
        eos_token_id=tiny.eos_token_id, pad_token_id=tiny.pad_token_id,
        tie_word_embeddings=False, dtype="float16",
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).half()
    for p in model.parameters():
        p.data.mul_(0.5)  # keep a random model's activations in fp16's range
    model.save_pretrained(out)
print(sum(f.stat().st_size for f in out.glob("*.safetensors")))
"""
HANDWRITTEN = """
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, device = sys.argv[1], sys.argv[2]
at = {"imports": time.time()}
dtype = torch.float16 if device == "cuda" else torch.float32
model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
at["load"] = time.time()
tok = AutoTokenizer.from_pretrained(path)
ids = tok("Hello", return_tensors="pt")["input_ids"].to(device)
with torch.inference_mode():
    out = model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
if device == "cuda":
    torch.cuda.synchronize()
at["first_token"] = time.time()
assert out.shape[1] == ids.shape[1] + 1
print(json.dumps(at))
"""


def empty_report() -> dict[str, Any]:
    keys = ("pool_s", "fresh_s", "cold_pool_s", "disk_read_s", "handwritten_s")
    return {**{k: None for k in keys}, "bytes": None, "targets": dict(TARGETS), "met": {}}


def met(report: dict[str, Any]) -> dict[str, bool | None]:
    pool, cold, disk = report["pool_s"], report["cold_pool_s"], report["disk_read_s"]
    return {
        "pool_s": None if pool is None else pool <= TARGETS["pool_s"],
        "cold_over_disk": None
        if cold is None or not disk
        else cold <= TARGETS["cold_over_disk"] * disk,
    }


def run(
    work: Path,
    device: str,
    deadline: float,
    report: dict[str, Any],
    save: Any,
    note: Any,
    run_bounded: Any,
    drop_page_cache: Any,
) -> None:
    """Measure into ``report`` (``save()`` after each figure); ``note`` says what failed."""
    folder = work / "llm-model"
    rc, out, err = run_bounded(
        [sys.executable, "-c", GENERATE, str(ROOT), str(folder), device],
        max(1.0, min(150.0, deadline - time.time())),
    )
    if rc != 0:
        raise RunFailed(f"generating the model failed: {err[-300:]}")
    report["bytes"] = int(out.strip().splitlines()[-1])
    files = sorted(folder.glob("*.safetensors"))
    config = work / "llm.yaml"
    dtype = "float16" if device == "cuda" else "float32"
    config.write_text(
        f"name: {MODEL}\nhandler: text-generation\nsource: {folder}\ndevice: {device}\n"
        f"options: {{dtype: {dtype}, max_running: 4}}\n"
    )
    save()
    measures = (
        ("handwritten_s", lambda: handwritten(folder, device, deadline, run_bounded)),
        ("pool_s", lambda: up_first_token(work, config, 1, deadline)),
        ("fresh_s", lambda: up_first_token(work, config, 0, deadline)),
    )
    for key, measure in measures:
        if deadline - time.time() < 20:
            note(f"llm {key}: skipped, out of this step's time")
            continue
        try:
            report[key] = measure()
        except RunFailed as exc:
            note(f"llm {key}: {exc}")
        report["met"] = met(report)
        save()
    # a cold tier: the page cache dropped, then the disk's read time, then a start from it
    why = drop_page_cache(files)
    if why is not None:
        note(f"llm cold: {why}")
        return
    started = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    report["disk_read_s"] = time.perf_counter() - started
    why = drop_page_cache(files)
    if why is not None or deadline - time.time() < 20:
        note(f"llm cold_pool_s: {why or 'skipped, out of this step time'}")
        return
    try:
        report["cold_pool_s"] = up_first_token(work, config, 1, deadline)
    except RunFailed as exc:
        note(f"llm cold_pool_s: {exc}")
    report["met"] = met(report)
    save()


def handwritten(folder: Path, device: str, deadline: float, run_bounded: Any) -> float:
    spawned = time.time()
    rc, out, err = run_bounded(
        [sys.executable, "-c", HANDWRITTEN, str(folder), device],
        max(1.0, min(150.0, deadline - time.time())),
    )
    if rc != 0:
        raise RunFailed(f"from_pretrained + generate failed: {err[-300:]}")
    return float(json.loads(out.strip().splitlines()[-1])["first_token"] - spawned)


def up_first_token(work: Path, config: Path, pool: int, deadline: float) -> float:
    """``ember up`` with the model at zero (``pool`` standbys, waited for): the seconds from a
    one-token completion sent at zero to its answer."""
    run = work / f"llm-up-{pool}-{time.monotonic_ns()}"
    run.mkdir()
    (run / "ember.yaml").write_text(
        "activator:\n"
        "  events: events.jsonl\n"
        "  keep_alive_s: 600\n"
        f"  startup_timeout_s: {max(10, int(deadline - time.time()))}\n"
        "  grace_period_s: 5\n"
        f"  warm_pool: {pool}\n"
        f"models:\n  - config: {config}\n    max_replicas: 1\n"
    )
    log = run / "activator.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ember", "up", "--config", str(run / "ember.yaml"), "--port=0"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def listening() -> str | None:
            if proc.poll() is not None:
                raise RunFailed(f"ember up exited {proc.returncode}: {log.read_text()[-300:]}")
            found = re.search(r"listening on (http://\S+)", log.read_text())
            return found.group(1) if found else None

        url = wait_for(listening, min(60, deadline - time.time()), "ember up to listen")
        if pool:

            def pool_ready() -> bool:
                listening()
                text = http_get(url + "/metrics")
                found = re.search(r"^ember_activator_warm_pool_ready\s+(\S+)$", text, re.M)
                return bool(found and float(found.group(1)) >= 1)

            wait_for(pool_ready, min(120, deadline - time.time()), "the warm pool's standby")
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
        started = time.perf_counter()
        status, text = http_post(url + "/v1/completions", body, max(5.0, deadline - time.time()))
        seconds = time.perf_counter() - started
        if status != 200:
            raise RunFailed(f"the first completion answered {status}: {text[:300]}")
        if json.loads(text)["usage"]["completion_tokens"] != 1:
            raise RunFailed(f"the first completion is not one token: {text[:300]}")
        return seconds
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summary(report: dict[str, Any]) -> list[str]:
    def fmt(key: str) -> str:
        value = report.get(key)
        return "-" if value is None else f"{value:.2f}s"

    keys = ("pool_s", "fresh_s", "cold_pool_s", "disk_read_s", "handwritten_s")
    return [
        "llm first token: " + ", ".join(f"{k.removesuffix('_s')} {fmt(k)}" for k in keys),
        f"llm targets met: {report.get('met')}",
    ]
