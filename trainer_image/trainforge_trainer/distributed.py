"""Process-group setup from the pod environment (torchrun / env://) or a single process.

Three groups: the default one (NCCL on GPU, gloo on CPU) carries gradients; two extra gloo
groups carry the per-step stop/save agreement and the checkpoint traffic. Checkpoint
collectives run on a background thread during asynchronous saves, and collectives of one
group must not interleave between threads, hence a group of their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import trainforge_contract as contract
from trainforge_trainer import transport


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control_group: dist.ProcessGroup
    checkpoint_group: dist.ProcessGroup
    # NCCL's log of its transport choice (transport.py); None with gloo only.
    nccl_log: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast_object(self, obj: Any, group: dist.ProcessGroup | None = None) -> Any:
        """Rank 0's `obj` on every rank (over `group`, by default the control group)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=group or self.control_group)
        return box[0]

    def any_rank(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag: is it set on at least one rank? Every rank gets the same answer."""
        if self.world_size == 1:
            return flags
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control_group)
        return tuple(bool(v) for v in t.tolist())


def setup(env: Mapping[str, str]) -> DistEnv:
    """Join the job's process group (or make a one-process group when not launched by torchrun)."""
    use_cuda = torch.cuda.is_available()
    launched = contract.ENV_MASTER_ADDR in env and contract.ENV_WORLD_SIZE in env
    if launched:
        rank = int(env[contract.ENV_RANK])
        world_size = int(env[contract.ENV_WORLD_SIZE])
        local_rank = int(env.get(contract.ENV_LOCAL_RANK, rank))
    else:
        rank, world_size, local_rank = 0, 1, 0
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    nccl_log = (
        transport.enable_nccl_log(os.environ, transport.default_log_path(env)) if use_cuda else None
    )
    # Already initialised when embedded in a program with its own group (the benchmark runs
    # several trainers in one process).
    if not dist.is_initialized():
        if launched:
            # What env:// would read, but from `env` (the caller's mapping, not os.environ).
            addr = env[contract.ENV_MASTER_ADDR]
            host = f"[{addr}]" if ":" in addr else addr
            port = env.get(contract.ENV_MASTER_PORT, str(contract.DEFAULT_MASTER_PORT))
            dist.init_process_group(
                backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=world_size
            )
        else:
            # A group of one keeps every code path (DCP, FSDP) the same as in a job.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    control = dist.new_group(backend="gloo")
    checkpoint = dist.new_group(backend="gloo")
    assert isinstance(control, dist.ProcessGroup) and isinstance(checkpoint, dist.ProcessGroup)
    return DistEnv(rank, world_size, local_rank, device, control, checkpoint, nccl_log)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
