"""The README's first command: the demo scales MiniLM from zero and back and exits 0."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import ROOT


def test_the_demo_tells_its_story_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/demo.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "minilm is zero (ZERO)" in out  # before the first request
    assert "warm pool: 1 standby interpreter ready" in out
    assert "cold-start breakdown (the replica was a standby from the warm pool)" in out
    assert "weight fetch from S3" in out
    assert "minilm is ready (READY)" in out
    assert "same embedding as the JSON answer: True" in out
    assert "replica stopped: keep-alive expired" in out
    assert "exited with code 0" in out
    # it ends on what scale to zero saves over a day of such bursts, and why the run lost
    assert "8. over a day: this run was one burst" in out
    assert "every  60 min ( 24/day)" in out and "saves $" in out
    assert "The loss\n   above is this run's alone" in out


def test_the_demos_help_explains_it_without_running_it() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "usage: scripts/demo" in done.stdout
    assert "a local S3-compatible endpoint" in done.stdout
    assert "endpoint at http://" not in done.stdout  # what its first step prints, running
