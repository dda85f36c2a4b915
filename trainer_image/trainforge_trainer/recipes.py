"""What to train: the built-in recipes (`mlp`, `gpt`, `causal-lm`) and the user hook
(`entrypoint`). causal-lm (Hugging Face models) lives in causal_lm.py.

A user hook is a function `fn(config: EntrypointConfig)` in an importable module that returns
either a `Recipe` or a tuple `(model, datasets, loss)`: `datasets` maps "train" (required),
"val" and "test" to map-style datasets whose items are `(input, target)`, and
`loss(model_output, target)` returns the mean loss over the target's elements. The trainer
keeps checkpointing, metrics and fault tolerance for it. `config.model` and `config.data` are
free-form mappings for the hook's own settings.

`build_model(config)` rebuilds just the network (the inference server uses it with the config
stored in a checkpoint's manifest).
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from trainforge_trainer.config import (
    CausalLmConfig,
    ConfigError,
    EntrypointConfig,
    GptConfig,
    MlpConfig,
    TrainerConfig,
)
from trainforge_trainer.data import TensorPairs, TokenWindows, split
from trainforge_trainer.models import Gpt, Mlp

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


@dataclass
class Recipe:
    model: nn.Module
    train: Dataset[Any]
    loss: LossFn
    val: Dataset[Any] | None = None
    test: Dataset[Any] | None = None
    # Which quality metric evaluation reports besides the loss.
    metric: Literal["accuracy", "perplexity"] | None = None
    # Tokens per sample, for tokens/s (None: not a token model).
    tokens_per_sample: int | None = None
    # Training FLOPs per token, for MFU (None: not estimated).
    flops_per_token: float | None = None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Flattened only with a sequence dimension: a reshape to the same shape is still an
    # autograd node (microseconds on every small step) and changes no number.
    if logits.dim() > 2:
        logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    return F.cross_entropy(logits.float(), target)


def build_model(config: TrainerConfig) -> nn.Module:
    """The freshly initialised network a config describes (weights from the torch RNG)."""
    if isinstance(config, MlpConfig):
        m = config.model
        return Mlp(m.inputDim, m.hiddenDim, m.layers, m.numClasses, m.dropout)
    if isinstance(config, GptConfig):
        g = config.model
        return Gpt(g.vocabSize, g.seqLen, g.dModel, g.nLayers, g.nHeads, g.dropout)
    if isinstance(config, CausalLmConfig):
        from trainforge_trainer import causal_lm  # transformers: only for this recipe

        return causal_lm.build_model(config)
    return _call_entrypoint(config).model


def build_recipe(config: TrainerConfig) -> Recipe:
    if isinstance(config, MlpConfig):
        return _mlp(config)
    if isinstance(config, GptConfig):
        return _gpt(config)
    if isinstance(config, CausalLmConfig):
        return _causal_lm(config)
    return _call_entrypoint(config)


def _mlp(config: MlpConfig) -> Recipe:
    d, m = config.data, config.model
    # A fixed random teacher labels Gaussian inputs: learnable, and identical on every rank
    # and every restart because the data has its own generator.
    g = torch.Generator().manual_seed(d.seed)
    x = torch.randn(d.samples, m.inputDim, generator=g)
    teacher = torch.randn(m.inputDim, m.numClasses, generator=g)
    y = (x @ teacher + 0.1 * torch.randn(d.samples, m.numClasses, generator=g)).argmax(dim=1)
    train, val, test = (
        TensorPairs(x[r.start : r.stop], y[r.start : r.stop])
        for r in split(d.samples, d.valFraction, d.testFraction)
    )
    return Recipe(
        model=build_model(config),
        train=train,
        val=val if len(val) else None,
        test=test if len(test) else None,
        loss=cross_entropy,
        metric="accuracy",
    )


_WORDS = (
    "the",
    "a",
    "one",
    "every",
    "some",
    "model",
    "trainer",
    "gradient",
    "checkpoint",
    "cluster",
    "worker",
    "node",
    "pod",
    "rank",
    "batch",
    "step",
    "loss",
    "tensor",
    "layer",
    "weight",
    "signal",
    "learns",
    "saves",
    "resumes",
    "shards",
    "reduces",
    "waits",
    "quickly",
    "slowly",
    "again",
    "never",
    "always",
    "before",
    "after",
    "while",
    "because",
    "and",
    "but",
    "or",
    "so",
    "then",
)


def synthetic_corpus(n_bytes: int, seed: int = 0) -> bytes:
    """Deterministic English-like text with structure a small model can learn."""
    rng = random.Random(seed)  # its own RNG: generating data must not move the training RNG
    out: list[str] = []
    size = 0
    while size < n_bytes:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        sentence = " ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?"]) + " "
        out.append(sentence)
        size += len(sentence)
    return "".join(out).encode()[:n_bytes]


def _tokens(config: GptConfig) -> torch.Tensor:
    d = config.data
    if d.path is None:
        return torch.frombuffer(bytearray(synthetic_corpus(d.syntheticBytes)), dtype=torch.uint8)
    path = Path(d.path)
    if not path.is_file():
        raise ConfigError([f"data.path: no such file (got {d.path!r}); mount it or unset it"])
    if path.suffix == ".npy":
        tokens = torch.from_numpy(np.load(path).astype(np.int64).reshape(-1))
    elif path.suffix == ".bin":
        tokens = torch.from_numpy(np.fromfile(path, dtype=d.tokenDtype).astype(np.int64))
    else:
        tokens = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    if len(tokens) and int(tokens.max()) >= config.model.vocabSize:
        raise ConfigError(
            [
                f"model.vocabSize: smaller than the largest token id in {d.path!r} "
                f"(got {config.model.vocabSize}, need > {int(tokens.max())})"
            ]
        )
    return tokens


def _gpt(config: GptConfig) -> Recipe:
    d, m = config.data, config.model
    tokens = _tokens(config)
    windows = (len(tokens) - 1) // m.seqLen
    train, val, test = (
        TokenWindows(tokens[r.start * m.seqLen : r.stop * m.seqLen + 1], m.seqLen)
        for r in split(windows, d.valFraction, d.testFraction)
    )
    return Recipe(
        model=build_model(config),
        train=train,
        val=val if len(val) else None,
        test=test if len(test) else None,
        loss=cross_entropy,
        metric="perplexity",
        tokens_per_sample=m.seqLen,
    )


def _causal_lm(config: CausalLmConfig) -> Recipe:
    from trainforge_trainer import causal_lm

    train, val = causal_lm.datasets(config, causal_lm.load_tokenizer(config.model.path))
    model = build_model(config)
    return Recipe(
        model=model,
        train=train,
        val=val,
        loss=causal_lm.lm_loss,
        metric="perplexity",
        tokens_per_sample=config.data.seqLen,
        flops_per_token=causal_lm.flops_per_token(model, config.data.seqLen),
    )


def _call_entrypoint(config: EntrypointConfig) -> Recipe:
    module_name, _, attr = config.entrypoint.partition(":")
    where = f"entrypoint: {config.entrypoint!r}"
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigError([f"{where}: cannot import {module_name!r} ({exc})"]) from None
    except SyntaxError as exc:  # the user's code: every restart would fail the same way
        at = f"{exc.filename}, line {exc.lineno}"
        raise ConfigError(
            [f"{where}: cannot import {module_name!r}: {type(exc).__name__}: {exc.msg} ({at})"]
        ) from None
    except AttributeError:
        raise ConfigError([f"{where}: module {module_name!r} has no {attr!r}"]) from None
    result = fn(config)
    if isinstance(result, Recipe):
        return result
    if isinstance(result, tuple) and len(result) == 3:
        model, datasets, loss = result
        if isinstance(model, nn.Module) and isinstance(datasets, Mapping) and "train" in datasets:
            return Recipe(
                model=model,
                train=datasets["train"],
                val=datasets.get("val"),
                test=datasets.get("test"),
                loss=loss,
            )
    raise ConfigError(
        [
            f"{where}: must return a Recipe or (model, {{'train': ..., 'val': ...}}, loss) "
            f"(got {type(result).__name__})"
        ]
    )
