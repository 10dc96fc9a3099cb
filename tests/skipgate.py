"""A pytest plugin: a test skipped for any reason but a missing CUDA device fails the run.

A skip hides a test; on a machine with everything the project installs, only the GPU tests have a
reason to be skipped. Loaded by ``tests/conftest.py``; ``-p tests.skipgate`` loads it elsewhere.
"""

from __future__ import annotations

from typing import Any

import pytest

GPU_SKIP = "needs a CUDA device"


class SkipGate:
    def __init__(self) -> None:
        self.others: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
            if reason.removeprefix("Skipped: ") != GPU_SKIP:
                self.others.append(f"{report.nodeid}: {reason}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.others and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.others:
            terminalreporter.section("skips that fail the run", red=True)
            terminalreporter.line(f"only '{GPU_SKIP}' may skip a test; these did:")
            for line in self.others:
                terminalreporter.line(f"  {line}")


def pytest_configure(config: pytest.Config) -> None:  # as a plugin: ``-p tests.skipgate``
    install(config)


def install(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("ember-skip-gate"):
        config.pluginmanager.register(SkipGate(), "ember-skip-gate")
