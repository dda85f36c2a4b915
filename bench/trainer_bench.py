"""Benchmark of the bundled trainer (not a test; numbers go to bench/REPORT.md, "Trainer").

    .venv/bin/python bench/trainer_bench.py [--steps 200] [--dir /path/on/the/checkpoint/disk]

Measured side by side in one process, interleaved step by step so that load from other
processes hits both sides alike, medians after a warm-up:

1. step time of the trainer (Trainer.advance: data stream, step, metrics, progress, stop and
   save checks) vs a plain hand-written PyTorch loop with the same model, optimizer, schedule,
   clipping and data, for a small (~10 ms) and a medium step;
2. the same trainer with Prometheus metrics (and their HTTP server) on vs off, plus the cost
   of the per-step metric updates timed in isolation;
3. the time the loop waits for an asynchronous save (in save() and before the next optimizer
   step) vs a synchronous save of the same >= 200 MB state (model + AdamW moments), and how
   much slower the step that overlaps the background copy is;
4. synchronous checkpoint throughput (write + fsync + sha256 + commit) vs `dd` writing the
   same number of bytes with conv=fsync to the same directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import trainforge_contract as contract
from trainforge_trainer import config as config_mod
from trainforge_trainer.checkpoint import Checkpointer, CommittedCheckpoint, SaveTimes
from trainforge_trainer.data import TensorPairs
from trainforge_trainer.loop import Trainer, lr_factor
from trainforge_trainer.metrics import TrainerMetrics
from trainforge_trainer.recipes import build_model

STEP_CONFIG: dict[str, Any] = {
    "recipe": "mlp",
    "maxSteps": 1_000_000,
    "batchSize": 64,
    "lr": 1e-3,
    "warmupSteps": 10,
    "model": {"inputDim": 256, "hiddenDim": 512, "layers": 3, "numClasses": 16},
    "data": {"samples": 8192},
}
# The same with 4x the width and 2x the batch: a step closer to real work.
MEDIUM_STEP_CONFIG: dict[str, Any] = {
    **STEP_CONFIG,
    "batchSize": 128,
    "model": {"inputDim": 256, "hiddenDim": 2048, "layers": 3, "numClasses": 16},
}
# ~21M parameters: 84 MB of weights + 168 MB of AdamW moments.
BIG_CONFIG: dict[str, Any] = {
    "recipe": "mlp",
    "maxSteps": 1_000_000,
    "batchSize": 16,
    "model": {"inputDim": 2048, "hiddenDim": 2048, "layers": 5, "numClasses": 16},
    "data": {"samples": 512},
}


def _trainer(raw: dict[str, Any], ckpt: Path, *, metrics: bool, port: int | None) -> Trainer:
    env = {contract.ENV_CHECKPOINT_DIR: str(ckpt)}
    if port is not None:
        env[contract.ENV_METRICS_PORT] = str(port)
    trainer = Trainer(config_mod.parse(raw), env, metrics_enabled=metrics)
    trainer.start()
    return trainer


class PlainLoop:
    """What one would write by hand: same model, optimizer, schedule, clipping and data."""

    def __init__(self, raw: dict[str, Any], data: TensorPairs) -> None:
        cfg = config_mod.parse(raw)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg)
        params = list(self.model.parameters())
        self.opt = torch.optim.AdamW(
            [
                {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weightDecay},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ],
            lr=cfg.lr,
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, cfg.warmupSteps, cfg.maxSteps, cfg.minLrRatio)
        )
        self.x, self.y = data.inputs, data.targets
        self.batch = cfg.batchSize
        self.perm = torch.randperm(len(self.x))
        self.pos = 0

    def step(self) -> None:
        if self.pos + self.batch > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.x)), 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(
    a: Callable[[], object], b: Callable[[], object], steps: int, warmup: int
) -> tuple[float, float, float]:
    """Median seconds of a and b, run alternately (order flipped every round), and the median
    of the per-round differences a - b (paired: steadier when the load drifts)."""
    ta: list[float] = []
    tb: list[float] = []
    for i in range(warmup + steps):
        if i % 2:
            x, y = _timed(a), _timed(b)
        else:
            y, x = _timed(b), _timed(a)
        if i >= warmup:
            ta.append(x)
            tb.append(y)
    paired = statistics.median(x - y for x, y in zip(ta, tb, strict=True))
    return statistics.median(ta), statistics.median(tb), paired


def _dd(target: Path, n_bytes: int) -> float:
    """Seconds for dd to write n_bytes with fsync (as dd reports it)."""
    count = max(1, n_bytes // (4 << 20))
    out = subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=4M", f"count={count}", "conv=fsync"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    target.unlink()
    match = re.search(r"copied, ([0-9.]+) s", out)
    assert match, out
    return float(match.group(1)) * n_bytes / (count * (4 << 20))


def _metric_updates_us(trainer: Trainer, n: int = 20000) -> float:
    """Microseconds of the metric updates the loop makes per step (measured in isolation)."""
    m = trainer.metrics
    assert isinstance(m, TrainerMetrics)
    t = time.perf_counter()
    for i in range(n):
        m.step.set(i)
        m.step_seconds.observe(0.01)
        m.data_wait_seconds.observe(0.001)
    return (time.perf_counter() - t) / n * 1e6


def bench_steps(root: Path, steps: int, warmup: int) -> dict[str, float]:
    on = _trainer(STEP_CONFIG, root / "on", metrics=True, port=0)
    off = _trainer(STEP_CONFIG, root / "off", metrics=False, port=None)
    assert isinstance(off.recipe.train, TensorPairs)
    plain = PlainLoop(STEP_CONFIG, off.recipe.train)
    trainer_s, plain_s, trainer_extra_s = interleaved(off.advance, plain.step, steps, warmup)
    metrics_on_s, metrics_off_s, _ = interleaved(on.advance, off.advance, steps, warmup)
    updates_us = _metric_updates_us(on)
    for t in (on, off):
        t.checkpointer.close()

    medium = _trainer(MEDIUM_STEP_CONFIG, root / "medium", metrics=True, port=0)
    assert isinstance(medium.recipe.train, TensorPairs)
    medium_plain = PlainLoop(MEDIUM_STEP_CONFIG, medium.recipe.train)
    medium_s, medium_plain_s, medium_extra_s = interleaved(
        medium.advance, medium_plain.step, steps // 3, warmup
    )
    medium.checkpointer.close()
    return {
        "trainer_step_ms": trainer_s * 1e3,
        "plain_step_ms": plain_s * 1e3,
        "trainer_overhead_pct": (trainer_s / plain_s - 1) * 100,
        "trainer_overhead_paired_pct": trainer_extra_s / plain_s * 100,
        "medium_trainer_step_ms": medium_s * 1e3,
        "medium_plain_step_ms": medium_plain_s * 1e3,
        "medium_trainer_overhead_pct": (medium_s / medium_plain_s - 1) * 100,
        "medium_trainer_overhead_paired_pct": medium_extra_s / medium_plain_s * 100,
        "metrics_on_step_ms": metrics_on_s * 1e3,
        "metrics_off_step_ms": metrics_off_s * 1e3,
        "metrics_overhead_pct": (metrics_on_s / metrics_off_s - 1) * 100,
        "metric_updates_us_per_step": updates_us,
        "metric_updates_pct_of_step": updates_us / 1e3 / (metrics_off_s * 1e3) * 100,
    }


def _save_timed(checkpointer: Checkpointer, trainer: Trainer) -> float:
    """Seconds a synchronous save holds the loop (what Trainer._save does)."""
    t = time.perf_counter()
    checkpointer.save(trainer.state.step, trainer.state.state_dict())
    return time.perf_counter() - t


def bench_checkpoints(root: Path, rounds: int) -> dict[str, float]:
    raw = {**BIG_CONFIG, "checkpoint": {"async": True, "keepLast": 1}}
    trainer = _trainer(raw, root / "async", metrics=False, port=None)
    blocked: list[float] = []
    # The trainer's own asynchronous checkpointer: the loop waits in save() and, if the
    # background copy is not done yet, before the next optimizer step (wait_staged).
    trainer.checkpointer.on_blocked = blocked.append
    sync_times: list[SaveTimes] = []

    def record(c: CommittedCheckpoint, times: SaveTimes) -> None:
        sync_times.append(times)

    sync = Checkpointer(
        root / "sync",
        trainer.dist,
        config_mod.dump(trainer.cfg),
        keep_last=1,
        async_save=False,
        attempt="0",
        on_commit=record,
    )
    trainer.advance()  # AdamW moments exist only after the first step
    sync_s, async_block_s, async_total_s, step_delta_s, dd_s = [], [], [], [], []
    n_bytes = 0
    # Round 0 is the warm-up: the async stager allocates its CPU buffers there (once per run).
    for r in range(rounds + 1):
        plain_step = _timed(trainer.advance)
        sync_s.append(_save_timed(sync, trainer))
        blocked.clear()
        started = time.perf_counter()
        trainer._save()
        step_after_save = _timed(trainer.advance)
        async_block_s.append(sum(blocked))
        step_delta_s.append(step_after_save - plain_step)
        trainer.checkpointer.wait()
        async_total_s.append(time.perf_counter() - started)
        saved = contract.checkpoint_dir_name(trainer.state.step - 1)
        manifest = root / "sync" / saved / "manifest.json"
        n_bytes = json.loads(manifest.read_text())["bytes"]
        dd_s.append(_dd(root / f"dd-{r}.bin", n_bytes))
    sync.close()
    trainer.checkpointer.close()
    med = statistics.median
    sync_med, block_med = med(sync_s[1:]), med(async_block_s[1:])
    return {
        "state_mb": n_bytes / 1e6,
        "sync_save_s": sync_med,
        "sync_write_s": med(t.write for t in sync_times[1:]),
        "sync_hash_s": med(t.hash for t in sync_times[1:]),
        "async_blocking_s": block_med,
        "async_blocking_first_save_s": async_block_s[0],
        "async_step_after_save_minus_normal_step_s": med(step_delta_s[1:]),
        "async_total_s": med(async_total_s[1:]),
        "async_blocking_pct_of_sync": block_med / sync_med * 100,
        "sync_save_mb_s": n_bytes / 1e6 / sync_med,
        "dd_mb_s": n_bytes / 1e6 / med(dd_s),
        "save_vs_dd_pct": med(dd_s) / sync_med * 100,
        "write_only_vs_dd_pct": med(dd_s) / med(t.write for t in sync_times[1:]) * 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="checkpoint rounds after warm-up")
    parser.add_argument("--dir", help="scratch directory (on the disk to measure)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="trainforge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        results = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_avg_1m_start": os.getloadavg()[0],
            **bench_steps(root, args.steps, args.warmup),
            **bench_checkpoints(root, args.rounds),
            "load_avg_1m_end": os.getloadavg()[0],
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}, indent=1
        )
    )


if __name__ == "__main__":
    main()
