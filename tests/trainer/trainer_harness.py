"""Start real trainer processes for tests, and read what they leave behind.

Each trainer is a separate OS process running `python -m trainforge_trainer train`'s main(),
with the env contract a worker pod gets (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, ...). The
processes are forked from a multiprocessing forkserver that imported torch once, so a launch
costs milliseconds instead of the seconds of a fresh torch import; everything else (process
group, signals, exit codes, files) is as real as under torchrun.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import trainforge_contract as contract

_CTX = multiprocessing.get_context("forkserver")
# Not "__main__" (pytest's): only what a trainer needs.
_CTX.set_forkserver_preload(
    # torch._dynamo: imported lazily by the first optimizer, 2+ s on a busy machine.
    # transformers' Llama: 5+ s to import, paid once instead of by every causal-lm rank.
    [
        "torch",
        "torch._dynamo",
        "trainforge_trainer.loop",
        "trainforge_trainer.causal_lm",
        "transformers.models.llama.modeling_llama",
        "trainer_harness",
    ]
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(argv: list[str], env: dict[str, str], log: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # Two processes share two busy cores: intra-op threads would only fight each other.
    torch.set_num_threads(1)
    # A forkserver child inherits "forkserver" as its start method; `python -m` on Linux
    # starts with "fork", which is what DataLoader workers of a real trainer use.
    multiprocessing.set_start_method("fork", force=True)
    from trainforge_trainer.__main__ import main

    try:
        code = main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


@dataclass
class Job:
    """The processes of one trainer run (one per rank)."""

    procs: list[Any]
    logs: list[Path]
    ckpt_dir: Path
    termination: list[Path]
    metrics_port: int

    def events(self, rank: int = 0) -> list[dict[str, Any]]:
        if not self.logs[rank].exists():
            return []
        lines = self.logs[rank].read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_event(
        self,
        name: str,
        rank: int = 0,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float = 60,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events(rank):
                if e["event"] == name and where(e):
                    return e
            if any(p.exitcode is not None for p in self.procs):
                # One last look: the event may have been written just before the exit.
                for e in self.events(rank):
                    if e["event"] == name and where(e):
                        return e
                raise AssertionError(f"trainer exited before {name!r}:\n{self.log_text()}")
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} event within {timeout}s:\n{self.log_text()}")

    def signal(self, signum: int) -> None:
        for p in self.procs:
            if p.exitcode is None:
                os.kill(p.pid, signum)

    def wait(self, timeout: float = 120) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        if any(p.exitcode is None for p in self.procs):
            self.kill()
            raise AssertionError(f"trainer did not exit within {timeout}s:\n{self.log_text()}")
        return [p.exitcode for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.exitcode is None:
                p.kill()
        for p in self.procs:
            p.join(10)

    def log_text(self) -> str:
        return "\n".join(log.read_text()[-4000:] for log in self.logs if log.exists())


def launch(
    config: Mapping[str, Any],
    ckpt_dir: Path,
    *,
    nprocs: int = 1,
    extra_env: Mapping[str, str] | None = None,
    argv: list[str] | None = None,
) -> Job:
    """Start `nprocs` ranks of a trainer with `config` (as TRAINFORGE_CONFIG)."""
    port, metrics_port = free_port(), free_port()
    run_dir = ckpt_dir.parent / f"run-{time.monotonic_ns()}"
    run_dir.mkdir(parents=True)
    procs, logs, terms = [], [], []
    for rank in range(nprocs):
        term = run_dir / f"termination-{rank}"
        term.touch()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "OMP_NUM_THREADS": "1",
            contract.ENV_CONFIG: json.dumps(config),
            contract.ENV_CHECKPOINT_DIR: str(ckpt_dir),
            contract.ENV_TERMINATION_MESSAGE_PATH: str(term),
            contract.ENV_METRICS_PORT: str(metrics_port),
            contract.ENV_MASTER_ADDR: "127.0.0.1",
            contract.ENV_MASTER_PORT: str(port),
            contract.ENV_WORLD_SIZE: str(nprocs),
            contract.ENV_RANK: str(rank),
            # Each rank as its own pod (one process per worker), as the operator renders it.
            contract.ENV_LOCAL_RANK: "0",
            **(extra_env or {}),
        }
        log = run_dir / f"rank-{rank}.log"
        p = _CTX.Process(target=_child, args=(argv or ["train"], env, str(log)))
        p.start()
        procs.append(p)
        logs.append(log)
        terms.append(term)
    return Job(procs, logs, ckpt_dir, terms, metrics_port)


def committed_steps(ckpt_dir: Path) -> list[int]:
    names = sorted(p.name for p in ckpt_dir.glob(f"{contract.CHECKPOINT_STEP_PREFIX}*"))
    return [int(n.removeprefix(contract.CHECKPOINT_STEP_PREFIX)) for n in names]


def load_checkpoint(step_dir: Path, scratch: Path) -> dict[str, Any]:
    """Everything in a DCP checkpoint as full (unsharded) tensors, without a process group."""
    out = scratch / f"{step_dir.name}-{time.monotonic_ns()}.pt"
    dcp_to_torch_save(step_dir, out)
    return torch.load(out, weights_only=False)  # type: ignore[no-any-return]


def flat_tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from flat_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            yield from flat_tensors(v, f"{prefix}.{i}")


class Launcher:
    """Launches trainers under one test's tmp dir and kills whatever is left at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs: list[Job] = []

    def launch(
        self,
        config: Mapping[str, Any],
        ckpt_dir: Path | None = None,
        *,
        nprocs: int = 1,
        extra_env: Mapping[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> Job:
        job = launch(
            config,
            ckpt_dir or self.root / "ckpt",
            nprocs=nprocs,
            extra_env=extra_env,
            argv=argv,
        )
        self.jobs.append(job)
        return job

    def run(
        self, config: Mapping[str, Any], ckpt_dir: Path | None = None, *, nprocs: int = 1
    ) -> Job:
        """Launch and wait for a clean exit."""
        job = self.launch(config, ckpt_dir, nprocs=nprocs)
        codes = job.wait(180)
        assert codes == [0] * nprocs, f"exit codes {codes}:\n{job.log_text()}"
        return job

    def kill_all(self) -> None:
        for job in self.jobs:
            job.kill()
