"""The causal-lm recipe: fine-tune a Hugging Face causal LM, and export it as a HF directory.

The model and tokenizer come from a local directory (`model.path`, e.g. a PVC); nothing is
downloaded (HF_HUB_OFFLINE is forced). Training goes through the same loop, checkpoints and
resume as every recipe: the network is `CausalLm`, a module whose forward maps token ids to
logits, so DDP, FSDP2 (one unit per decoder block, via the ModuleList of layers), DCP and the
data position all apply unchanged.

Export (`export()`; `python -m trainforge_trainer export`) rebuilds the model from a committed
checkpoint, merges LoRA adapters, and writes config.json, model.safetensors shard(s),
generation config and tokenizer files that transformers and vLLM load as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import trainforge_contract as contract
from trainforge_trainer import logs
from trainforge_trainer.config import CausalLmConfig, ConfigError, parse
from trainforge_trainer.lm_data import IGNORE_INDEX, read_examples, sequences

# A fine-tuning job must never reach out to a hub: the model is on a volume.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# Progress bars in a JSON log are noise.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


EXPORT_MARKER = "trainforge-export.json"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CausalLm(nn.Module):
    """A Hugging Face causal LM seen as tokens -> logits (what the trainer and server call)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.lm(input_ids=input_ids, use_cache=False).logits
        return logits


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over the trained tokens (IGNORE_INDEX targets are context)."""
    flat = targets.reshape(-1)
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        flat,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    # A sequence of prompt tokens only has no target: loss 0, not NaN.
    return total / (flat != IGNORE_INDEX).sum().clamp(min=1)


def _check_model_dir(path: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(
            [
                f"model.path: no Hugging Face model at {path!r} (no config.json); stage the "
                "model onto a volume and mount it there (docs/trainer.md)"
            ]
        )
    return p


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(_check_model_dir(path))
    return tokenizer


def build_model(cfg: CausalLmConfig) -> CausalLm:
    """The base model from `model.path` in fp32 (the master weights), with LoRA if asked."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    m = cfg.model
    lm: Any = AutoModelForCausalLM.from_pretrained(_check_model_dir(m.path), dtype=torch.float32)
    if m.activationCheckpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and FSDP2. The method's name changed
        # within transformers 5.x.
        no_reentrant = {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(no_reentrant)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=no_reentrant)
    if m.lora is not None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ConfigError(
                ["model.lora: needs the peft package, which this image lacks; unset model.lora"]
            ) from None
        lora = LoraConfig(
            r=m.lora.r,
            lora_alpha=m.lora.alpha,  # type: ignore[arg-type]  # peft accepts floats
            lora_dropout=m.lora.dropout,
            target_modules=list(m.lora.targetModules),
            task_type="CAUSAL_LM",
        )
        try:
            lm = get_peft_model(lm, lora)
        except ValueError as exc:
            raise ConfigError([f"model.lora.targetModules: {exc}"]) from None
    return CausalLm(lm)


def flops_per_token(lm: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter plus causal attention (PaLM's estimate)."""
    params = sum(p.numel() for p in lm.parameters())
    c = getattr(lm, "config", None)
    layers = getattr(c, "num_hidden_layers", 0) or 0
    hidden = getattr(c, "hidden_size", 0) or 0
    return 6.0 * params + 12.0 * layers * hidden * seq_len


def datasets(cfg: CausalLmConfig, tokenizer: Any) -> tuple[Any, Any | None]:
    d = cfg.data
    train = read_examples(d.path, "data.path", tokenizer)
    if d.valPath is not None:
        val = read_examples(d.valPath, "data.valPath", tokenizer)
    else:
        n_val = int(len(train) * d.valFraction)
        train, val = train[: len(train) - n_val], train[len(train) - n_val :]
    pad = tokenizer.pad_token_id
    pad = tokenizer.eos_token_id if pad is None else pad
    train_seqs = sequences(train, d.seqLen, d.packing, pad or 0)
    if len(train_seqs) == 0:
        tokens = sum(len(e.ids) for e in train)
        raise ConfigError(
            [
                f"data.seqLen: the training data has {tokens} tokens, fewer than seqLen + 1 "
                f"(got {d.seqLen}); add data or lower seqLen"
            ]
        )
    val_seqs = sequences(val, d.seqLen, d.packing, pad or 0) if val else None
    return train_seqs, val_seqs if val_seqs is not None and len(val_seqs) else None


# --- export -------------------------------------------------------------------------------


def export(checkpoint: Any, out: Path, dtype: str | None = None) -> Path:
    """Write the checkpoint's model as a Hugging Face directory at `out` (replaced atomically).

    `checkpoint` is a CommittedCheckpoint of a causal-lm run; `dtype` overrides export.dtype.
    """
    from trainforge_trainer.serve.model_store import load_model_for_inference

    cfg = parse(checkpoint.manifest["config"])
    if not isinstance(cfg, CausalLmConfig):
        raise ConfigError(
            [f"--checkpoint: {checkpoint.path} is not a causal-lm run; only those export"]
        )
    model = load_model_for_inference(checkpoint)
    assert isinstance(model, CausalLm)
    lm: Any = model.lm
    if cfg.model.lora is not None:
        lm = lm.merge_and_unload()  # plain weights: vLLM and transformers need no peft
    choice = dtype or cfg.export.dtype
    if choice == "auto":
        base = json.loads((Path(cfg.model.path) / "config.json").read_text())
        name = base.get("dtype") or base.get("torch_dtype") or "float32"
        target = getattr(torch, str(name), torch.float32)
    else:
        target = _DTYPES[choice]
    lm = lm.to(target)
    if getattr(lm.config, "use_cache", None) is False:
        lm.config.use_cache = True  # training turned it off; inference wants it
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{contract.CHECKPOINT_TMP_PREFIX}{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp, safe_serialization=True, max_shard_size=cfg.export.maxShardSize)
    load_tokenizer(cfg.model.path).save_pretrained(tmp)
    marker = {
        "step": checkpoint.step,
        "checkpoint": str(checkpoint.path),
        "checkpointTime": checkpoint.time,
        "base": cfg.model.path,
        "dtype": str(target).removeprefix("torch."),
        "loraMerged": cfg.model.lora is not None,
    }
    (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    # Swap: the old directory is renamed aside first, so `out` is never half written.
    old = out.with_name(f"{contract.CHECKPOINT_TMP_PREFIX}delete-{out.name}-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    logs.event("exported", step=checkpoint.step, path=str(out), dtype=marker["dtype"])
    return out


def default_export_dir(cfg: CausalLmConfig, checkpoint_dir: Path) -> Path:
    return Path(cfg.export.path) if cfg.export.path else checkpoint_dir / contract.EXPORT_DIR_NAME
