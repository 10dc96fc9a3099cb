"""``ember deploy`` (apply, wait, delete) and ``ember status`` against a loopback fake API.

The fake (tests/fake_knative.py) implements the calls made (server-side apply, GET, DELETE) and
plays Knative's controllers for the services. No real cluster is involved (none can run here).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fake_knative import KSVC_API, FakeKnative, write_kubeconfig
from tests.servers import ROOT

EXAMPLE = str(ROOT / "examples" / "ember.yaml")


@pytest.fixture
def fake() -> Iterator[FakeKnative]:
    knative = FakeKnative().start()
    yield knative
    knative.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, fake: FakeKnative) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", fake.url)


def ember(*args: str, kubeconfig: Path | str = "/nonexistent") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_apply_waits_for_ready_and_is_idempotent(fake: FakeKnative, kubeconfig: Path) -> None:
    done = ember("deploy", "--config", EXAMPLE, kubeconfig=kubeconfig)
    assert done.returncode == 0, done.stderr
    # initial-scale 0: Knative reports them Ready with no pod, so the wait starts no model
    assert "ready: Knative service ember/mlp (no pod: its first request starts one)" in done.stdout
    assert "ready: Knative service ember/minilm (no pod" in done.stdout
    kinds = sorted((key[0], key[1]) for key in fake.objects)
    assert kinds == sorted(
        [
            ("v1", "configmaps"),
            ("v1", "configmaps"),
            ("v1", "configmaps"),
            (KSVC_API, "services"),
            (KSVC_API, "services"),
            ("v1", "serviceaccounts"),
            ("v1", "persistentvolumeclaims"),
            ("v1", "persistentvolumeclaims"),
            ("rbac.authorization.k8s.io/v1", "roles"),
            ("rbac.authorization.k8s.io/v1", "rolebindings"),
            ("apps/v1", "deployments"),
            ("v1", "services"),
        ]
    )
    mlp = fake.ksvc("ember", "mlp")
    assert mlp is not None and mlp["metadata"]["generation"] == 1
    again = ember("deploy", "--config", EXAMPLE, kubeconfig=kubeconfig)
    assert again.returncode == 0, again.stderr
    assert fake.ksvc("ember", "mlp")["metadata"]["generation"] == 1  # type: ignore[index]
    status = ember("status", "--config", EXAMPLE, kubeconfig=kubeconfig)
    assert status.returncode == 0, status.stderr
    assert "mlp: ready, min-scale 0, revision mlp-00001" in status.stdout


def test_a_failing_revision_names_its_condition(fake: FakeKnative, kubeconfig: Path) -> None:
    fake.fail_on_apply("minilm", "RevisionFailed", 'Unable to fetch image "registry.example.com"')
    done = ember("deploy", "--config", EXAMPLE, "--timeout", "30", kubeconfig=kubeconfig)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "Knative service ember/minilm is not ready" in line
    assert "ConfigurationsReady=False (RevisionFailed: Unable to fetch image" in line
    status = ember("status", "--config", EXAMPLE, kubeconfig=kubeconfig)
    assert (
        status.returncode == 3 and "minilm: not ready (ConfigurationsReady=False" in status.stdout
    )


def test_status_exit_code_comes_from_readiness_not_the_text(
    fake: FakeKnative, kubeconfig: Path
) -> None:
    # a condition message that reads like the ready line must not make `ember status` exit 0
    fake.fail_on_apply("minilm", "RevisionFailed", "probe: ready, then the container exited")
    assert ember("deploy", "--config", EXAMPLE, kubeconfig=kubeconfig).returncode == 1
    status = ember("status", "--config", EXAMPLE, kubeconfig=kubeconfig)
    assert status.returncode == 3, status.stdout
    assert "mlp: ready, min-scale 0" in status.stdout
    assert "minilm: not ready (ConfigurationsReady=False (RevisionFailed: probe: ready," in (
        status.stdout
    )


def test_a_timeout_says_what_is_still_pending(fake: FakeKnative, kubeconfig: Path) -> None:
    fake.settle_s = 30
    done = ember("deploy", "--config", EXAMPLE, "--timeout", "0.01", kubeconfig=kubeconfig)
    assert done.returncode == 1 and "not ready within 0.01s" in done.stderr


def test_delete_removes_everything_once_but_the_data(fake: FakeKnative, kubeconfig: Path) -> None:
    assert ember("deploy", "--config", EXAMPLE, kubeconfig=kubeconfig).returncode == 0
    gone = ember("deploy", "--config", EXAMPLE, "--delete", kubeconfig=kubeconfig)
    claims = {
        ("v1", "persistentvolumeclaims", "ember", "ember-activator-events"),  # the cost report's
        ("v1", "persistentvolumeclaims", "ember", "ember-weights"),  # and the weight tier's data
    }
    assert gone.returncode == 0 and set(fake.objects) == claims
    assert gone.stdout.count("deleted ") == 10
    assert "kept PersistentVolumeClaim ember/ember-activator-events" in gone.stdout
    again = ember("deploy", "--config", EXAMPLE, "--delete", kubeconfig=kubeconfig)
    assert again.returncode == 0 and again.stdout.count("not there: ") == 10
    status = ember("status", "--config", EXAMPLE, kubeconfig=kubeconfig)
    assert status.returncode == 3 and "mlp: not deployed" in status.stdout


def test_no_cluster_is_a_clear_error() -> None:
    done = ember("deploy", "--config", EXAMPLE)
    assert done.returncode == 1 and "no Kubernetes cluster configured" in done.stderr
    bad = ember("deploy", "--config", EXAMPLE, "--namespace", "Not_A_Name")
    assert bad.returncode == 2 and "namespace" in bad.stderr


def test_a_group_is_deployed_as_one_service_and_reported_with_its_members(
    tmp_path: Path, fake: FakeKnative, kubeconfig: Path
) -> None:
    example = yaml.safe_load(Path(EXAMPLE).read_text())
    stack = {
        "knative": example["knative"],
        "groups": [
            {
                "name": "shared",
                "models": [
                    {"config": str(ROOT / "examples" / "mlp" / "model.yaml")},
                    {"config": str(ROOT / "examples" / "minilm" / "model.yaml")},
                ],
                "max_replicas": 2,
                "device_memory_budget": "2GiB",
            }
        ],
    }
    path = tmp_path / "ember.yaml"
    path.write_text(yaml.safe_dump(stack))
    done = ember("deploy", "--config", str(path), kubeconfig=kubeconfig)
    assert done.returncode == 0, done.stderr
    assert "ready: Knative service ember/shared (no pod" in done.stdout
    services = {key[3] for key in fake.objects if key[:2] == (KSVC_API, "services")}
    assert services == {"shared"}  # its members have no Service of their own
    files = fake.objects[("v1", "configmaps", "ember", "shared-models")]["data"]
    assert set(files) == {"mlp.yaml", "mlp-mlp.py", "minilm.yaml"}
    status = ember("status", "--config", str(path), kubeconfig=kubeconfig)
    assert status.returncode == 0, status.stdout
    assert status.stdout.startswith(
        "shared (group: mlp, minilm): ready, min-scale 0, revision shared-00001"
    )
    assert len(status.stdout.splitlines()) == 1
