"""`trainforge local run`: the operator's render + lifecycle code driving local processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetest import REPO


def local_run(manifest: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "trainforge.cli",
            "local",
            "run",
            str(manifest),
            f"--workdir={workdir}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )


def losses(log: Path) -> list[float]:
    records = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [r["loss"] for r in records if r.get("event") == "progress" and r.get("rank") == 0]


def test_small_job_succeeds_and_checkpoints(tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "trainforge.io/v1alpha1",
                "kind": "TrainingJob",
                "metadata": {"name": "tiny"},
                "spec": {
                    "workers": 2,
                    "trainer": {"recipe": "mlp", "maxSteps": 20},
                    "checkpoint": {"claimName": "unused-locally", "everySteps": 10},
                },
            }
        )
    )
    result = local_run(manifest, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["phase"] == "Succeeded"
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000020"
    assert (checkpoints / "step-00000010" / "manifest.json").exists()


def test_cpu_example_recovers_from_an_injected_failure(tmp_path: Path) -> None:
    """The README's example: a worker is SIGKILLed mid-run, the whole gang restarts from
    the last checkpoint once, and training still finishes with a falling loss."""
    result = local_run(REPO / "examples" / "trainingjob-cpu.yaml", tmp_path, "--inject-failure=60")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "injecting a failure" in result.stderr
    assert "GangRestarted" in result.stderr
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["phase"], status["restarts"], status["restartAttempt"]) == ("Succeeded", 1, 1)
    assert status["checkpoint"]["step"] == 200

    logs = tmp_path / "logs"
    resumed = [
        json.loads(line)
        for line in (logs / "gpt-cpu-worker-0-attempt-1.log").read_text().splitlines()
        if line.startswith("{") and '"resumed"' in line
    ]
    assert resumed and resumed[0]["step"] >= 50  # everySteps: 50 in the example
    first = losses(logs / "gpt-cpu-worker-0-attempt-0.log")
    last = losses(logs / "gpt-cpu-worker-0-attempt-1.log")
    assert last[-1] < first[0] * 0.8, (first, last)


def test_invalid_manifest_names_the_field(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "trainforge.io/v1alpha1",
                "kind": "TrainingJob",
                "metadata": {"name": "bad"},
                "spec": {"workers": 0},
            }
        )
    )
    result = local_run(manifest, tmp_path / "run")
    assert result.returncode != 0
    assert "spec.workers" in result.stderr
    assert "Traceback" not in result.stderr


pytestmark = pytest.mark.timeout(900)
