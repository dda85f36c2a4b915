"""The progress record is strict JSON wherever it goes, whatever the loss became."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from trainer_harness import free_port

import trainforge_contract as contract
from trainforge_trainer.metrics import (
    Progress,
    TrainerMetrics,
    serve,
    write_termination_message,
)


def strict(text: str) -> Any:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text}"))


def test_progress_endpoint_and_termination_message_never_carry_bare_nan(tmp_path: Path) -> None:
    term = tmp_path / "termination-log"
    progress = Progress(10, term)
    progress.update(step=3, loss=math.nan, samplesPerSecond=math.inf)
    progress.write()
    assert strict(term.read_text()) == {
        "step": 3,
        "totalSteps": 10,
        "loss": None,
        "samplesPerSecond": None,
    }
    port = free_port()
    server = serve(port, TrainerMetrics(), progress)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=10) as r:
            assert strict(r.read().decode())["loss"] is None
    finally:
        server.shutdown()


def test_a_long_error_is_shortened_to_the_kubelets_limit_and_stays_json(tmp_path: Path) -> None:
    term = tmp_path / "termination-log"
    lines = [f"model.field{i}: unknown field; known fields: " + "x" * 80 for i in range(80)]
    write_termination_message(term, {contract.PROGRESS_ERROR_KEY: "\n".join(lines)})
    text = term.read_text()
    assert len(text.encode()) <= 4096
    error = strict(text)[contract.PROGRESS_ERROR_KEY]
    assert error.startswith("model.field0: unknown field") and error.endswith("...")
