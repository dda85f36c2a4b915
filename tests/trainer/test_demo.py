"""`make demo`, shortened: it fine-tunes, exports, serves, answers over the OpenAI endpoints
(also streamed) and says where to go next."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


def test_demo_trains_serves_and_answers(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, str(REPO / "hack" / "demo.py"), f"--workdir={tmp_path}", "--steps=20"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = demo.stdout
    assert "exported a Hugging Face directory" in out
    assert (tmp_path / "ckpt" / "hf" / "config.json").is_file()
    answers = [line for line in out.splitlines() if line.strip().startswith("assistant")]
    assert len(answers) == 4, out
    assert "Next:" in out and "docs/trainer.md" in out
