from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from trainer_harness import Launcher


@pytest.fixture
def trainers(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.kill_all()
