"""The training loop: setup, resume, steps, evaluation, checkpoints, preemption.

One optimizer step = `gradAccumSteps` micro-batches of `batchSize` per rank, so the global
batch is batchSize x gradAccumSteps x world size. Gradients are synchronised only on the last
micro-batch (DDP no_sync / FSDP set_requires_gradient_sync).

Everything that decides future numbers (weights, optimizer, lr schedule, loss scale, data
position, every RNG) is in the checkpoint, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIServer

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

import trainforge_contract as contract
from trainforge_trainer import checkpoint, config as config_mod, distributed, logs, transport
from trainforge_trainer.checkpoint import Checkpointer, CommittedCheckpoint, SaveTimes
from trainforge_trainer.config import ConfigError, TrainerConfig
from trainforge_trainer.data import TrainStream, eval_loader
from trainforge_trainer.lm_data import IGNORE_INDEX
from trainforge_trainer.metrics import (
    NullMetrics,
    Progress,
    TrainerMetrics,
    peak_flops,
    serve,
    termination_message_path,
)
from trainforge_trainer.push import ProgressPusher
from trainforge_trainer.recipes import Recipe, build_recipe
from trainforge_trainer.train_state import TrainState, seed_all

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _shard(model: nn.Module, world_size: int, device: torch.device, precision: str) -> nn.Module:
    """FSDP2: each repeated block (children of a ModuleList) is a unit, the rest the root."""
    mesh = init_device_mesh(device.type, (world_size,))
    # bf16 via FSDP's policy: parameters are all-gathered in bf16, gradients reduced in fp32.
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _num_workers(cfg: TrainerConfig) -> int:
    # An entrypoint's `data` is its own free-form mapping; numWorkers is the one key we read.
    if isinstance(cfg.data, dict):
        return int(cfg.data.get("numWorkers", 0))
    return cfg.data.numWorkers


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        env: Mapping[str, str],
        *,
        metrics_enabled: bool = True,
    ) -> None:
        self.cfg = cfg
        self.env = env
        self._stop_requested = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

        self.dist = distributed.setup(env)
        logs.configure(self.dist.rank)
        seed_all(cfg.seed)
        self.recipe: Recipe = build_recipe(cfg)
        # Same weights on every rank (seeded above); from here on each rank its own streams
        # (dropout masks must differ between ranks).
        seed_all(cfg.seed + self.dist.rank)

        self.device = self.dist.device
        self.model = self._wrap(self.recipe.model.to(self.device))
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            functools.partial(
                lr_factor, warmup=cfg.warmupSteps, total=cfg.maxSteps, min_ratio=cfg.minLrRatio
            ),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        on_gpu = self.device.type == "cuda"
        self.stream = TrainStream(
            self.recipe.train,
            batch_size=cfg.batchSize,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            seed=cfg.seed,
            num_workers=_num_workers(cfg),
            pin_memory=on_gpu,
        )
        # What a checkpoint holds: saves and loads itself (train_state.py).
        self.state = TrainState(
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.stream,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self._val_step: int | None = None
        self._last_committed: CommittedCheckpoint | None = None
        self._peak_flops = peak_flops(torch.cuda.get_device_name(self.device)) if on_gpu else None
        self._val_metrics: dict[str, float] = {}  # the last validation, as val_<name>
        self.samples_per_step = cfg.batchSize * cfg.gradAccumSteps * self.dist.world_size

        # Telemetry: metrics and /progress on rank 0; the termination message on every pod.
        # Where nothing is exported the metrics are no-ops, so the loop never asks.
        self.metrics: TrainerMetrics | NullMetrics = (
            TrainerMetrics() if metrics_enabled and self.dist.is_main else NullMetrics()
        )
        self.metrics.total_steps.set(cfg.maxSteps)
        self.progress = Progress(
            cfg.maxSteps,
            termination_message_path(env) if self.dist.local_rank == 0 else None,
        )
        self._server = self._serve_metrics()
        self._transport: str | None = None
        # Live progress to the operator (push.py): rank 0 only, when the operator asked for it.
        self._pusher = (
            ProgressPusher.from_env(env, self._progress_to_push) if self.dist.is_main else None
        )

        ckpt_dir = Path(env.get(contract.ENV_CHECKPOINT_DIR, contract.DEFAULT_CHECKPOINT_MOUNT))
        self.checkpointer = Checkpointer(
            ckpt_dir,
            self.dist,
            config_mod.dump(cfg),
            keep_last=cfg.checkpoint.keepLast,
            async_save=cfg.checkpoint.async_,
            attempt=env.get(contract.ENV_RESTART_ATTEMPT, "0"),
            on_commit=self._on_commit,
            on_blocked=self._on_checkpoint_blocked,
            validation=self._validation_for_manifest,
        )
        self._last_save_time = time.monotonic()
        # Training-mode forward passes update buffers such as BatchNorm statistics.
        self._buffers_change_in_forward = any(True for _ in self.model.buffers())

    # --- setup ----------------------------------------------------------------------------

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.cfg.strategy == "fsdp":
            model = _shard(model, self.dist.world_size, self.device, self.cfg.precision)
        elif self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self._sync_owner = model
        if self.cfg.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        return model

    def _optimizer(self) -> torch.optim.Optimizer:
        # No weight decay on biases and norm gains (1-d tensors), as usual for AdamW.
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": self.cfg.weightDecay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    def _serve_metrics(self) -> WSGIServer | None:
        port = self.env.get(contract.ENV_METRICS_PORT)
        if not isinstance(self.metrics, TrainerMetrics) or not port:
            return None
        try:
            return serve(int(port), self.metrics, self.progress)
        except OSError as exc:
            # Metrics are not worth failing a training run for.
            logs.warning("metrics_server_failed", port=port, reason=str(exc))
            return None

    def _validation_for_manifest(self) -> dict[str, Any]:
        """The newest validation results, for quality-gated reload in the servers."""
        if not self._val_metrics or self._val_step is None:
            return {}
        return {
            contract.MANIFEST_METRICS: dict(self._val_metrics),
            contract.MANIFEST_METRICS_STEP: self._val_step,
        }

    def _progress_to_push(self) -> dict[str, Any]:
        """Nothing before the first step: a step 0 would start the progress deadline early."""
        record = self.progress.snapshot()
        return record if record.get("step") else {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested = True
        logs.event("stop_requested", signal=signal.Signals(signum).name)

    # --- checkpoint state -----------------------------------------------------------------

    def _resume(self, found: CommittedCheckpoint) -> None:
        self.state.load(self.checkpointer, found)
        self.checkpointer.last_saved_step = self.state.step
        self._on_commit(found, None)
        logs.event("resumed", step=self.state.step, path=str(found.path))

    def _init_from(self, location: str) -> None:
        found: CommittedCheckpoint | None = None
        error: list[str] | None = None
        model_state = get_model_state_dict(self.model)
        if self.dist.is_main:
            try:
                found = checkpoint.resolve(location)
                mismatch = checkpoint.architecture_mismatch(found, model_state)
                if mismatch is not None:
                    saved = found.manifest["config"]
                    trained = {k: saved[k] for k in ("recipe", "entrypoint", "model") if k in saved}
                    error = [
                        f"initFrom: {str(found.path)!r} holds a different model ({mismatch}); "
                        f"it was trained with {json.dumps(trained)}: give the same model "
                        "settings, or a checkpoint of this model"
                    ]
            except ConfigError as exc:
                error = exc.lines
        found, error = self.dist.broadcast_object((found, error))
        if error:
            raise ConfigError(error)
        assert found is not None
        checkpoint.load_model_weights(found, model_state, self.dist.checkpoint_group)
        set_model_state_dict(self.model, model_state)
        logs.event("initialized_from", path=str(found.path), step=found.step)

    def _on_commit(self, committed: CommittedCheckpoint, times: SaveTimes | None) -> None:
        """After a save commits (times) or a resume from a committed checkpoint (None)."""
        self._last_committed = committed
        self.metrics.last_committed_step.set(committed.step)
        if times is not None:
            self.metrics.checkpoint_seconds.observe(times.total)
            self.metrics.checkpoint_bytes.set(committed.manifest["bytes"])
            self.metrics.checkpoint_bytes_total.inc(committed.manifest["bytes"])
        self.progress.update(checkpoint=committed.record())
        self.progress.write()
        if self._pusher is not None:
            self._pusher.wake()  # a committed checkpoint is news for serving: push it now
        if times is not None:
            logs.event(
                "checkpoint_committed",
                step=committed.step,
                path=str(committed.path),
                bytes=committed.manifest["bytes"],
                seconds=round(times.total, 3),
                writeSeconds=round(times.write, 3),
                hashSeconds=round(times.hash, 3),
            )

    def _on_checkpoint_blocked(self, seconds: float) -> None:
        self.metrics.checkpoint_blocking_seconds.inc(seconds)

    def _save(self) -> None:
        if self.checkpointer.last_saved_step == self.state.step:
            return
        self.checkpointer.save(self.state.step, self.state.state_dict())
        self._last_save_time = time.monotonic()

    # --- steps ----------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        # FSDP applies bf16 through its MixedPrecisionPolicy instead.
        if self.cfg.precision == "fp32" or self.cfg.strategy == "fsdp":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.cfg.precision])

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        owner = self._sync_owner
        if isinstance(owner, FSDPModule):
            owner.set_requires_gradient_sync(sync)
        elif isinstance(owner, DistributedDataParallel) and not sync:
            return owner.no_sync()
        return contextlib.nullcontext()

    def _train_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer step; returns the loss (a tensor: no host sync) and data-wait time."""
        accum = self.cfg.gradAccumSteps
        total: torch.Tensor | None = None
        waited = 0.0
        if self._buffers_change_in_forward:
            self.checkpointer.wait_staged()
        for micro in range(accum):
            t = time.perf_counter()
            inputs, targets = next(self.stream)
            waited += time.perf_counter() - t
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with self._grad_sync(micro == accum - 1), self._autocast():
                loss = self.recipe.loss(self.model(inputs), targets)
                # Tensor ops cost microseconds each on a small step: none that change nothing
                # (x / 1 and 0 + x are x bit for bit, so the numbers are the same either way).
                if accum > 1:
                    loss = loss / accum
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        # An asynchronous save may still be copying the weights: they change from here on.
        self.checkpointer.wait_staged()
        if self.cfg.gradClip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.gradClip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        assert total is not None  # gradAccumSteps >= 1
        return total, waited

    def _mean_over_ranks(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.dist.world_size > 1:
            dist.all_reduce(t)
            t /= self.dist.world_size
        return [float(v) for v in t.tolist()]

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float] | None:
        """Loss (and accuracy or perplexity) over a whole split, all ranks together."""
        dataset = self.recipe.val if split == "val" else self.recipe.test
        if dataset is None:
            return None
        loader = eval_loader(
            dataset,
            batch_size=self.cfg.batchSize,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            num_workers=self.stream.num_workers,
            pin_memory=self.stream.pin_memory,
        )
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, count, correct
        for inputs, targets in loader:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with self._autocast():
                out = self.model(inputs)
            # Context tokens of an LM (target IGNORE_INDEX) are not predictions.
            n = (targets != IGNORE_INDEX).sum()
            sums[0] += self.recipe.loss(out, targets).double() * n
            sums[1] += n
            if self.recipe.metric == "accuracy":
                sums[2] += (out.argmax(dim=-1) == targets).sum()
        self.model.train()
        if split == "val":
            self._val_step = self.state.step
        if self.dist.world_size > 1:
            dist.all_reduce(sums)
        loss_sum, count, correct = sums.tolist()
        if count == 0:
            return None
        result = {"loss": loss_sum / count}
        if self.recipe.metric == "accuracy":
            result["accuracy"] = correct / count
        elif self.recipe.metric == "perplexity":
            result["perplexity"] = math.exp(min(result["loss"], 50.0))
        if split == "val":
            self._val_metrics = {f"val_{k}": v for k, v in result.items() if math.isfinite(v)}
        logs.event(
            "eval", split=split, step=self.state.step, **{k: round(v, 6) for k, v in result.items()}
        )
        self.metrics.eval_loss.labels(split).set(result["loss"])
        if self.recipe.metric is not None:
            self.metrics.eval_metric.labels(split, self.recipe.metric).set(
                result[self.recipe.metric]
            )
        return result

    # --- the run --------------------------------------------------------------------------

    def start(self) -> None:
        """Resume (or initialise from initFrom) before the first step."""
        cfg = self.cfg
        self.checkpointer.clean_stale()
        found = self.checkpointer.find_resume()
        if found is not None:
            self._resume(found)
        elif cfg.initFrom:
            self._init_from(cfg.initFrom)
        self.model.train()
        self._interval_loss = torch.zeros((), device=self.device)
        self._interval_steps, self._interval_start = 0, time.perf_counter()
        logs.event(
            "training_started",
            step=self.state.step,
            maxSteps=cfg.maxSteps,
            worldSize=self.dist.world_size,
            globalBatch=self.samples_per_step,
            strategy=cfg.strategy,
            precision=cfg.precision,
        )

    def advance(self) -> int | None:
        """One optimizer step and what follows it (report, eval, save); an exit code once done:
        0 at maxSteps, EXIT_PREEMPTED after a SIGTERM (with a checkpoint committed)."""
        cfg = self.cfg
        if self.state.step >= cfg.maxSteps:
            return self._finish()
        started = time.perf_counter()
        loss, waited = self._train_step()
        self.state.step += 1
        seconds = time.perf_counter() - started
        self._interval_loss += loss
        self._interval_steps += 1
        self.metrics.step.set(self.state.step)
        self.metrics.step_seconds.observe(seconds)
        self.metrics.data_wait_seconds.observe(waited)
        self.progress.update(step=self.state.step)
        every_s = cfg.checkpoint.everySeconds
        time_due = every_s > 0 and time.monotonic() - self._last_save_time >= every_s
        stop, time_due = self.dist.any_rank(self._stop_requested, time_due)
        if stop or self.state.step % cfg.logEverySteps == 0 or self.state.step == cfg.maxSteps:
            self._report()
        if cfg.evalEverySteps and self.state.step % cfg.evalEverySteps == 0:
            self.evaluate("val")
        if stop:
            self._save()
            self.checkpointer.wait()
            logs.event("preempted", step=self.state.step)
            return contract.EXIT_PREEMPTED
        every = cfg.checkpoint.everySteps
        if (every and self.state.step % every == 0) or time_due:
            self._save()
        return None

    def _finish(self) -> int:
        self._save()
        self.checkpointer.wait()
        if self._val_step != self.state.step:  # unless the loop just did
            self.evaluate("val")
        self.evaluate("test")
        self._export()
        logs.event("training_finished", step=self.state.step)
        return 0

    def _export(self) -> None:
        """causal-lm: the final checkpoint as a Hugging Face directory (rank 0 writes it)."""
        cfg = self.cfg
        if not isinstance(cfg, config_mod.CausalLmConfig) or self._last_committed is None:
            return
        error: str | None = None
        if self.dist.is_main:
            from trainforge_trainer import causal_lm

            out = causal_lm.default_export_dir(cfg, self.checkpointer.directory)
            try:
                causal_lm.export(self._last_committed, out)
            except Exception as exc:
                error = repr(exc)
        # Every rank waits for the export and fails with it: the pods end together.
        error = self.dist.broadcast_object(error)
        if error is not None:
            raise RuntimeError(f"export of step {self.state.step} failed: {error}")

    def run(self) -> int:
        """Train to maxSteps (exit 0) or until SIGTERM (checkpoint, EXIT_PREEMPTED)."""
        self.start()
        while (code := self.advance()) is None:
            pass
        return code

    def _report(self) -> None:
        """Log and publish the interval since the last report (the only host sync per step)."""
        steps = self._interval_steps
        elapsed = time.perf_counter() - self._interval_start
        (mean_loss,) = self._mean_over_ranks([float(self._interval_loss) / steps])
        self._interval_loss.zero_()
        self._interval_steps, self._interval_start = 0, time.perf_counter()
        samples_s = steps * self.samples_per_step / elapsed
        tokens = self.recipe.tokens_per_sample
        fields: dict[str, Any] = {
            "step": self.state.step,
            "loss": round(mean_loss, 6),
            "lr": self.scheduler.get_last_lr()[0],
            "samplesPerSecond": round(samples_s, 2),
        }
        if tokens:
            fields["tokensPerSecond"] = round(samples_s * tokens, 1)
        mfu = None
        if tokens and self.recipe.flops_per_token and self._peak_flops:
            achieved = samples_s * tokens * self.recipe.flops_per_token
            mfu = achieved / (self._peak_flops * self.dist.world_size)
            fields["mfu"] = round(mfu, 4)
        logs.event("progress", **fields)
        remaining = max(0, self.cfg.maxSteps - self.state.step)
        if self._transport is None and self.dist.is_main:
            # Known once the first collectives ran (NCCL connects lazily).
            self._transport = transport.detect(self.device.type == "cuda", self.dist.nccl_log)
            if self._transport:
                self.progress.update(transport=self._transport)
        self.progress.update(
            step=self.state.step,
            loss=fields["loss"],
            samplesPerSecond=fields["samplesPerSecond"],
            etaSeconds=round(remaining * elapsed / steps, 1),
        )
        self.progress.write()
        self.metrics.loss.set(mean_loss)
        self.metrics.samples_per_second.set(samples_s)
        if tokens:
            self.metrics.tokens_per_second.set(samples_s * tokens)
        if mfu is not None:
            self.metrics.mfu.set(mfu)

    def close(self) -> None:
        try:
            self.checkpointer.close()
        finally:
            if self._server is not None:
                self._server.shutdown()
            if self._pusher is not None:
                self._pusher.close()
            distributed.teardown()


def train(cfg: TrainerConfig, env: Mapping[str, str]) -> int:
    trainer = Trainer(cfg, env)
    try:
        return trainer.run()
    finally:
        trainer.close()
