from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import TRAIN_CONFIG

import trainforge_contract as contract


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint root written by the real trainer: step-00000002 and step-00000004."""
    work = tmp_path_factory.mktemp("trained")
    config = work / "trainer.yaml"
    config.write_text(TRAIN_CONFIG)
    root = work / "checkpoints"
    env = os.environ | {
        contract.ENV_CHECKPOINT_DIR: str(root),
        contract.ENV_TERMINATION_MESSAGE_PATH: str(work / "termination-log"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "trainforge_trainer", "train", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "step-00000002").is_dir() and (root / "step-00000004").is_dir()
    return root


@pytest.fixture(scope="session")
def trained_entrypoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint root of a user's entrypoint model (tests/serve/user_model.py)."""
    work = tmp_path_factory.mktemp("trained-entrypoint")
    config = work / "trainer.yaml"
    config.write_text("entrypoint: user_model:build\nmaxSteps: 2\nbatchSize: 8\n")
    root = work / "checkpoints"
    here = str(Path(__file__).parent)
    env = os.environ | {
        contract.ENV_CHECKPOINT_DIR: str(root),
        contract.ENV_TERMINATION_MESSAGE_PATH: str(work / "termination-log"),
        # The user's module must be importable by the trainer and by the server alike.
        "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "trainforge_trainer", "train", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root
