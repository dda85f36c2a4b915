"""Flags, TRAINFORGE_SERVE_* env and defaults; bad values name the flag or env variable."""

from __future__ import annotations

from pathlib import Path

import pytest

import trainforge_contract as contract
from trainforge_trainer.serve.settings import ServeSettings, SettingsError, parse

REQUIRED = ["--checkpoint-dir", "/ckpt", "--model-name", "m"]


def test_defaults() -> None:
    s = parse(REQUIRED, {})
    assert s == ServeSettings(checkpoint_dir=Path("/ckpt"), model_name="m")
    assert (s.port, s.max_batch_size, s.max_batch_delay_ms, s.quantize) == (8080, 32, 5.0, "none")


def test_env_is_read_and_flags_win_over_env() -> None:
    env = {
        contract.ENV_CHECKPOINT_DIR: "/from-env",
        contract.ENV_SERVE_MODEL_NAME: "envmodel",
        contract.ENV_SERVE_PORT: "9000",
        contract.ENV_SERVE_MAX_BATCH_SIZE: "8",
        contract.ENV_SERVE_QUANTIZE: "int8",
        contract.ENV_SERVE_RELOAD_INTERVAL_SECONDS: "2.5",
    }
    s = parse(["--port", "9100"], env)
    assert s.checkpoint_dir == Path("/from-env") and s.model_name == "envmodel"
    assert (s.port, s.max_batch_size, s.quantize, s.reload_interval_seconds) == (
        9100,
        8,
        "int8",
        2.5,
    )


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--checkpoint-dir: required; pass the flag or set TRAINFORGE_CHECKPOINT_DIR"),
        ([*REQUIRED, "--max-batch-size", "0"], {}, "--max-batch-size: must be between 1 and"),
        ([*REQUIRED, "--port", "http"], {}, "--port: must be a number (got 'http')"),
        ([*REQUIRED], {contract.ENV_SERVE_QUANTIZE: "fp8"}, "TRAINFORGE_SERVE_QUANTIZE: must be"),
        (["--checkpoint-dir", "/c", "--model-name", "a/b"], {}, "--model-name: must be 1-128"),
        (
            [*REQUIRED, "--quantize", "int8", "--device", "cuda"],
            {},
            "int8 dynamic quantization runs on CPU only",
        ),
    ],
)
def test_bad_settings_name_the_flag_or_env(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as err:
        parse(argv, env)
    assert any(message in line for line in err.value.lines), err.value.lines
