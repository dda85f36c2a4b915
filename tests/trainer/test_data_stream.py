"""The training stream reads our in-memory datasets without a DataLoader (bench: ~1 % of a
small step): the batches must be exactly the ones a DataLoader gives, across epochs, after a
resume mid-epoch, and on every rank, or resumed runs would stop being bit for bit."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from trainforge_trainer.data import DataPosition, TensorPairs, TokenWindows, TrainStream


def _stream(dataset: Dataset[Any], *, via_loader: bool, rank: int = 0) -> TrainStream:
    return TrainStream(
        dataset,
        batch_size=4,
        rank=rank,
        world_size=2,
        seed=7,
        # One worker takes the DataLoader path (workers only exist there); it must give the
        # same batches as the direct path, which is what the trainer used before.
        num_workers=1 if via_loader else 0,
        pin_memory=False,
    )


DATASETS = {
    "pairs": lambda: TensorPairs(torch.randn(37, 3), torch.arange(37)),
    "windows": lambda: TokenWindows(torch.arange(200), seq_len=5),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("rank", [0, 1])
def test_direct_batches_are_the_data_loader_batches(name: str, rank: int) -> None:
    dataset = DATASETS[name]()
    direct = _stream(dataset, via_loader=False, rank=rank)
    loader = _stream(dataset, via_loader=True, rank=rank)
    steps = direct.batches_per_epoch * 3 + 1  # three epochs and into the fourth
    for a, b in zip(itertools.islice(direct, steps), itertools.islice(loader, steps), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert direct.position == loader.position == DataPosition(3, 1)


def test_a_restored_stream_continues_with_the_same_batches() -> None:
    dataset = DATASETS["pairs"]()
    whole = _stream(dataset, via_loader=False)
    batches = list(itertools.islice(whole, 12))
    resumed = _stream(dataset, via_loader=False)
    # Mid-epoch (the shard has 18 samples: 4 batches an epoch), as a checkpoint records it.
    resumed.restore(DataPosition(1, 2))
    for a, b in zip(itertools.islice(resumed, 6), batches[6:], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
