"""The causal-lm recipe on a tiny Llama made locally: it learns, data parallelism and resume
are invisible in the weights, and the export loads in transformers with the same logits."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_harness import Launcher, committed_steps, flat_tensors, load_checkpoint

import trainforge_contract as contract
from lm_fixtures import lm_config, make_model_dir, make_tokenizer, sentences, write_jsonl
from trainforge_trainer.__main__ import main
from trainforge_trainer.checkpoint import latest_committed
from trainforge_trainer.config import ConfigError
from trainforge_trainer.lm_data import IGNORE_INDEX, tokenize
from trainforge_trainer.serve.model_store import load_model_for_inference


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    return write_jsonl(path, [{"text": s} for s in sentences(400)])


def _losses(events: list[dict[str, Any]]) -> list[float]:
    return [e["loss"] for e in events if e["event"] == "progress"]


def test_loss_falls_and_the_export_reloads_with_identical_logits(
    trainers: Launcher, tmp_path: Path, base_model: Path, corpus: Path
) -> None:
    job = trainers.run(lm_config(base_model, corpus, maxSteps=40))
    losses = _losses(job.events())
    assert losses[-1] < 0.6 * losses[0], losses
    val = next(e for e in job.events() if e["event"] == "eval" and e["split"] == "val")
    assert val["perplexity"] < 40, val

    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = tmp_path / "ckpt" / contract.EXPORT_DIR_NAME
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()
    marker = json.loads((export / "trainforge-export.json").read_text())
    assert marker["step"] == 40
    reloaded = AutoModelForCausalLM.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    trained = load_model_for_inference(latest_committed(tmp_path / "ckpt"))
    ids = tokenizer("the trainer saves the checkpoint.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, trained(ids))
        # And the export is the fine-tuned model: a corpus sentence is far likelier than
        # under the base model.
        base = AutoModelForCausalLM.from_pretrained(base_model).eval()
        nll = [m(input_ids=ids, labels=ids).loss.item() for m in (reloaded, base)]
    assert nll[0] < nll[1] - 1, nll

    # The export command does the same for any committed checkpoint, here as bf16.
    out = tmp_path / "exported-bf16"
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out),
                 "--dtype", "bf16"]) == 0  # fmt: skip
    again = AutoModelForCausalLM.from_pretrained(out)
    assert next(again.parameters()).dtype == torch.bfloat16
    assert not list(tmp_path.glob(".tmp-*")), "the replaced export was not cleaned up"


def test_two_fsdp_ranks_reach_the_weights_of_one_rank(
    trainers: Launcher, tmp_path: Path, base_model: Path, corpus: Path
) -> None:
    one = trainers.launch(lm_config(base_model, corpus, batchSize=4), tmp_path / "one")
    two = trainers.launch(
        lm_config(base_model, corpus, batchSize=2, strategy="fsdp"), tmp_path / "two", nprocs=2
    )
    assert one.wait(180) == [0], one.log_text()
    assert two.wait(180) == [0, 0], two.log_text()
    a = load_checkpoint(tmp_path / "one" / "step-00000030", tmp_path)["model"]
    b = load_checkpoint(tmp_path / "two" / "step-00000030", tmp_path)["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=2e-5, msg=name)
    losses_one, losses_two = _losses(one.events()), _losses(two.events())
    assert losses_one == pytest.approx(losses_two, abs=1e-4)


def test_lora_with_activation_checkpointing_resumes_bitwise(
    trainers: Launcher, tmp_path: Path, base_model: Path, corpus: Path
) -> None:
    cfg = lm_config(
        base_model,
        corpus,
        maxSteps=80,
        gradAccumSteps=2,
        model={
            "activationCheckpointing": True,
            # Dropout draws from the RNG: a resume must restore it exactly.
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        },
        checkpoint={"everySteps": 20},
    )
    straight = trainers.launch(cfg, tmp_path / "straight")
    stopped = trainers.launch(cfg, tmp_path / "stopped")
    stopped.wait_event("progress", where=lambda e: e["step"] >= 10)
    stopped.signal(signal.SIGTERM)
    assert stopped.wait(120) == [contract.EXIT_PREEMPTED], stopped.log_text()
    stop_step = stopped.wait_event("preempted")["step"]
    assert stop_step < 80 and stop_step % 20, f"stopped at {stop_step}: not mid-interval"
    assert max(committed_steps(tmp_path / "stopped")) == stop_step
    resumed = trainers.launch(cfg, tmp_path / "stopped")
    assert resumed.wait(180) == [0], resumed.log_text()
    assert resumed.wait_event("resumed")["step"] == stop_step
    assert straight.wait(180) == [0], straight.log_text()

    a = load_checkpoint(tmp_path / "straight" / "step-00000080", tmp_path)
    b = load_checkpoint(tmp_path / "stopped" / "step-00000080", tmp_path)
    ta, tb = dict(flat_tensors(a)), dict(flat_tensors(b))
    assert ta.keys() == tb.keys()
    assert any("lora_A" in k for k in ta), "no LoRA adapters were trained"
    for name, t in ta.items():
        assert torch.equal(t, tb[name]), f"{name} differs after resume"

    # The export merges the adapters: plain Llama weights, the trained model's logits.
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "hf").eval()
    assert not any("lora" in k for k in merged.state_dict())
    trained = load_model_for_inference(latest_committed(tmp_path / "straight"))
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained(ids), atol=1e-5, rtol=0)


# --- data shapes (no training) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_tokenizer(tmp_path_factory.mktemp("tok"), sentences(200))


def _trained_text(tokenizer: Any, record: dict[str, Any]) -> str:
    ex = tokenize(record, tokenizer, "data.path: x.jsonl:1")
    return str(tokenizer.decode([t for t, lab in zip(ex.ids, ex.labels, strict=True)
                                 if lab != IGNORE_INDEX]))  # fmt: skip


def test_prompt_and_chat_train_only_on_the_answer(tokenizer: Any) -> None:
    record = {"prompt": "who saves? ", "completion": "the trainer saves."}
    assert _trained_text(tokenizer, record) == "the trainer saves.</s>"
    chat = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "who saves?"},
            {"role": "assistant", "content": "the trainer."},
            {"role": "user", "content": "and loads?"},
            {"role": "assistant", "content": "a worker."},
        ]
    }
    trained = _trained_text(tokenizer, chat)
    assert "the trainer." in trained and "a worker." in trained
    assert "who saves" not in trained and "be brief" not in trained and "and loads" not in trained


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "x"}, "needs a string 'text', string 'prompt' and 'completion'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no 'assistant' turn"),
        ({"messages": [{"role": "user"}]}, "messages must be"),
    ],
)
def test_bad_examples_name_the_file_and_line(
    tokenizer: Any, record: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        tokenize(record, tokenizer, "data.path: x.jsonl:7")
    assert err.value.lines[0].startswith("data.path: x.jsonl:7: ")
    assert message in err.value.lines[0]


def test_a_missing_model_directory_is_a_config_error(
    trainers: Launcher, tmp_path: Path, corpus: Path
) -> None:
    job = trainers.launch(lm_config(tmp_path / "nowhere", corpus))
    assert job.wait(60) == [contract.EXIT_CONFIG_ERROR]
    assert "model.path: no Hugging Face model at" in job.log_text()


def test_sequences_pack_examples_or_pad_each_one() -> None:
    from trainforge_trainer.lm_data import Example, sequences

    examples = [Example([1, 2, 3], [1, 2, 3]), Example([4, 5], [IGNORE_INDEX, 5])]
    packed = sequences(examples, 2, packing=True, pad_id=0)
    # Stream 1 2 3 4 5: windows of 2 inputs with their next-token targets, the tail dropped.
    assert packed.inputs.tolist() == [[1, 2], [3, 4]]
    assert packed.targets.tolist() == [[2, 3], [IGNORE_INDEX, 5]]
    padded = sequences(examples, 3, packing=False, pad_id=0)
    assert padded.inputs.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert padded.targets.tolist() == [
        [2, 3, IGNORE_INDEX],
        [5, IGNORE_INDEX, IGNORE_INDEX],
    ]
