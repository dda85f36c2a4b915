"""The server's settings: command-line flags, else TRAINFORGE_SERVE_* env, else defaults.

The operator renders the env variables (trainforge_contract names them); flags are for people.
Pure: `parse(argv, env)` returns the settings or raises SettingsError with one line per
bad value.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import trainforge_contract as contract

# It is a URL path segment: /v2/models/{name}/infer.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
QUANTIZE_CHOICES = ("none", "int8")
# Not rendered by the operator (the default suits it), so not in trainforge_contract.
ENV_BODY_TIMEOUT_SECONDS = "TRAINFORGE_SERVE_BODY_TIMEOUT_SECONDS"
DEVICE_CHOICES = ("auto", "cpu", "cuda")


class SettingsError(Exception):
    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class ServeSettings:
    checkpoint_dir: Path
    model_name: str
    host: str = "0.0.0.0"
    port: int = contract.SERVE_DEFAULT_PORT
    max_batch_size: int = 32
    max_batch_delay_ms: float = 5.0
    quantize: str = "none"
    device: str = "auto"
    reload_interval_seconds: float = 10.0
    max_request_bytes: int = 16 << 20
    drain_seconds: float = 5.0
    torch_threads: int = 1
    body_timeout_seconds: float = 30.0
    # Quality-gated reload (empty metric: every newer checkpoint is loaded).
    reload_metric: str = ""
    reload_mode: str = "min"


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    kind: Callable[[str], Any]
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None


_OPTIONS: dict[str, _Option] = {
    "checkpoint_dir": _Option(
        "--checkpoint-dir",
        contract.ENV_CHECKPOINT_DIR,
        Path,
        "directory the trainer commits checkpoints to (step-XXXXXXXX/ + latest)",
    ),
    "model_name": _Option(
        "--model-name",
        contract.ENV_SERVE_MODEL_NAME,
        str,
        "name clients use in /v2/models/{name}",
    ),
    "host": _Option("--host", contract.ENV_SERVE_HOST, str, "address to listen on"),
    "port": _Option(
        "--port", contract.ENV_SERVE_PORT, int, "HTTP port (0: any free port)", 0, 65535
    ),
    "max_batch_size": _Option(
        "--max-batch-size",
        contract.ENV_SERVE_MAX_BATCH_SIZE,
        int,
        "most rows merged into one forward (1 turns batching off)",
        1,
        4096,
    ),
    "max_batch_delay_ms": _Option(
        "--max-batch-delay-ms",
        contract.ENV_SERVE_MAX_BATCH_DELAY_MS,
        float,
        "longest a request waits for others to share its batch",
        0,
        10_000,
    ),
    "quantize": _Option(
        "--quantize",
        contract.ENV_SERVE_QUANTIZE,
        str,
        "int8: dynamic int8 quantization of Linear layers (CPU only)",
        choices=QUANTIZE_CHOICES,
    ),
    "device": _Option(
        "--device",
        contract.ENV_SERVE_DEVICE,
        str,
        "where the model runs (auto: cuda when available)",
        choices=DEVICE_CHOICES,
    ),
    "reload_interval_seconds": _Option(
        "--reload-interval-seconds",
        contract.ENV_SERVE_RELOAD_INTERVAL_SECONDS,
        float,
        "how often to look for a newer committed checkpoint (0: never reload)",
        0,
        86_400,
    ),
    "reload_metric": _Option(
        "--reload-metric",
        contract.ENV_SERVE_RELOAD_METRIC,
        str,
        "switch only to a checkpoint whose manifest metric (e.g. val_loss) is no worse than "
        "the served one's (empty: always switch to the newest)",
    ),
    "reload_mode": _Option(
        "--reload-mode",
        contract.ENV_SERVE_RELOAD_MODE,
        str,
        "with --reload-metric: min (lower is better) or max",
        choices=("min", "max"),
    ),
    "max_request_bytes": _Option(
        "--max-request-bytes",
        contract.ENV_SERVE_MAX_REQUEST_BYTES,
        int,
        "largest accepted request body (larger: 413)",
        1024,
        1 << 31,
    ),
    "drain_seconds": _Option(
        "--drain-seconds",
        contract.ENV_SERVE_DRAIN_SECONDS,
        float,
        "after SIGTERM, keep answering this long while readiness fails (endpoints update)",
        0,
        3600,
    ),
    "torch_threads": _Option(
        "--torch-threads",
        contract.ENV_SERVE_TORCH_THREADS,
        int,
        "torch intra-op threads on CPU (0: torch's default, one per core); 1 leaves a core "
        "to the HTTP loop, and small batches lose more to thread sync than they gain",
        0,
        1024,
    ),
    "body_timeout_seconds": _Option(
        "--body-timeout-seconds",
        ENV_BODY_TIMEOUT_SECONDS,
        float,
        "longest a request body may take to arrive (slower: 408); also bounds how long "
        "shutdown waits for a stalled upload",
        0.1,
        3600,
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would exit 2; a bad flag is a configuration error like a bad value (78).
        raise SettingsError([f"{message}; see --help"])


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m trainforge_trainer serve",
        description="Serve the newest committed checkpoint over the Open Inference Protocol "
        "(V2 REST), with dynamic batching and hot reload.",
        allow_abbrev=False,  # a misspelt flag is an error, not a guess
    )
    for dest, opt in _OPTIONS.items():
        extra = f" [env {opt.env}]"
        if opt.choices:
            extra = f" ({'|'.join(opt.choices)})" + extra
        parser.add_argument(opt.flag, dest=dest, default=None, help=opt.help + extra)
    return parser


def parse(argv: Sequence[str], env: Mapping[str, str]) -> ServeSettings:
    args = vars(_parser().parse_args(list(argv)))
    errors: list[str] = []
    values: dict[str, Any] = {}
    for dest, opt in _OPTIONS.items():
        raw, source = args[dest], opt.flag
        if raw is None and env.get(opt.env):
            raw, source = env[opt.env], opt.env
        if raw is None:
            continue
        problem = _check(opt, raw)
        if problem:
            errors.append(f"{source}: {problem} (got {raw!r})")
        else:
            values[dest] = opt.kind(raw)
    for dest in ("checkpoint_dir", "model_name"):
        if dest not in values and not any(e.startswith(_OPTIONS[dest].flag) for e in errors):
            opt = _OPTIONS[dest]
            errors.append(f"{opt.flag}: required; pass the flag or set {opt.env}")
    if values.get("quantize") == "int8" and values.get("device") == "cuda":
        errors.append("--quantize: int8 dynamic quantization runs on CPU only; use --device cpu")
    if errors:
        raise SettingsError(errors)
    return ServeSettings(**values)


def _check(opt: _Option, raw: str) -> str | None:
    if opt.choices is not None:
        return None if raw in opt.choices else f"must be one of {', '.join(opt.choices)}"
    if opt.flag == "--model-name" and not re.match(MODEL_NAME_PATTERN, raw):
        return "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
    if opt.kind is str and not raw.strip():
        return "must not be empty"
    if opt.low is None:
        return None
    try:
        value = opt.kind(raw)
    except ValueError:
        return "must be a number"
    if not opt.low <= value <= (opt.high if opt.high is not None else value):
        return f"must be between {opt.low:g} and {opt.high:g}"
    return None
