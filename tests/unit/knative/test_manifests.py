"""``ember deploy --kn DIR``: the files it writes, and commands that apply exactly those files."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from contracts.stack import load_stack
from knative.features import required_settings
from knative.manifests import apply_commands, images, settings_comment, write_manifests
from knative.render import render
from tests.servers import ROOT
from tests.unit.knative.test_render import CPU_MODEL, KNATIVE, write_stack


def referenced(line: str) -> Path:
    """The file a printed apply command reads."""
    words = shlex.split(line)
    flag = "--filename" if words[0] == "kn" else "-f"
    return Path(words[words.index(flag) + 1])


def test_every_object_has_its_file_and_its_command(tmp_path: Path) -> None:
    objects = render(load_stack(ROOT / "examples" / "ember.yaml"))
    out = tmp_path / "out"
    manifests = write_manifests(objects, out)
    lines = apply_commands(manifests)
    assert len(lines) == len(objects) == len(list(out.iterdir()))
    for line, obj in zip(lines, objects, strict=True):
        path = referenced(line)
        assert path.parent == out and list(yaml.safe_load_all(path.read_text())) == [obj]
    assert [p.name for p in sorted(out.iterdir())] == [referenced(line).name for line in lines]
    kn = [shlex.split(line) for line in lines if line.startswith("kn ")]
    assert [words[3] for words in kn] == ["mlp", "minilm"]
    for words in kn:
        assert words[:3] == ["kn", "service", "apply"]  # create or update: reruns are safe
        assert words[words.index("--namespace") + 1] == "ember"
        assert "--cluster-local" in words  # only the activator faces clients
    for line in lines:
        if line.startswith("kubectl "):
            words = shlex.split(line)
            assert words[:3] == ["kubectl", "apply", "--server-side"]
            assert "--field-manager=ember" in words  # as `ember deploy` applies them
    names = [referenced(line).name.split("-", 1)[1] for line in lines]  # less the order number
    assert names.index("configmap-mlp-model.yaml") < names.index("ksvc-mlp.yaml")
    events = names.index("persistentvolumeclaim-ember-activator-events.yaml")
    assert events < names.index("deployment-ember-activator.yaml")


def test_a_rerun_removes_what_the_stack_no_longer_has(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "README.txt").write_text("mine")
    write_manifests(render(load_stack(ROOT / "examples" / "ember.yaml")), out)
    (out / "00-configmap-mlp-model.yaml").write_text("stale")
    one_model = render(load_stack(write_stack(tmp_path, CPU_MODEL, KNATIVE)))
    lines = apply_commands(write_manifests(one_model, out))
    ours = sorted(p.name for p in out.iterdir() if p.suffix == ".yaml")
    assert ours == sorted(referenced(line).name for line in lines)
    assert "01-ksvc-encoder.yaml" in ours and "03-ksvc-minilm.yaml" not in ours
    assert (out / "README.txt").read_text() == "mine" and (out / "notes").is_dir()


def test_the_cluster_settings_are_comments(tmp_path: Path) -> None:
    knative = KNATIVE + "  tier: {kind: persistentVolumeClaim}\n"
    lines = settings_comment(
        required_settings(load_stack(write_stack(tmp_path, CPU_MODEL, knative)))
    )
    assert all(line.startswith("#") for line in lines)  # cluster-wide: left to its owner
    text = "\n".join(lines)
    assert 'config-autoscaler: allow-zero-initial-scale: "true"' in text
    assert 'config-features: kubernetes.podspec-persistent-volume-write: "enabled"' in text
    patch = [line for line in lines if "kubectl patch configmap/config-features" in line]
    (words,) = [shlex.split(line.lstrip("# ")) for line in patch]
    data = yaml.safe_load(words[words.index("-p") + 1])["data"]
    assert data == {
        "kubernetes.podspec-persistent-volume-claim": "enabled",
        "kubernetes.podspec-persistent-volume-write": "enabled",
    }


def test_the_cli_prints_commands_for_the_files_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "manifests"

    def kn() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ember", "deploy", "--config", "examples/ember.yaml",
             "--namespace", "prod", "--kn", str(out)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )  # fmt: skip

    done = kn()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    assert lines.index(commands[0]) > 0  # the settings come first, as comments
    assert "<" not in done.stdout  # no placeholders: every file exists
    files = {referenced(line) for line in commands}
    assert files == set(out.iterdir()) and len(files) == 12
    for path in files:
        (obj,) = yaml.safe_load_all(path.read_text())
        assert obj["metadata"]["namespace"] == "prod"
    assert "#   registry.example.com/ember/runtime-cpu:0.1.0" in lines  # the images it runs
    assert "#   registry.example.com/ember/activator:0.1.0" in lines
    again = kn()  # into the same directory: the same files, the same commands
    assert again.returncode == 0 and again.stdout == done.stdout
    assert set(out.iterdir()) == files


def test_the_images_are_every_containers(tmp_path: Path) -> None:
    gpu = CPU_MODEL.replace("hf-encoder", "torch-module") + "device: cuda\ngpu_type: L4\n"
    gpu += "options: {module: 'm:M'}\n"
    objects = render(load_stack(write_stack(tmp_path, gpu, KNATIVE)))
    assert images(objects) == [
        "registry.example.com/ember/activator:1",
        "registry.example.com/ember/runtime-cuda:1",
    ]
