"""The text-generation handler's load, where it meets transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# in a fresh interpreter (transformers not imported yet), as a replica's first loads are: the
# first model's load begins, the second's once the first is importing transformers
_LOAD_AT_ONCE = """
import sys, threading, time
from runtime.config import ModelConfig
from runtime.handlers.text_generation import TextGenerationHandler

failed = []

def load(name):
    config = ModelConfig(name=name, handler="text-generation", source=sys.argv[1], device="cpu")
    try:
        handler = TextGenerationHandler(config)
        handler.load()
        handler.unload()
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")

first = threading.Thread(target=load, args=("first",))
first.start()
deadline = time.monotonic() + 60
while "transformers" not in sys.modules and time.monotonic() < deadline:
    time.sleep(0.0001)
second = threading.Thread(target=load, args=("second",))
second.start()
first.join()
second.join()
print(failed or "loaded")
"""


def test_models_loading_at_once_in_a_fresh_process_all_load(tiny_llm_dir: Path) -> None:
    """A group's replica loads its members at once, each in its own thread: the first imports
    of transformers must not fail the others (they did: ImportError, cannot import AutoConfig)."""
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_AT_ONCE, str(tiny_llm_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "loaded", out.stdout
