"""Data parallelism is invisible in the result: 2 ranks == 1 rank at the same global batch."""

from __future__ import annotations

from pathlib import Path

import torch
from trainer_harness import Launcher, committed_steps, load_checkpoint

from trainforge_trainer import config
from trainforge_trainer.recipes import build_model

BASE = {
    "recipe": "mlp",
    "maxSteps": 20,
    "lr": 0.01,
    "warmupSteps": 3,
    "gradClip": 0.5,
    "seed": 7,
    "model": {"inputDim": 16, "hiddenDim": 32, "layers": 2, "numClasses": 4},
    "data": {"samples": 512},
}


def test_two_ranks_reach_the_weights_of_one_rank(trainers: Launcher, tmp_path: Path) -> None:
    one = trainers.launch({**BASE, "batchSize": 16}, tmp_path / "one", nprocs=1)
    two = trainers.launch({**BASE, "batchSize": 8}, tmp_path / "two", nprocs=2)
    assert one.wait(120) == [0]
    assert two.wait(120) == [0, 0]
    assert committed_steps(tmp_path / "one") == committed_steps(tmp_path / "two") == [20]

    a = load_checkpoint(tmp_path / "one" / "step-00000020", tmp_path)["model"]
    b = load_checkpoint(tmp_path / "two" / "step-00000020", tmp_path)["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    # And they trained: the weights moved far from where the seed put them.
    torch.manual_seed(BASE["seed"])
    initial = build_model(config.parse(BASE)).state_dict()
    moved = max((a[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 0.05
