"""A benchmark runs in the project's ``.venv`` with every peer it compares against installed.

``ensure()`` runs ``scripts/setup --bench`` (cheap once done: it keeps a stamp) and, when the
benchmark was started by another interpreter (``python3 scripts/bench_load.py`` on a fresh
clone), runs it again under ``.venv/bin/python`` with the same arguments. ``require()`` turns a
peer that is still missing into an exit with the reason, so no result is written without it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
_READY = "EMBER_BENCH_ENV_READY"


def ensure() -> None:
    """Set up ``.venv`` with the bench extra, then make sure this process runs in it."""
    if os.environ.get(_READY) == "1":
        return
    subprocess.run([str(ROOT / "scripts" / "setup"), "--bench"], check=True)
    os.environ[_READY] = "1"
    if Path(sys.prefix).resolve() != VENV.resolve():
        python = str(VENV / "bin" / "python")
        os.execv(python, [python, sys.argv[0], *sys.argv[1:]])


def require(modules: dict[str, str]) -> None:
    """Exit non-zero naming every peer (``{name: module}``) that cannot be imported here."""
    missing = [name for name, module in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise SystemExit(
            f"{Path(sys.argv[0]).name}: cannot run without {', '.join(missing)}: "
            "`scripts/setup --bench` could not install them here"
        )
