"""Step overhead of the trainer before and after a change, side by side in one process.

    .venv/bin/python bench/trainer_overhead_ab.py --before <git ref> [--steps 300]

The trainer package of `--before` (git archive, renamed to trainforge_trainer_before and
pointed at this tree's trainforge_contract) and this tree's trainer each run the small step
of bench/trainer_bench.py (metrics off), next to the hand-written loop there; the three are
stepped in rotating order every round, so load from other processes hits them alike.
Prints medians, each trainer's overhead over the plain loop, and the median of the per-round
differences (paired) as JSON (bench/REPORT.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import trainforge_contract as contract
from trainforge_trainer import config as config_mod
from trainforge_trainer.data import TensorPairs
from trainforge_trainer.loop import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from trainer_bench import STEP_CONFIG, PlainLoop

REPO = Path(__file__).resolve().parents[1]
OLD_CONTRACT_IMPORT = re.compile(r"^from trainforge import contract$", re.M)


def _before_package(ref: str, root: Path) -> Any:
    """trainforge_trainer as of `ref`, importable as trainforge_trainer_before."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "trainer_image/trainforge_trainer"],
        capture_output=True,
        check=True,
    ).stdout
    root.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    package = root / "trainforge_trainer_before"
    (root / "trainer_image" / "trainforge_trainer").rename(package)
    for source in package.rglob("*.py"):
        text = OLD_CONTRACT_IMPORT.sub("import trainforge_contract as contract", source.read_text())
        source.write_text(text.replace("trainforge_trainer", "trainforge_trainer_before"))
    sys.path.insert(0, str(root))
    return importlib.import_module("trainforge_trainer_before.loop")


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the 'before' trainer")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trainforge-ab-"))
    try:
        _run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(args: argparse.Namespace, root: Path) -> None:
    old_loop = _before_package(args.before, root / "src")
    env = {contract.ENV_CHECKPOINT_DIR: str(root / "ckpt-after")}
    after = Trainer(config_mod.parse(STEP_CONFIG), env, metrics_enabled=False)
    old_config = importlib.import_module("trainforge_trainer_before.config")
    before = old_loop.Trainer(
        old_config.parse(STEP_CONFIG),
        {contract.ENV_CHECKPOINT_DIR: str(root / "ckpt-before")},
        metrics_enabled=False,
    )
    after.start()
    before.start()
    assert isinstance(after.recipe.train, TensorPairs)
    plain = PlainLoop(STEP_CONFIG, after.recipe.train)
    sides: dict[str, Callable[[], object]] = {
        "before": before.advance,
        "after": after.advance,
        "plain": plain.step,
    }
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    load_start = os.getloadavg()[0]
    for i in range(args.warmup + args.steps):
        order = names[i % 3 :] + names[: i % 3]
        for name in order if i % 2 else reversed(order):
            took = _timed(sides[name])
            if i >= args.warmup:
                times[name].append(took)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "steps": args.steps,
                "load_avg_1m_start": round(load_start, 2),
                "load_avg_1m_end": round(os.getloadavg()[0], 2),
                **{f"{n}_step_ms": round(m * 1e3, 3) for n, m in med.items()},
                "before_overhead_pct": round((med["before"] / med["plain"] - 1) * 100, 2),
                "after_overhead_pct": round((med["after"] / med["plain"] - 1) * 100, 2),
                # Per round (the three ran back to back): steadier when the load drifts.
                **{
                    f"{n}_paired_overhead_pct": round(
                        statistics.median(
                            x - p for x, p in zip(times[n], times["plain"], strict=True)
                        )
                        / med["plain"]
                        * 100,
                        2,
                    )
                    for n in ("before", "after")
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
