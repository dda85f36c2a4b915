"""Crash consistency: SIGKILL at random points of checkpoint saves never loses a commit."""

from __future__ import annotations

import random
import shutil
import signal
import time
from pathlib import Path

from trainer_harness import Job, Launcher, committed_steps

import trainforge_contract as contract
from trainforge_trainer.checkpoint import committed_dirs, read_checkpoint

# A few MB of state and a save every step: most of the time is spent saving.
CONFIG = {
    "recipe": "mlp",
    "maxSteps": 100_000,
    "batchSize": 16,
    "lr": 0.001,
    "logEverySteps": 50,
    "model": {"inputDim": 64, "hiddenDim": 384, "layers": 3},
    "data": {"samples": 1024},
    "checkpoint": {"everySteps": 1, "keepLast": 2},
}


def _started_from(job: Job) -> int:
    """The step the trainer started at (0, or the step of the checkpoint it resumed)."""
    return int(job.wait_event("training_started", timeout=90)["step"])


def _check_directory(ckpt: Path) -> tuple[int, bool]:
    """Every step directory is complete; returns the newest step and whether a save was cut."""
    dirs = committed_dirs(ckpt)
    for d in dirs:
        read_checkpoint(d, verify=True)  # raises if a committed directory is not intact
    latest = ckpt / contract.CHECKPOINT_LATEST
    if latest.exists():
        assert (ckpt / latest.read_text().strip()) in dirs
    cut = any(p.name.startswith(contract.CHECKPOINT_TMP_PREFIX) for p in ckpt.iterdir())
    return (read_checkpoint(dirs[0], verify=False).step if dirs else 0), cut


def test_sigkill_during_saves_resumes_from_last_commit(trainers: Launcher, tmp_path: Path) -> None:
    rng = random.Random(20240611)
    ckpt = tmp_path / "ckpt"
    expected = 0
    cut_saves = 0
    trials = 12
    for _ in range(trials):
        job = trainers.launch(CONFIG, ckpt)
        assert _started_from(job) == expected
        kill_after = expected + rng.randint(1, 3)
        job.wait_event("checkpoint_save_started", where=lambda e, s=kill_after: e["step"] >= s)
        time.sleep(rng.uniform(0, 0.05))
        job.signal(signal.SIGKILL)
        assert job.wait(30) == [-signal.SIGKILL]
        newest, cut = _check_directory(ckpt)
        committed_before_kill = [
            e["step"] for e in job.events() if e["event"] == "checkpoint_committed"
        ]
        assert newest >= max(committed_before_kill, default=0)
        expected = newest
        cut_saves += cut
    # The kills really landed inside saves (a `.tmp-` directory was left behind).
    assert cut_saves >= 3, f"only {cut_saves} of {trials} kills interrupted a save"

    job = trainers.launch(CONFIG, ckpt)
    assert _started_from(job) == expected
    job.kill()


def test_corrupt_checkpoint_is_skipped_and_tmp_is_never_loaded(
    trainers: Launcher, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    small = {**CONFIG, "maxSteps": 6, "checkpoint": {"everySteps": 2, "keepLast": 5}}
    trainers.run(small, ckpt)
    assert committed_steps(ckpt) == [2, 4, 6]
    # A half-written save of a later step that looks complete: it must never be loaded.
    shutil.copytree(ckpt / "step-00000006", ckpt / ".tmp-step-00000010-0")
    # Flip bytes in the middle of the newest checkpoint's shard.
    shard = next((ckpt / "step-00000006").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    shard.write_bytes(bytes(data))

    job = trainers.run({**small, "maxSteps": 8}, ckpt)
    skipped = job.wait_event("checkpoint_skipped")
    assert skipped["path"].endswith("step-00000006")
    assert "sha256" in skipped["reason"]
    assert job.wait_event("resumed")["step"] == 4
    assert committed_steps(ckpt) == [2, 4, 6, 8]
    assert not list(ckpt.glob(".tmp-*"))
    read_checkpoint(ckpt / "step-00000006")  # rewritten by the resumed run, now intact
