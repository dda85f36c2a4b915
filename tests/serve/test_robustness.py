"""Failures the server meets in the field end in a clear answer, never a stall or a 500."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import INPUT_DIM, commit, infer_body, serving

from trainforge_trainer import checkpoint as ckpt
from trainforge_trainer.serve import model_store

pytestmark = pytest.mark.timeout(120)
INFER = "/v2/models/mlp/infer"


def _deleted_while_loading(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> list[int]:
    """Make the loads of `steps` meet their checkpoint deleted mid-load (keepLast pruning it
    after the server verified it): the real DCP load then fails as it does in the field."""
    real = ckpt.load_model_for_inference
    hit: list[int] = []

    def racing(checkpoint: ckpt.CommittedCheckpoint) -> Any:
        if checkpoint.step in steps:
            steps.discard(checkpoint.step)
            hit.append(checkpoint.step)
            for data in checkpoint.path.glob("*.distcp"):
                data.unlink()
        return real(checkpoint)

    monkeypatch.setattr(ckpt, "load_model_for_inference", racing)
    return hit


def test_a_checkpoint_deleted_while_loading_is_skipped_and_reload_goes_on(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ckpt"
    x = np.zeros((1, INPUT_DIM), dtype=np.float32)
    hit = _deleted_while_loading(monkeypatch, {2, 4})

    async def scenario() -> None:
        async with serving(root, reload_interval_seconds=0.1) as s:
            # The first load fails: the server retries instead of never becoming ready.
            step2 = commit(trained / "step-00000002", root)
            await asyncio.sleep(0.5)
            assert hit == [2]
            assert (await s.get("/v2/health/ready"))[0] == 503
            assert (await s.get("/v2/health/live"))[0] == 200
            shutil.rmtree(step2)
            commit(trained / "step-00000002", root)  # the same step committed again
            await s.wait_ready(timeout=20)
            # A later load fails the same way: skipped, the served step stays, polls go on.
            step4 = commit(trained / "step-00000004", root)
            await asyncio.sleep(0.6)
            assert hit == [2, 4]
            status, resp = await s.post(INFER, json=infer_body(x))
            assert status == 200 and resp["model_version"] == "2"
            assert await s.metric('trainforge_serve_model_loads_total{result="failed"}') == 2
            assert await s.metric("trainforge_serve_reload_watcher_up") == 1
            assert (await s.get("/v2/health/live"))[0] == 200
            # The trainer's next commit (here step 4's weights under a newer name) loads.
            shutil.rmtree(step4)
            staged = commit(trained / "step-00000004", tmp_path / "staging")
            os.rename(staged, root / "step-00000006")
            deadline = time.monotonic() + 20
            while (await s.get("/v2/models/mlp"))[1]["versions"] != ["4"]:
                assert time.monotonic() < deadline, "the watcher stopped reloading"
                await asyncio.sleep(0.1)
        # The shutdown was clean (no CheckpointException left to re-raise).

    asyncio.run(scenario())


def test_a_dead_watcher_fails_liveness_and_its_metric(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit(trained / "step-00000002", tmp_path)

    class Bug(BaseException):  # not an error a load can meet: a defect in the server
        pass

    def broken(_self: model_store.ModelStore) -> bool:
        raise Bug("watcher bug")

    async def scenario() -> None:
        async with serving(tmp_path, reload_interval_seconds=0.1) as s:
            await s.wait_ready()
            assert (await s.get("/v2/health/live"))[0] == 200
            monkeypatch.setattr(model_store.ModelStore, "check", broken)
            await asyncio.sleep(0.5)
            status, body = await s.get("/v2/health/live")
            assert status == 503 and "the checkpoint watcher stopped" in body["error"]
            assert await s.metric("trainforge_serve_reload_watcher_up") == 0
            s.server._watcher = None  # the defect is reported; let shutdown be clean

    asyncio.run(scenario())
