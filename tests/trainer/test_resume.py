"""Stop (SIGTERM) at some step and resume: the result is bit for bit the uninterrupted run's."""

from __future__ import annotations

import json
import pickle
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from trainer_harness import Launcher, committed_steps, flat_tensors, load_checkpoint

import trainforge_contract as contract


def _config(strategy: str, async_save: bool, workers: int, samples: int) -> dict[str, Any]:
    return {
        "recipe": "mlp",
        "strategy": strategy,
        "maxSteps": 60,
        "batchSize": 8,
        "gradAccumSteps": 2,
        "lr": 0.01,
        "warmupSteps": 10,
        "seed": 3,
        "evalEverySteps": 25,
        "logEverySteps": 5,
        # Dropout makes the result depend on the RNG state; a small dataset crosses many
        # epochs, so the data position and the per-epoch shuffle both matter.
        "model": {"inputDim": 16, "hiddenDim": 32, "layers": 2, "numClasses": 4, "dropout": 0.2},
        "data": {"samples": samples, "numWorkers": workers},
        "checkpoint": {"everySteps": 20, "keepLast": 2, "async": async_save},
    }


@pytest.mark.parametrize(
    ("strategy", "async_save", "workers", "samples"),
    # DataLoader workers prefetch ahead of the step: the saved position must not include that.
    [("ddp", True, 1, 512), ("fsdp", False, 0, 128)],
    ids=["ddp-async-workers", "fsdp-sync"],
)
def test_resume_after_sigterm_is_bitwise_identical(
    trainers: Launcher,
    tmp_path: Path,
    strategy: str,
    async_save: bool,
    workers: int,
    samples: int,
) -> None:
    cfg = _config(strategy, async_save, workers, samples)
    straight = trainers.launch(cfg, tmp_path / "straight", nprocs=2)

    stopped = trainers.launch(cfg, tmp_path / "stopped", nprocs=2)
    stopped.wait_event("progress", where=lambda e: e["step"] >= 25)
    stopped.signal(signal.SIGTERM)
    assert stopped.wait(120) == [contract.EXIT_PREEMPTED] * 2, stopped.log_text()
    stop_step = stopped.wait_event("preempted")["step"]
    assert stop_step < cfg["maxSteps"], "stopped too late to test a resume"
    assert max(committed_steps(tmp_path / "stopped")) == stop_step
    for term in stopped.termination:
        record = json.loads(term.read_text())
        assert record["step"] == stop_step
        assert record["checkpoint"]["step"] == stop_step
    resume_step = stop_step
    if async_save and stop_step % 20:
        # Resume from the last periodic save instead: an asynchronous one that training
        # went on from while it was being written.
        shutil.rmtree(tmp_path / "stopped" / f"step-{stop_step:08d}")
        resume_step = max(committed_steps(tmp_path / "stopped"))
        assert resume_step % 20 == 0

    resumed = trainers.launch(cfg, tmp_path / "stopped", nprocs=2)
    assert resumed.wait(120) == [0, 0], resumed.log_text()
    assert resumed.wait_event("resumed")["step"] == resume_step
    assert straight.wait(120) == [0, 0], straight.log_text()

    final = f"step-{cfg['maxSteps']:08d}"
    a = load_checkpoint(tmp_path / "straight" / final, tmp_path)
    b = load_checkpoint(tmp_path / "stopped" / final, tmp_path)
    tensors_a, tensors_b = dict(flat_tensors(a)), dict(flat_tensors(b))
    assert tensors_a.keys() == tensors_b.keys()
    assert any(k.startswith("optim.state") for k in tensors_a)
    for name, t in tensors_a.items():
        assert torch.equal(t, tensors_b[name]), f"{name} differs after resume"
    # Scheduler, scaler and data position; every rank's RNG streams.
    assert json.loads(a["trainer"].getvalue()) == json.loads(b["trainer"].getvalue())
    for key in ("rng/0", "rng/1"):
        rng_a, rng_b = (pickle.loads(x[key].getvalue()) for x in (a, b))
        assert rng_a["python"] == rng_b["python"]
        assert torch.equal(rng_a["torch"], rng_b["torch"])
        assert all(
            np.array_equal(x, y) for x, y in zip(rng_a["numpy"], rng_b["numpy"], strict=True)
        )
