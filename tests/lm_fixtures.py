"""A tiny Hugging Face model directory, made locally: a Llama-architecture model from a config
and a BPE tokenizer trained with `tokenizers`, both saved with save_pretrained (no hub)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_SUBJECTS = ["the trainer", "a worker", "the cluster", "every pod", "the scheduler", "a node"]
_VERBS = ["saves", "resumes", "shards", "reduces", "loads", "restarts"]
_OBJECTS = ["the checkpoint", "a gradient", "the model", "each batch", "the weights"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """Simple, learnable English: subject verb object, with a fixed rhythm."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}." for _ in range(n)
    ]


def make_tokenizer(out: Path, corpus: list[str], vocab_size: int = 400) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def make_model_dir(out: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32) -> Path:
    """A Llama-architecture model directory (random weights) with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out, sentences(400, seed=99))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def lm_config(model_dir: Path, data_path: Path, **overrides: Any) -> dict[str, Any]:
    """A small causal-lm trainer config (fast on CPU)."""
    cfg: dict[str, Any] = {
        "recipe": "causal-lm",
        "maxSteps": 30,
        "batchSize": 4,
        "lr": 3e-3,
        "warmupSteps": 3,
        "seed": 5,
        "logEverySteps": 5,
        "model": {"path": str(model_dir)},
        "data": {"path": str(data_path), "seqLen": 32},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
