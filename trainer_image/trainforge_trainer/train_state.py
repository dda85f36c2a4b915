"""The training state as one object that saves and loads itself (as torchtitan's TrainState).

Everything that decides future numbers — weights, optimizer, lr schedule, loss scale, data
position, this rank's RNG streams and the step — so a run resumed from it continues bit for
bit. The checkpoint layout (keys `model`, `optim`, `trainer`, `rng/<rank>`) is the one
every existing checkpoint has.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from trainforge_trainer import logs
from trainforge_trainer.checkpoint import Checkpointer, CommittedCheckpoint
from trainforge_trainer.data import DataPosition, TrainStream


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainState:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        stream: TrainStream,
        *,
        rank: int,
        world_size: int,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.stream = stream
        self.rank = rank
        self.world_size = world_size
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        """What a save writes (model and optimizer possibly sharded: each rank its part)."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        trainer = {
            "step": self.step,
            "epoch": self.stream.position.epoch,
            "batchInEpoch": self.stream.position.batch_in_epoch,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        return {
            "model": model_state,
            "optim": optim_state,
            "trainer": io.BytesIO(json.dumps(trainer).encode()),
            # RNG streams differ per rank, so each rank saves its own under its own key.
            f"rng/{self.rank}": io.BytesIO(pickle.dumps(_rng_state())),
        }

    def load(self, checkpointer: Checkpointer, found: CommittedCheckpoint) -> None:
        """Everything back as it was at `found`; the RNG streams only at the same world size
        (ranks' streams cannot be remapped, and that is logged)."""
        state = self.state_dict()
        same_world = found.manifest.get("worldSize") == self.world_size
        rng_key = f"rng/{self.rank}"
        if same_world:
            state[rng_key] = io.BytesIO()
        else:
            del state[rng_key]
            logs.warning(
                "rng_not_restored",
                reason="world size changed",
                saved=found.manifest.get("worldSize"),
                now=self.world_size,
            )
        state["trainer"] = io.BytesIO()
        checkpointer.load(found, state)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        trainer = json.loads(state["trainer"].getvalue())
        self.step = trainer["step"]
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.scaler.load_state_dict(trainer["scaler"])
        self.stream.restore(DataPosition(trainer["epoch"], trainer["batchInEpoch"]))
        if same_world:
            _set_rng_state(pickle.loads(state[rng_key].getvalue()))
