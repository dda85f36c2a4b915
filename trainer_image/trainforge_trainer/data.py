"""Sharded, resumable data: each rank reads a disjoint shard, and the position is restorable.

The training stream is an endless sequence of micro-batches across epochs. Its position is
(epoch, micro-batches consumed in that epoch); together with the sampler's seed it fixes every
future batch, so a resumed run reads exactly what an uninterrupted one would have read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class TensorPairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(input, target) rows of two tensors; fetches a whole batch with one indexing op."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        assert len(inputs) == len(targets)
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    # DataLoader calls this with a batch of indices (TrainStream with a slice of the epoch's
    # order, a tensor); one gather beats collating rows one by one.
    def __getitems__(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.inputs[idx], self.targets[idx]


class TokenWindows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Non-overlapping windows of a token sequence: input tokens and the next-token targets."""

    def __init__(self, tokens: torch.Tensor, seq_len: int) -> None:
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.as_tensor(indices) * self.seq_len
        rows = self.tokens[starts[:, None] + torch.arange(self.seq_len + 1)].long()
        return rows[:, :-1], rows[:, 1:]


def _collate(batch: Any) -> Any:
    # Our datasets return finished batches from __getitems__; user datasets return rows.
    if isinstance(batch, tuple):
        return batch
    return torch.utils.data.default_collate(batch)


class _From(Sampler[int]):
    """The indices of `sampler` from position `start` on (resume mid-epoch)."""

    def __init__(self, sampler: Sampler[int], start: int) -> None:
        self.sampler = sampler
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.sampler)[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)  # type: ignore[arg-type]


@dataclass
class DataPosition:
    epoch: int = 0
    batch_in_epoch: int = 0


def _loader(
    dataset: Dataset[Any],
    sampler: Sampler[int],
    batch_size: int,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=_collate,
        # Without its own generator a DataLoader draws its worker base seed from the global
        # torch RNG each time an iterator starts, so a resume (one extra iterator) would shift
        # every later dropout mask.
        generator=torch.Generator().manual_seed(seed),
    )


class TrainStream:
    """Endless micro-batches of this rank's shard; `position` is what a checkpoint stores."""

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        # drop_last: every rank gets the same number of samples, so all ranks take the same
        # number of steps per epoch and no sample is duplicated to pad a shard.
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training split has {len(self.sampler)} samples per rank, fewer than "
                f"batchSize={batch_size}"
            )
        self.position = DataPosition()
        self._it: Iterator[Any] | None = None

    def restore(self, position: DataPosition) -> None:
        self.position = DataPosition(position.epoch, position.batch_in_epoch)
        self._it = None

    def _start_epoch(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.position.epoch)
        start = self.position.batch_in_epoch * self.batch_size
        if self.num_workers == 0 and isinstance(self.dataset, (TensorPairs, TokenWindows)):
            return self._in_memory_batches(torch.tensor(list(self.sampler)[start:]))
        loader = _loader(
            self.dataset,
            _From(self.sampler, start),
            self.batch_size,
            True,
            self.num_workers,
            self.pin_memory,
            self.seed + self.position.epoch,
        )
        return iter(loader)

    def _in_memory_batches(self, order: torch.Tensor) -> Iterator[Any]:
        """What a DataLoader without workers yields for our in-memory datasets (the same
        batches of the same sampler order, so resume and checkpoints are unchanged), without
        its per-batch machinery: on a step of a few ms that machinery alone costs ~1 %."""
        fetch = self.dataset.__getitems__  # type: ignore[attr-defined]
        size = self.batch_size
        for first in range(0, len(order) - size + 1, size):  # drop_last
            batch = fetch(order[first : first + size])
            yield tuple(t.pin_memory() for t in batch) if self.pin_memory else batch

    def __next__(self) -> Any:
        if self.position.batch_in_epoch >= self.batches_per_epoch:
            self.position = DataPosition(self.position.epoch + 1, 0)
            self._it = None
        if self._it is None:
            self._it = self._start_epoch()
        batch = next(self._it)
        self.position.batch_in_epoch += 1
        return batch

    def __iter__(self) -> TrainStream:
        return self


def eval_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader[Any]:
    """This rank's shard of an evaluation split, in order.

    Every rank gets the same number of samples (the last world_size-1 at most are left out),
    so all ranks run the same number of forward passes, which FSDP's collectives require.
    """
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=True
    )
    return _loader(dataset, sampler, batch_size, False, num_workers, pin_memory, 0)


def split(n: int, val_fraction: float, test_fraction: float) -> Sequence[range]:
    """Contiguous train/val/test index ranges of a dataset of n samples."""
    n_val = int(n * val_fraction)
    n_test = int(n * test_fraction)
    n_train = n - n_val - n_test
    return range(0, n_train), range(n_train, n_train + n_val), range(n_train + n_val, n)
