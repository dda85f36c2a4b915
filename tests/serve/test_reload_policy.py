"""Quality-gated reload: under model.reloadPolicy a server switches only to a checkpoint
whose manifest metric is no worse than the served one's; a skipped step is visible in the
metrics and in what the server reports to the operator."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from serve_helpers import commit, serving

import trainforge_contract as contract


def with_val_loss(step_dir: Path, value: float) -> None:
    manifest_path = step_dir / contract.CHECKPOINT_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["metrics"] = {"val_loss": value}
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(("mode", "served"), [("min", "2"), ("max", "4")])
def test_a_worse_checkpoint_is_skipped(
    trained: Path, tmp_path: Path, mode: str, served: str
) -> None:
    root = tmp_path / "ckpt"
    with_val_loss(commit(trained / "step-00000002", root), 1.0)

    async def scenario() -> None:
        async with serving(
            root, reload_interval_seconds=0.1, reload_metric="val_loss", reload_mode=mode
        ) as s:
            await s.wait_ready()
            staged = tmp_path / "staged"
            staged.mkdir()
            step4 = await asyncio.to_thread(commit, trained / "step-00000004", staged)
            with_val_loss(step4, 2.0)  # worse for min, better for max
            await asyncio.to_thread(commit, step4, root)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if await s.metric("trainforge_serve_model_step") == 4 or (
                    await s.metric("trainforge_serve_skipped_step") == 4
                ):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a skip must stay a skip on later polls
            assert str(int(await s.metric("trainforge_serve_model_step"))) == served
            skipped = await s.metric("trainforge_serve_skipped_step")
            assert skipped == (4 if mode == "min" else -1)
            if mode == "min":
                assert s.server._served() == {"servedStep": 2, "skippedStep": 4}

    asyncio.run(scenario())
