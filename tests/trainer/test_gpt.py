"""The gpt recipe learns; its checkpoint serves and seeds a fine-tune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from trainer_harness import Launcher, committed_steps, load_checkpoint

import trainforge_contract as contract
from trainforge_trainer.checkpoint import latest_committed
from trainforge_trainer.serve.model_store import load_model_for_inference

GPT = {
    "recipe": "gpt",
    "maxSteps": 80,
    "batchSize": 16,
    "lr": 0.003,
    "warmupSteps": 10,
    "logEverySteps": 5,
    "evalEverySteps": 40,
    "model": {"seqLen": 32, "dModel": 64, "nLayers": 2, "nHeads": 4},
    "data": {"syntheticBytes": 65536},
    "checkpoint": {"everySteps": 40},
}


def _events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_gpt_loss_falls_and_the_checkpoint_serves_and_fine_tunes(
    trainers: Launcher, tmp_path: Path
) -> None:
    # Through the real command line, as the operator starts it.
    config_file = tmp_path / "trainer.yaml"
    config_file.write_text(yaml.safe_dump(GPT))
    ckpt = tmp_path / "pretrain"
    env = {**os.environ, contract.ENV_CHECKPOINT_DIR: str(ckpt), "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "trainforge_trainer", "train", "--config", str(config_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = _events(result.stderr)
    losses = [float(e["loss"]) for e in events if e["event"] == "progress"]  # type: ignore[arg-type]
    assert len(losses) == 16
    assert losses[-1] < 0.6 * losses[0], losses
    test_eval = next(e for e in events if e["event"] == "eval" and e["split"] == "test")
    assert float(test_eval["perplexity"]) < 20  # type: ignore[arg-type]  # untrained: ~256
    assert committed_steps(ckpt) == [40, 80]

    # The inference server's view: newest verified checkpoint, model rebuilt from its manifest.
    found = latest_committed(ckpt)
    assert found is not None and found.step == 80
    model = load_model_for_inference(found)
    assert not model.training
    saved = load_checkpoint(found.path, tmp_path)["model"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    prompt = torch.tensor([list(b"The model ")])
    with torch.no_grad():
        logits = model(prompt)
    assert logits.shape == (1, prompt.shape[1], 256)
    # It learned the corpus: after "The model " a letter is far likelier than a control byte.
    probs = logits[0, -1].softmax(-1)
    assert probs[ord("a") : ord("z") + 1].sum() > 0.5

    # Fine-tune from it: its weights, a fresh step counter and optimizer.
    tuned = {**GPT, "maxSteps": 3, "warmupSteps": 0, "logEverySteps": 1, "initFrom": str(ckpt)}
    job = trainers.run(tuned, tmp_path / "finetune")
    assert job.wait_event("initialized_from")["step"] == 80
    assert job.wait_event("training_started")["step"] == 0
    first = job.wait_event("progress")
    assert first["step"] == 1 and first["loss"] < 0.6 * losses[0]
    assert committed_steps(tmp_path / "finetune") == [3]
