"""Each image installs only its own half: the distributions' dependency closures.

The trainer image installs trainforge-contract and trainforge-trainer, the operator image
trainforge-contract and trainforge (see the Dockerfiles). Their requirements are read from
the pyproject files and followed through the installed distributions' metadata (the dev
environment has every one of them), so a dependency that would drag kopf into the trainer
image, or torch into the operator image, fails here before an image is built.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PROJECTS = {
    "trainforge-contract": REPO / "contract" / "pyproject.toml",
    "trainforge": REPO / "pyproject.toml",
    "trainforge-trainer": REPO / "trainer_image" / "pyproject.toml",
}


def _requirements(project: str) -> list[Requirement]:
    if project in PROJECTS:  # ours: from the source tree, not from what is installed
        declared = tomllib.loads(PROJECTS[project].read_text())["project"]["dependencies"]
    else:
        declared = metadata.requires(project) or []
    found = [Requirement(r) for r in declared]
    # Without extras: the images install none (markers naming an extra are false here).
    return [r for r in found if r.marker is None or r.marker.evaluate({"extra": ""})]


def closure(*roots: str) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        todo.extend(r.name for r in _requirements(name))
    return seen


def test_the_contract_has_no_dependencies() -> None:
    assert closure("trainforge-contract") == {"trainforge-contract"}


def test_the_trainer_image_installs_neither_kopf_nor_the_kubernetes_client() -> None:
    trainer = closure("trainforge-contract", "trainforge-trainer")
    assert "torch" in trainer
    assert not trainer & {"kopf", "kubernetes", "trainforge"}, sorted(trainer)


def test_the_operator_image_installs_neither_torch_nor_the_trainer() -> None:
    operator = closure("trainforge-contract", "trainforge")
    assert {"kopf", "kubernetes"} <= operator
    assert not operator & {"torch", "numpy", "trainforge-trainer"}, sorted(operator)


def test_each_dockerfile_copies_and_installs_its_own_distributions() -> None:
    def copies(dockerfile: Path) -> str:
        return "\n".join(c for c in dockerfile.read_text().splitlines() if c.startswith("COPY "))

    assert "pip install --no-cache-dir . ./contract" in (REPO / "Dockerfile").read_text()
    assert "trainer_image" not in copies(REPO / "Dockerfile")
    trainer = REPO / "trainer_image" / "Dockerfile"
    assert "pip install --no-cache-dir ./contract ./trainer_image" in trainer.read_text()
    assert "operator" not in copies(trainer)


def _third_party_imports(package: Path) -> set[str]:
    """Top-level names of what the package's modules import, less stdlib and itself."""
    names: set[str] = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {package.name}


def test_each_distribution_declares_what_its_code_imports() -> None:
    """An import satisfied only through the other half (aiohttp via kopf, say) breaks that
    half's image: every import must come from the distribution's own closure."""
    providers = metadata.packages_distributions()
    for package, roots in (
        (REPO / "contract" / "trainforge_contract", ("trainforge-contract",)),
        (REPO / "operator" / "trainforge", ("trainforge-contract", "trainforge")),
        (
            REPO / "trainer_image" / "trainforge_trainer",
            ("trainforge-contract", "trainforge-trainer"),
        ),
    ):
        installed = closure(*roots)
        missing = {
            name
            for name in _third_party_imports(package)
            if name != "trainforge_contract"
            and not {canonicalize_name(d) for d in providers.get(name, [name])} & installed
        }
        assert not missing, f"{package.name} imports {sorted(missing)}, not in {roots}"
