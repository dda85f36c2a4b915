"""SIGTERM: finish the step, commit a checkpoint, exit with the retryable code; progress
is visible over HTTP while running and in the termination message afterwards."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

from trainer_harness import Launcher

import trainforge_contract as contract
from trainforge_trainer.checkpoint import latest_committed

CONFIG = {
    "recipe": "mlp",
    "maxSteps": 1_000_000,
    "logEverySteps": 5,
    "checkpoint": {"everySteps": 50, "async": True},
}


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def test_sigterm_checkpoints_and_exits_retryable(trainers: Launcher, tmp_path: Path) -> None:
    job = trainers.launch(CONFIG)
    job.wait_event("progress", where=lambda e: e["step"] >= 10)

    progress = json.loads(_get(job.metrics_port, "/progress"))
    assert set(contract.PROGRESS_KEYS) - {"checkpoint"} <= progress.keys()
    assert progress["step"] >= 10 and progress["totalSteps"] == 1_000_000
    metrics = _get(job.metrics_port, "/metrics")
    assert "trainforge_trainer_step " in metrics
    assert "trainforge_trainer_step_seconds_bucket" in metrics

    job.signal(signal.SIGTERM)
    assert job.wait(60) == [contract.EXIT_PREEMPTED]
    stopped_at = job.wait_event("preempted")["step"]
    found = latest_committed(job.ckpt_dir)
    assert found is not None and found.step == stopped_at

    record = json.loads(job.termination[0].read_text())
    assert record["step"] == stopped_at
    assert record["checkpoint"] == {
        "step": stopped_at,
        "path": str(found.path),
        "time": found.time,
    }
