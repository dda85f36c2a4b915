"""Fine-tuning data for the causal-lm recipe: JSONL examples -> fixed-length token sequences.

Each JSONL line is one example in one of three shapes:

    {"text": "..."}                                   every token is trained
    {"prompt": "...", "completion": "..."}            loss on the completion only
    {"messages": [{"role": ..., "content": ...}, ...]} the tokenizer's chat template;
                                                      loss on the assistant turns only

Tokens that are not trained get the label IGNORE_INDEX. With packing the examples are
concatenated into one stream (each ends with EOS) and cut into sequences of seqLen + 1 tokens
(no padding, nothing dropped but the tail); without it each example is its own sequence,
truncated or padded. The result is a fixed tensor, so the order and the resume position are
those of the trainer's sampler (data.py), exactly as for the other recipes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainforge_trainer.config import ConfigError
from trainforge_trainer.data import TensorPairs

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the token is context, not a target


def jsonl_files(location: str, field: str) -> list[Path]:
    path = Path(location)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise ConfigError([f"{field}: no *.jsonl files in directory {location!r}"])
        return files
    if not path.is_file():
        raise ConfigError([f"{field}: no such file or directory (got {location!r}); mount it"])
    return [path]


def read_examples(location: str, field: str, tokenizer: Any) -> list[Example]:
    """Every example of a JSONL file (or directory), tokenized; errors name file and line."""
    out: list[Example] = []
    for file in jsonl_files(location, field):
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{field}: {file}:{lineno}"
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ConfigError([f"{where}: not valid JSON ({exc})"]) from None
                out.append(tokenize(record, tokenizer, where))
    if not out:
        raise ConfigError([f"{field}: no examples in {location!r}"])
    return out


def _eos(tokenizer: Any) -> list[int]:
    return [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]


def tokenize(record: Any, tokenizer: Any, where: str) -> Example:
    if not isinstance(record, dict):
        raise ConfigError([f"{where}: must be a JSON object (got {type(record).__name__})"])
    if isinstance(record.get("text"), str):
        ids = list(tokenizer(record["text"])["input_ids"])
        if not ids or ids[-1:] != _eos(tokenizer):
            ids += _eos(tokenizer)
        return Example(ids, ids)
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        prompt = list(tokenizer(record["prompt"])["input_ids"])
        completion = list(
            tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
        ) + _eos(tokenizer)
        return Example(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)
    if isinstance(record.get("messages"), list):
        return _chat(record["messages"], tokenizer, where)
    raise ConfigError(
        [
            f"{where}: needs a string 'text', string 'prompt' and 'completion', or a "
            f"'messages' list (got keys {sorted(record)})"
        ]
    )


def _chat(messages: list[Any], tokenizer: Any, where: str) -> Example:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            [
                f"{where}: 'messages' needs a chat template, and the tokenizer has none; "
                "add chat_template to tokenizer_config.json or use prompt/completion"
            ]
        )
    ok = all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not messages or not ok:
        raise ConfigError([f"{where}: messages must be [{{'role': str, 'content': str}}, ...]"])
    if not any(m["role"] == "assistant" for m in messages):
        raise ConfigError([f"{where}: messages has no 'assistant' turn to learn from"])

    def render(turns: list[Any], prompt: bool) -> str:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)
        return str(text)

    full = render(messages, False)
    # Character spans of the assistant turns: where the text grows from "…up to the
    # assistant prompt" to "…including the assistant's answer".
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = render(messages[:i], True), render(messages[: i + 1], False)
        if not (full.startswith(before) and full.startswith(through)):
            raise ConfigError(
                [
                    f"{where}: the chat template does not render turn by turn (a prefix of "
                    "the conversation is not a prefix of its text); use prompt/completion"
                ]
            )
        spans.append((len(before), len(through)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"]) + _eos(tokenizer)
    labels = [
        tok if any(a <= start < b for a, b in spans) else IGNORE_INDEX
        for tok, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ] + _eos(tokenizer)
    return Example(ids, labels)


def sequences(examples: list[Example], seq_len: int, packing: bool, pad_id: int) -> TensorPairs:
    """(inputs, next-token targets) rows of seq_len tokens each."""
    if packing:
        all_ids = torch.tensor([t for e in examples for t in e.ids], dtype=torch.long)
        all_labels = torch.tensor([t for e in examples for t in e.labels], dtype=torch.long)
        n = (len(all_ids) - 1) // seq_len
        starts = torch.arange(n) * seq_len
        window = starts[:, None] + torch.arange(seq_len)
        return TensorPairs(all_ids[window], all_labels[window + 1])
    rows_in, rows_out = [], []
    for e in examples:
        pad = max(0, seq_len + 1 - len(e.ids))
        ids = e.ids[: seq_len + 1] + [pad_id] * pad
        labels = e.labels[: seq_len + 1] + [IGNORE_INDEX] * pad
        rows_in.append(ids[:-1])
        rows_out.append(labels[1:])
    return TensorPairs(torch.tensor(rows_in), torch.tensor(rows_out))
