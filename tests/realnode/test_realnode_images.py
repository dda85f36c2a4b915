"""The images built from the project's Dockerfiles (hack/cluster/images.sh), run as pods on
the real node: what users rely on — the non-root user the chart's securityContext expects,
the entrypoints, and the commands' help."""

from __future__ import annotations

import json
import subprocess

import pytest
from realnode_helpers import Images, run_pod

from kubetest import Kubectl

# The session's first test also waits for the real node and any image rebuild.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


def image_config(ref: str) -> dict:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["OCIv1"]["config"]


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_images_run_as_the_numeric_non_root_user(
    images: Images, real_kubectl: Kubectl, real_namespace: str, name: str
) -> None:
    ref = getattr(images, name)
    assert image_config(ref)["User"] == "65532:65532"
    logs, end = run_pod(real_kubectl, real_namespace, "whoami", ref, command=["id"])
    assert end["exitCode"] == 0, logs
    assert logs.startswith("uid=65532(trainforge) gid=65532(trainforge)"), logs


def test_operator_image_entrypoint_is_trainforge_run(
    images: Images, real_kubectl: Kubectl, real_namespace: str
) -> None:
    assert image_config(images.operator)["Entrypoint"] == ["trainforge", "run"]
    logs, end = run_pod(real_kubectl, real_namespace, "help", images.operator, args=["--help"])
    assert end["exitCode"] == 0, logs
    assert "usage: trainforge run" in logs


@pytest.mark.parametrize("command", ["train", "serve"])
def test_trainer_image_commands_answer_help(
    images: Images, real_kubectl: Kubectl, real_namespace: str, command: str
) -> None:
    config = image_config(images.trainer)
    assert config["Entrypoint"] == ["python", "-m", "trainforge_trainer"]
    assert config["Cmd"] == ["train"]
    logs, end = run_pod(
        real_kubectl, real_namespace, f"{command}-help", images.trainer, args=[command, "--help"]
    )
    assert end["exitCode"] == 0, logs
    assert f"trainforge_trainer {command}" in logs, logs
