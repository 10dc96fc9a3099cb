"""The activator is HTTP only: starting it (and its scalers) never imports torch or the runtime."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import ROOT


def test_the_activator_never_imports_torch_the_runtime_or_the_weight_cache() -> None:
    code = (
        "import sys, activator.app, activator.server, activator.admin, activator.frontdoor\n"
        "import activator.scalers.local, activator.scalers.knative, knative.client, ember.cli\n"
        "bad = [m for m in ('torch', 'runtime', 'weight_cache') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
