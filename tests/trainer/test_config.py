"""A config that cannot run fails at once: one line per bad field, the config exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainer_harness import Launcher

import trainforge_contract as contract
from trainforge_trainer.config import ConfigError, GptConfig, dump, load, parse

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "lines"),
    [
        ({"maxStep": 10}, ["maxStep: unknown field; did you mean 'maxSteps'?"]),
        (
            {"batchSize": 0, "precision": "fp8"},
            [
                "batchSize: input should be greater than or equal to 1 (got 0)",
                "precision: input should be 'fp32', 'bf16' or 'fp16' (got \"fp8\")",
            ],
        ),
        (
            {"recipe": "bert"},
            ["recipe: unknown recipe 'bert'; use 'mlp', 'gpt' or 'causal-lm', or set entrypoint"],
        ),
        (
            {"recipe": "gpt", "model": {"dModel": 30, "nHeads": 4}},
            ["model.dModel: must be a multiple of nHeads=4 (got 30)"],
        ),
        (
            {"checkpoint": {"keepLast": 0, "everySecs": 5}},
            [
                "checkpoint.keepLast: input should be greater than or equal to 1 (got 0)",
                "checkpoint.everySecs: unknown field; did you mean 'everySeconds'?",
            ],
        ),
        (
            {"strategy": "fsdp", "precision": "fp16"},
            ["precision: 'fp16' is not supported with strategy 'fsdp'; use 'bf16'"],
        ),
        (
            {"entrypoint": "train.py"},
            ["entrypoint: must look like 'package.module:function' (got \"train.py\")"],
        ),
        (
            {"lr": "fast"},
            ['lr: input should be a valid number, unable to parse string as a number (got "fast")'],
        ),
    ],
)
def test_each_bad_field_gets_one_line(raw: dict[str, object], lines: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(raw)
    assert exc.value.lines == lines


def test_config_round_trips_through_the_manifest_form() -> None:
    cfg = parse({"recipe": "gpt", "maxSteps": 7, "checkpoint": {"async": True}})
    assert isinstance(cfg, GptConfig)
    assert cfg.checkpoint.async_
    assert parse(json.loads(json.dumps(dump(cfg)))) == cfg


def test_file_wins_over_env_and_entrypoint_flag_wins_over_recipe(tmp_path: Path) -> None:
    f = tmp_path / "trainer.yaml"
    f.write_text("recipe: gpt\nmaxSteps: 5\n")
    env = {contract.ENV_CONFIG: json.dumps({"maxSteps": 9})}
    assert load(str(f), env).maxSteps == 5
    assert load(None, env).maxSteps == 9
    hooked = load(str(f), env, entrypoint="mypkg.train:build")
    assert hooked.maxSteps == 5
    assert not isinstance(hooked, GptConfig)


def _cli(tmp_path: Path, *args: str, config: str | None = None) -> subprocess.CompletedProcess[str]:
    term = tmp_path / "termination-log"
    term.touch()
    env = {
        **os.environ,
        contract.ENV_TERMINATION_MESSAGE_PATH: str(term),
        contract.ENV_CHECKPOINT_DIR: str(tmp_path / "ckpt"),
    }
    env.pop(contract.ENV_CONFIG, None)
    if config is not None:
        env[contract.ENV_CONFIG] = config
    return subprocess.run(
        [sys.executable, "-m", "trainforge_trainer", "train", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_cli_rejects_a_bad_file_without_a_traceback(tmp_path: Path) -> None:
    f = tmp_path / "trainer.yaml"
    f.write_text("recipe: gpt\nmaxSteps: -1\nmodel: {nLayer: 2}\n")
    result = _cli(tmp_path, "--config", str(f))
    assert result.returncode == contract.EXIT_CONFIG_ERROR
    assert result.stderr.splitlines() == [
        "trainforge-trainer: config error: maxSteps: input should be greater than or equal "
        "to 1 (got -1)",
        "trainforge-trainer: config error: model.nLayer: unknown field; did you mean 'nLayers'?",
    ]
    # The operator reads the reason from the pod's termination message.
    record = json.loads((tmp_path / "termination-log").read_text())
    assert "model.nLayer" in record[contract.PROGRESS_ERROR_KEY]
    assert not (tmp_path / "ckpt").exists()


def test_cli_rejects_env_that_is_not_json(tmp_path: Path) -> None:
    result = _cli(tmp_path, config="{not json")
    assert result.returncode == contract.EXIT_CONFIG_ERROR
    assert result.stderr.splitlines() == [
        f"trainforge-trainer: config error: {contract.ENV_CONFIG}: not valid JSON "
        "(Expecting property name enclosed in double quotes at char 1)"
    ]


@pytest.mark.parametrize(
    ("config", "argv", "expected"),
    [
        (
            {"recipe": "gpt", "data": {"path": "/nonexistent/corpus.txt"}},
            ["train"],
            "data.path: no such file (got '/nonexistent/corpus.txt')",
        ),
        (
            {},
            ["train", "--entrypoint", "no_such_module:build"],
            "entrypoint: 'no_such_module:build': cannot import 'no_such_module'",
        ),
    ],
    ids=["missing-data-file", "missing-entrypoint"],
)
def test_errors_found_while_starting_are_config_errors(
    trainers: Launcher, config: dict[str, object], argv: list[str], expected: str
) -> None:
    job = trainers.launch(config, argv=argv)
    assert job.wait(60) == [contract.EXIT_CONFIG_ERROR]
    log = job.logs[0].read_text()
    errors = [line for line in log.splitlines() if "config error" in line]
    assert len(errors) == 1 and expected in errors[0], log
    assert "Traceback" not in log
    assert expected in json.loads(job.termination[0].read_text())[contract.PROGRESS_ERROR_KEY]


def test_a_config_file_may_wrap_the_settings_as_in_the_trainingjob(tmp_path: Path) -> None:
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text("trainer:\n  recipe: gpt\n  maxSteps: 7\n")
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        "apiVersion: trainforge.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\n"
        "spec:\n  workers: 1\n  trainer:\n    recipe: gpt\n    maxSteps: 7\n"
    )
    for f in (wrapped, manifest):
        cfg = load(str(f), {})
        assert isinstance(cfg, GptConfig) and cfg.maxSteps == 7, f.name
    # Next to other keys, `trainer` is what it always was: an unknown field.
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("maxSteps: 7\ntrainer: {recipe: gpt}\n")
    with pytest.raises(ConfigError, match="trainer: unknown field"):
        load(str(mixed), {})


def test_a_syntax_error_in_the_users_module_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "broken_hook.py").write_text("def build(config):\n    return (\n")
    term = tmp_path / "termination-log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        contract.ENV_TERMINATION_MESSAGE_PATH: str(term),
        contract.ENV_CHECKPOINT_DIR: str(tmp_path / "ckpt"),
    }
    env.pop(contract.ENV_CONFIG, None)
    result = subprocess.run(
        [sys.executable, "-m", "trainforge_trainer", "train", "--entrypoint", "broken_hook:build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == contract.EXIT_CONFIG_ERROR, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    want = "cannot import 'broken_hook': SyntaxError: '(' was never closed"
    assert want in result.stderr and "broken_hook.py, line 2" in result.stderr
    assert want in json.loads(term.read_text())[contract.PROGRESS_ERROR_KEY]


def test_init_from_a_checkpoint_of_another_architecture_is_a_config_error(
    trainers: Launcher, tmp_path: Path
) -> None:
    small = {
        "recipe": "mlp",
        "maxSteps": 1,
        "batchSize": 8,
        "model": {"inputDim": 8, "hiddenDim": 16, "numClasses": 3},
        "data": {"samples": 32},
    }
    trainers.run(small, tmp_path / "base")
    other = {**small, "model": {"inputDim": 4, "hiddenDim": 16, "numClasses": 3}}
    job = trainers.launch({**other, "initFrom": str(tmp_path / "base")}, tmp_path / "tuned")
    assert job.wait(60) == [contract.EXIT_CONFIG_ERROR]
    log = job.logs[0].read_text()
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if "config error" in line]
    assert len(errors) == 1, log
    assert "initFrom:" in errors[0] and "holds a different model" in errors[0]
    assert "shape [16, 8] in the checkpoint, [16, 4] here" in errors[0]
    assert '"inputDim": 8' in errors[0]
    record = json.loads(job.termination[0].read_text())
    assert "holds a different model" in record[contract.PROGRESS_ERROR_KEY]


def test_a_diverged_loss_never_makes_invalid_json(trainers: Launcher) -> None:
    config = {"entrypoint": "diverging_model:build", "maxSteps": 2, "batchSize": 8}
    job = trainers.launch({**config, "logEverySteps": 1})
    progress = job.wait_event("progress", where=lambda e: e["step"] == 2)
    assert job.wait(60) == [0]

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text}"))

    assert progress["loss"] == "NaN"  # the log says what happened, as valid JSON
    for line in job.logs[0].read_text().splitlines():
        if line.startswith("{"):
            strict(line)
    record = strict(job.termination[0].read_text())
    assert record["step"] == 2 and record["loss"] is None


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "examples").glob("trainingjob-*.yaml")), ids=str
)
def test_the_examples_trainer_configs_parse(path: Path) -> None:
    trainer = yaml.safe_load(path.read_text())["spec"].get("trainer")
    if trainer is not None:
        parse(trainer)
