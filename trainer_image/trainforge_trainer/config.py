"""The trainer's configuration: what a TrainingJob's `spec.trainer` becomes.

Read from `--config FILE` (YAML or JSON) or else the TRAINFORGE_CONFIG env JSON. Field names
are camelCase, as in the TrainingJob manifest. This module imports no torch, so a bad config
fails in a second with one line per bad field instead of after the torch import.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

import trainforge_contract as contract

ENTRYPOINT_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class ConfigError(Exception):
    """A configuration the trainer cannot run; each line names one field, its value and a fix."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class _Section(BaseModel):
    # Unknown keys are errors: a misspelt `maxStep` must not silently train with defaults.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class CheckpointConfig(_Section):
    everySteps: int = Field(0, ge=0, description="Save every N optimizer steps (0: off).")
    everySeconds: float = Field(0, ge=0, description="Save every T seconds (0: off).")
    keepLast: int = Field(3, ge=1, description="Committed checkpoints kept; older are deleted.")
    async_: bool = Field(
        False,
        alias="async",
        description="Write in the background (at most one save in flight).",
    )


class DataLoaderConfig(_Section):
    numWorkers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")


class MlpModelConfig(_Section):
    inputDim: int = Field(32, ge=1)
    hiddenDim: int = Field(64, ge=1)
    layers: int = Field(2, ge=1, le=64, description="Hidden layers.")
    numClasses: int = Field(4, ge=2)
    dropout: float = Field(0.0, ge=0, lt=1)


class MlpDataConfig(DataLoaderConfig):
    samples: int = Field(4096, ge=16, description="Size of the synthetic dataset.")
    seed: int = Field(1234, description="Seed of the synthetic data (not of training).")
    valFraction: float = Field(0.1, ge=0, lt=0.5)
    testFraction: float = Field(0.1, ge=0, lt=0.5)


class GptModelConfig(_Section):
    vocabSize: int = Field(256, ge=2, description="256 for byte-level text.")
    seqLen: int = Field(64, ge=2)
    dModel: int = Field(128, ge=8)
    nLayers: int = Field(2, ge=1, le=96)
    nHeads: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GptModelConfig:
        if self.dModel % self.nHeads:
            raise ValueError(
                f"dModel: must be a multiple of nHeads={self.nHeads} (got {self.dModel})"
            )
        return self


class GptDataConfig(DataLoaderConfig):
    path: str | None = Field(
        None,
        description=(
            "A text file (UTF-8 bytes are the tokens) or a token file (.npy, or raw .bin of "
            "tokenDtype). Unset: a small built-in synthetic corpus."
        ),
    )
    tokenDtype: Literal["uint8", "uint16", "uint32"] = "uint16"
    syntheticBytes: int = Field(262_144, ge=4096, description="Size of the built-in corpus.")
    valFraction: float = Field(0.05, ge=0, lt=0.5)
    testFraction: float = Field(0.05, ge=0, lt=0.5)


class LoraConfig(_Section):
    r: int = Field(8, ge=1, le=1024, description="Rank of the low-rank update.")
    alpha: float = Field(16, gt=0, description="Scale of the update is alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1)
    targetModules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Names of the Linear layers that get adapters (Llama-style by default).",
    )


class CausalLmModelConfig(_Section):
    path: str = Field(
        min_length=1,
        description=(
            "A local Hugging Face model directory (config.json, weights, tokenizer files), "
            "e.g. a PVC path such as /models/base. Nothing is downloaded."
        ),
    )
    activationCheckpointing: bool = Field(
        False, description="Recompute each decoder block in the backward pass (less memory)."
    )
    lora: LoraConfig | None = Field(
        None, description="Train LoRA adapters (needs peft) instead of all weights."
    )


class CausalLmDataConfig(DataLoaderConfig):
    path: str = Field(
        min_length=1,
        description=(
            "A JSONL file, or a directory of *.jsonl files (read in name order). Each line: "
            '{"text": ...}, {"prompt": ..., "completion": ...} or {"messages": [...]} '
            "(rendered with the tokenizer's chat template)."
        ),
    )
    valPath: str | None = Field(
        None, description="JSONL for evaluation; unset: the last valFraction of the examples."
    )
    seqLen: int = Field(512, ge=8, le=131_072, description="Tokens per training sequence.")
    packing: bool = Field(
        True,
        description=(
            "Concatenate examples into full sequences (no padding); off: one example per "
            "sequence, truncated or padded to seqLen."
        ),
    )
    valFraction: float = Field(0.05, ge=0, lt=0.5)


class ExportConfig(_Section):
    path: str | None = Field(
        None,
        description=(
            "Where the final Hugging Face directory goes; unset: `hf` in the checkpoint "
            "directory. Replaced atomically at the end of every run."
        ),
    )
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Weight dtype of the export; auto: the base model's torch_dtype."
    )
    maxShardSize: str = Field("5GB", description="Largest model.safetensors shard.")


class TrainerConfigBase(_Section):
    maxSteps: int = Field(100, ge=1, description="Optimizer steps to train.")
    batchSize: int = Field(32, ge=1, description="Micro-batch per process (rank).")
    gradAccumSteps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(3e-4, gt=0, le=10, description="Peak learning rate (AdamW).")
    minLrRatio: float = Field(0.1, ge=0, le=1, description="Final lr of the cosine, x lr.")
    weightDecay: float = Field(0.01, ge=0)
    warmupSteps: int = Field(0, ge=0, description="Linear warmup before the cosine decay.")
    gradClip: float = Field(1.0, ge=0, description="Max global grad norm (0: no clipping).")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    compile: bool = Field(False, description="torch.compile the model.")
    evalEverySteps: int = Field(0, ge=0, description="Validation every N steps (0: at end).")
    logEverySteps: int = Field(10, ge=1, description="Loss/throughput logging interval.")
    seed: int = 0
    checkpoint: CheckpointConfig = CheckpointConfig()
    initFrom: str | None = Field(
        None,
        description=(
            "Fine-tune: a checkpoint directory (step-XXXXXXXX, or a checkpoint root whose "
            "newest committed step is used); weights only, fresh optimizer and step."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainerConfigBase:
        if self.warmupSteps > self.maxSteps:
            raise ValueError(
                f"warmupSteps: must not exceed maxSteps={self.maxSteps} (got {self.warmupSteps})"
            )
        if self.strategy == "fsdp" and self.precision == "fp16":
            raise ValueError("precision: 'fp16' is not supported with strategy 'fsdp'; use 'bf16'")
        return self


class MlpConfig(TrainerConfigBase):
    recipe: Literal["mlp"] = "mlp"
    model: MlpModelConfig = MlpModelConfig()
    data: MlpDataConfig = MlpDataConfig()


class GptConfig(TrainerConfigBase):
    recipe: Literal["gpt"]
    model: GptModelConfig = GptModelConfig()
    data: GptDataConfig = GptDataConfig()


class EntrypointConfig(TrainerConfigBase):
    entrypoint: str = Field(
        pattern=ENTRYPOINT_PATTERN,
        description="module:function returning model, datasets and loss (see recipes.py).",
    )
    # Free-form: handed to the user's function as they are.
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}


class CausalLmConfig(TrainerConfigBase):
    """Fine-tune a Hugging Face causal LM (Llama, Mistral, Qwen, ...) from a local directory."""

    recipe: Literal["causal-lm"]
    model: CausalLmModelConfig
    data: CausalLmDataConfig
    export: ExportConfig = ExportConfig()


TrainerConfig = MlpConfig | GptConfig | CausalLmConfig | EntrypointConfig
RECIPES = ("mlp", "gpt", "causal-lm")


def _recipe_tag(raw: Any) -> str:
    if isinstance(raw, Mapping):
        if raw.get("entrypoint") is not None:
            return "entrypoint"
        recipe = raw.get("recipe", "mlp")
        return recipe if recipe in RECIPES else "unknown"
    return "mlp"


_UNKNOWN_RECIPE = "unknown recipe; use 'mlp', 'gpt' or 'causal-lm', or set entrypoint"
_ADAPTER: TypeAdapter[TrainerConfig] = TypeAdapter(
    Annotated[
        Annotated[MlpConfig, Tag("mlp")]
        | Annotated[GptConfig, Tag("gpt")]
        | Annotated[CausalLmConfig, Tag("causal-lm")]
        | Annotated[EntrypointConfig, Tag("entrypoint")],
        Discriminator(
            _recipe_tag,
            custom_error_type="recipe",
            custom_error_message=_UNKNOWN_RECIPE,
        ),
    ]
)


def _known_fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _section_model(tag: str, section: str) -> type[BaseModel] | None:
    by_recipe: dict[str, dict[str, type[BaseModel]]] = {
        "mlp": {"": MlpConfig, "model": MlpModelConfig, "data": MlpDataConfig},
        "gpt": {"": GptConfig, "model": GptModelConfig, "data": GptDataConfig},
        "causal-lm": {
            "": CausalLmConfig,
            "model": CausalLmModelConfig,
            "data": CausalLmDataConfig,
            "export": ExportConfig,
        },
        "entrypoint": {"": EntrypointConfig},
    }
    if section == "checkpoint":
        return CheckpointConfig
    return by_recipe.get(tag, {}).get(section)


def _describe(err: ErrorDetails, tag: str) -> str:
    # The first loc element is the union tag ("mlp", "gpt", ...): not part of the user's path.
    loc = [str(p) for p in err["loc"]]
    if loc and loc[0] in (*RECIPES, "entrypoint"):
        loc = loc[1:]
    field = ".".join(loc) or "trainer"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        section = loc[0] if len(loc) > 1 else ""
        model = _section_model(tag, section)
        known = _known_fields(model) if model else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        fix = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(known)}"
        return f"{field}: unknown field; {fix}"
    if err["type"] == "recipe":
        got = value.get("recipe") if isinstance(value, Mapping) else value
        return f"recipe: {_UNKNOWN_RECIPE.replace('unknown recipe', f'unknown recipe {got!r}')}"
    msg = err["msg"]
    if err["type"] == "value_error":
        # Cross-field checks name their own field: "dModel: must be ... (got ...)".
        return ".".join([*loc, msg.removeprefix("Value error, ")])
    if err["type"] == "string_pattern_mismatch":
        msg = "must look like 'package.module:function'"
    return f"{field}: {msg[:1].lower()}{msg[1:]} (got {_short(value)})"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def parse(raw: Any) -> TrainerConfig:
    """Validate a `spec.trainer` mapping; raise ConfigError with one line per bad field."""
    if not isinstance(raw, Mapping):
        raise ConfigError([f"trainer: must be a mapping of settings (got {_short(raw)})"])
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        tag = _recipe_tag(raw)
        raise ConfigError([_describe(e, tag) for e in exc.errors()]) from None


def load(path: str | None, env: Mapping[str, str], entrypoint: str | None = None) -> TrainerConfig:
    """The config from `path` if given, else from TRAINFORGE_CONFIG, else all defaults.

    The settings may sit under a `trainer:` key or in a TrainingJob manifest (see _unwrap).

    `entrypoint` (the --entrypoint flag) overrides the config's recipe.
    """
    raw: Any
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError([f"--config: cannot read {path!r}: {exc.strerror}"]) from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "parse error"
            raise ConfigError([f"--config: {path!r} is not valid YAML/JSON: {first}"]) from None
    elif env.get(contract.ENV_CONFIG):
        try:
            raw = json.loads(env[contract.ENV_CONFIG])
        except json.JSONDecodeError as exc:
            raise ConfigError(
                [f"{contract.ENV_CONFIG}: not valid JSON ({exc.msg} at char {exc.pos})"]
            ) from None
    else:
        raw = {}
    raw = _unwrap(raw)
    if entrypoint is not None:
        if not isinstance(raw, Mapping):
            return parse(raw)
        if not re.match(ENTRYPOINT_PATTERN, entrypoint):
            raise ConfigError(
                [f"--entrypoint: must look like 'package.module:function' (got {entrypoint!r})"]
            )
        raw = {k: v for k, v in raw.items() if k != "recipe"} | {"entrypoint": entrypoint}
    return parse(raw)


def _unwrap(raw: Any) -> Any:
    """The trainer settings of a file that holds more around them: a mapping whose only key
    is `trainer:` (the block as it sits in a TrainingJob's spec), or a whole TrainingJob
    manifest (its spec.trainer). "trainer" is no field of the config, so this is unambiguous.
    """
    if not isinstance(raw, Mapping):
        return raw
    if raw.get("kind") == "TrainingJob" and isinstance(raw.get("spec"), Mapping):
        return raw["spec"].get("trainer") or {}
    if set(raw) == {"trainer"}:
        return raw["trainer"] or {}
    return raw


def dump(config: TrainerConfig) -> dict[str, Any]:
    """The config as camelCase JSON-able data; `parse(dump(c)) == c`."""
    return config.model_dump(mode="json", by_alias=True)
