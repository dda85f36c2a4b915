"""The served model: loaded from the newest committed checkpoint, and replaced by newer ones.

A `ServedModel` is immutable; `ModelStore.current` is swapped in one assignment once a newer
checkpoint is fully loaded and warmed up, so a batch always runs on one complete model and
requests in flight during a reload are answered by the old one.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

import trainforge_contract as contract
from trainforge_trainer import checkpoint as ckpt, config as config_mod, logs
from trainforge_trainer.recipes import build_model
from trainforge_trainer.serve.protocol import ProtocolError, Signature, TensorSpec

# What a failed load can raise. DCP's CheckpointException derives from BaseException (not
# Exception): named here so that a checkpoint deleted while loading (keepLast pruning it)
# is one skipped load, while KeyboardInterrupt, SystemExit and cancellation still stop.
LOAD_ERRORS: tuple[type[BaseException], ...] = (Exception, CheckpointException)


def signature_for(config: config_mod.TrainerConfig) -> Signature:
    """The model's input and output tensors, from the trainer config in the manifest."""
    if isinstance(config, config_mod.MlpConfig):
        m = config.model
        return Signature(
            TensorSpec("input", "FP32", (-1, m.inputDim)),
            TensorSpec("logits", "FP32", (-1, m.numClasses)),
        )
    if isinstance(config, config_mod.GptConfig):
        g = config.model
        # Any length up to the trained context (positions beyond it have no embedding).
        return Signature(
            TensorSpec(
                "tokens",
                "INT64",
                (-1, -1),
                min_value=0,
                max_value=g.vocabSize - 1,
                max_shape=(-1, g.seqLen),
            ),
            TensorSpec("logits", "FP32", (-1, -1, g.vocabSize)),
        )
    # A user's model: only the batch dimension is known; the model itself checks the rest.
    return Signature(
        TensorSpec("input", "FP32", (-1,), any_rank=True),
        TensorSpec("output", "FP32", (-1,), any_rank=True),
    )


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the Linear layers (weights int8, activations per batch)."""
    # torch.ao.quantization warns that it moves to torchao; it is still the stock CPU path
    # and needs no extra dependency.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@dataclass(frozen=True)
class ServedModel:
    step: int
    path: Path
    time: str  # commit time of the checkpoint (RFC 3339)
    module: nn.Module
    signature: Signature
    device: torch.device
    manifest: dict[str, Any] = field(default_factory=dict, compare=False)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Forward one merged batch (called on the inference thread)."""
        with torch.inference_mode():
            try:
                out = self.module(torch.from_numpy(batch).to(self.device))
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                if not self.signature.input.any_rank:
                    raise  # shapes and values were validated: this is the server's fault
                # A user's model declares only the batch dimension: what it refuses is the
                # client's input (mostly a wrong shape), so a 400 that says why.
                first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
                raise ProtocolError(
                    f"inputs[0]: the model refused an input of shape {list(batch.shape)}: {first}"
                ) from None
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}; the server needs a tensor")
        return out.float().cpu().numpy() if out.is_floating_point() else out.cpu().numpy()

    def identity(self) -> tuple[str, str]:
        return (str(self.path), self.time)


def load_model_for_inference(checkpoint: ckpt.CommittedCheckpoint) -> nn.Module:
    """The trained model on CPU in eval mode (works without torch.distributed set up)."""
    cfg = config_mod.parse(checkpoint.manifest["config"])
    model = build_model(cfg)
    state = model.state_dict()
    ckpt.load_model_weights(checkpoint, state)
    model.load_state_dict(state)
    return model.eval()


def load(checkpoint: ckpt.CommittedCheckpoint, quantize: str, device: torch.device) -> ServedModel:
    config = config_mod.parse(checkpoint.manifest["config"])
    with warnings.catch_warnings():
        # DCP notes that it loads without a process group: exactly what a server wants.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        module = load_model_for_inference(checkpoint)
    if quantize == "int8":
        module = quantize_int8(module)
    module = module.to(device).eval()
    served = ServedModel(
        step=checkpoint.step,
        path=checkpoint.path,
        time=checkpoint.time,
        module=module,
        signature=signature_for(config),
        device=device,
        manifest=checkpoint.manifest,
    )
    _warm_up(served)
    return served


def _warm_up(served: ServedModel) -> None:
    # One forward before serving: lazy init and allocator warm-up happen here, not in the
    # first user's latency, and a model that cannot run never replaces a working one.
    spec = served.signature.input
    if spec.any_rank:
        return
    shape = [1 if d == -1 else d for d in spec.shape]
    served.run(np.zeros(shape, dtype=np.float32 if spec.datatype == "FP32" else np.int64))


class ModelStore:
    """Finds, loads and swaps the served model. `check()` blocks: call it off the event loop."""

    def __init__(
        self,
        checkpoint_dir: Path,
        quantize: str,
        device: torch.device,
        on_loaded: Callable[[ServedModel, float], None] = lambda _m, _s: None,
        on_failed: Callable[[], None] = lambda: None,
        gate: tuple[str, str] | None = None,
        on_skipped: Callable[[int], None] = lambda step: None,
    ) -> None:
        # Quality-gated reload: (metric, "min" | "max"), or None to always take the newest.
        self.gate = gate
        self._on_skipped = on_skipped
        self.skipped_step: int | None = None
        self.checkpoint_dir = checkpoint_dir
        self.quantize = quantize
        self.device = device
        self.current: ServedModel | None = None
        self._on_loaded = on_loaded
        self._on_failed = on_failed
        # The newest checkpoint already acted on (loaded or rejected): polls that find it
        # again cost one manifest read, not a re-hash of every weight file.
        self._seen: tuple[str, str] | None = None

    def check(self) -> bool:
        """Load the newest committed checkpoint if it is not the one served; True if swapped."""
        newest = ckpt.latest_committed(self.checkpoint_dir, verify=False)
        if newest is None or _identity(newest) == self._seen:
            return False
        self._seen = _identity(newest)
        worse = self._worse(newest)
        if worse:
            # Not loaded; _seen keeps it from being re-read until a newer one is committed.
            self.skipped_step = newest.step
            logs.event("model_reload_skipped", step=newest.step, reason=worse)
            self._on_skipped(newest.step)
            return False
        started = time.perf_counter()
        try:
            # Only now re-hash: the newest that verifies (a corrupt one is skipped and logged).
            verified = ckpt.latest_committed(self.checkpoint_dir, verify=True)
            if verified is None or (
                self.current and _identity(verified) == self.current.identity()
            ):
                return False
            served = load(verified, self.quantize, self.device)
        except LOAD_ERRORS as exc:
            # A broken checkpoint, or one deleted while it loads, must neither take down a
            # serving replica nor stop later polls: logged, counted, skipped.
            logs.error("model_load_failed", path=str(newest.path), error=repr(exc))
            if self.current is None:
                self._seen = None  # nothing served yet: keep retrying on every poll
            self._on_failed()
            return False
        previous = self.current
        self.current = served  # the atomic swap: one reference assignment
        seconds = time.perf_counter() - started
        logs.event(
            "model_loaded",
            step=served.step,
            path=str(served.path),
            previous_step=previous.step if previous else None,
            seconds=round(seconds, 3),
            quantize=self.quantize,
        )
        self._on_loaded(served, seconds)
        return True

    def _worse(self, candidate: ckpt.CommittedCheckpoint) -> str:
        """Why `candidate` must not replace the served model under the gate ("" if it may).
        The first model is always loaded; a candidate without the metric is refused, as its
        quality is unknown."""
        if self.gate is None or self.current is None:
            return ""
        metric, mode = self.gate
        new = _metric(candidate.manifest, metric)
        old = _metric(self.current.manifest, metric)
        if new is None:
            return f"its manifest has no {metric}"
        if old is None:
            return ""
        if (new > old) if mode == "min" else (new < old):
            return f"{metric} {new:g} is worse than the served step's {old:g} ({mode})"
        return ""


def _metric(manifest: dict[str, Any], name: str) -> float | None:
    value = (manifest.get(contract.MANIFEST_METRICS) or {}).get(name)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _identity(checkpoint: ckpt.CommittedCheckpoint) -> tuple[str, str]:
    return (str(checkpoint.path), checkpoint.time)


def describe(served: ServedModel, quantize: str) -> dict[str, Any]:
    """The `parameters` of the model metadata: which checkpoint answers."""
    return {
        "step": served.step,
        "checkpoint": str(served.path),
        "checkpoint_time": served.time,
        "quantize": quantize,
        "device": str(served.device),
    }
