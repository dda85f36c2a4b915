"""`make gpu-check`: the causal-lm recipe on a real NVIDIA GPU (never part of `make test`).

1. Builds a Llama-architecture model of about 300M parameters from a config (random weights,
   no downloads) and a tokenizer trained on a synthetic corpus, saved with save_pretrained.
2. Fine-tunes it in bf16 with FSDP2 (one process), activation checkpointing on, and reports
   tokens/s and MFU from the trainer's own progress events.
3. Stop + resume on CUDA: a run stopped by SIGTERM and resumed must end with the same
   weights, optimizer state and RNG as an uninterrupted one (compared bit for bit).
4. If vLLM is importable: serves the export (checkpoints/hf) with vLLM's OpenAI server and
   checks a chat completion through the official openai client.

Exit 0 when every check passed, 1 when one failed, 2 when there is no GPU. `--tiny` runs
the same steps with a tiny model on whatever device there is (a check of this script).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from chat_tokenizer import save_chat_tokenizer

REPO = Path(__file__).resolve().parent.parent
_TEXT = (
    "the model trainer gradient checkpoint cluster worker node pod rank batch step loss "
    "tensor layer weight signal learns saves resumes shards reduces waits quickly slowly "
    "again never always before after while because and but or so then"
)
WORDS = _TEXT.split(" ")


def corpus(n: int) -> list[str]:
    rng = random.Random(0)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))).capitalize() + "."
        for _ in range(n)
    ]


def make_model(out: Path, tiny: bool) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"]
    tokenizer = save_chat_tokenizer(out, corpus(2000), 2000, specials)
    size = (
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
        if tiny
        else {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24}
    )
    config = LlamaConfig(
        vocab_size=32_000,  # a real model's vocabulary size: the LM head's FLOPs count
        num_attention_heads=4 if tiny else 16,
        num_key_value_heads=4 if tiny else 16,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
        **size,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def trainer_config(base: Path, data: Path, tiny: bool, steps: int) -> dict[str, Any]:
    return {
        "recipe": "causal-lm",
        "maxSteps": steps,
        "batchSize": 2 if tiny else 8,
        "lr": 3e-4,
        "warmupSteps": 5,
        "logEverySteps": 5,
        "precision": "bf16",
        "strategy": "fsdp",
        "seed": 1,
        "model": {"path": str(base), "activationCheckpointing": True},
        "data": {"path": str(data), "seqLen": 64 if tiny else 1024, "valFraction": 0.0},
        "checkpoint": {"everySteps": 10},
        "export": {"dtype": "bf16"},
    }


def start_trainer(cfg: dict[str, Any], ckpt: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TRAINFORGE_CONFIG": json.dumps(cfg),
        "TRAINFORGE_CHECKPOINT_DIR": str(ckpt),
        # cuBLAS picks reproducible kernels only with a fixed workspace.
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    }
    out = open(log, "w")  # noqa: SIM115  (the child writes it; closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "trainforge_trainer", "train"], env=env, stdout=out, stderr=out
    )


def events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]


def wait_for_step(log: Path, proc: subprocess.Popen[bytes], step: int) -> None:
    while proc.poll() is None:
        if any(e["event"] == "progress" and e["step"] >= step for e in events(log)):
            return
        time.sleep(0.2)


def same_checkpoints(a: Path, b: Path, scratch: Path) -> tuple[bool, str]:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    loaded = []
    for i, d in enumerate((a, b)):
        dcp_to_torch_save(d, scratch / f"{i}.pt")
        loaded.append(torch.load(scratch / f"{i}.pt", weights_only=False))

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(tree, torch.Tensor):
            return {prefix: tree}
        if isinstance(tree, dict):
            return {
                k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}.{key}").items()
            }
        return {}

    ta, tb = flat(loaded[0]), flat(loaded[1])
    if ta.keys() != tb.keys():
        return False, "different tensors"
    worst = max(((ta[k].float() - tb[k].float()).abs().max().item(), k) for k in ta)
    if worst[0] == 0 and all(torch.equal(ta[k], tb[k]) for k in ta):
        return True, f"{len(ta)} tensors bit for bit equal"
    return False, f"largest difference {worst[0]:.3g} in {worst[1]}"


def check_vllm(export: Path, work: Path) -> tuple[bool, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "vllm.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(export),
            "--served-model-name",
            "check",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "1024",
        ],
        stdout=log,
        stderr=log,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return False, f"vLLM exited ({server.returncode}); see {work / 'vllm.log'}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(2)
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="check",
            messages=[{"role": "user", "content": "the model"}],
            max_tokens=16,
            temperature=0,
        )
        text = reply.choices[0].message.content
        ok = reply.usage is not None and reply.usage.completion_tokens > 0
        return ok, f"chat completion: {text!r}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model, any device")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print(
            "gpu-check: no NVIDIA GPU here (torch.cuda.is_available() is False); run it on a "
            "GPU machine (or `python hack/gpu_check.py --tiny` to check the script on CPU)",
            file=sys.stderr,
        )
        return 2
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="trainforge-gpu-check-"))
    results: list[tuple[str, bool, str]] = []
    try:
        params = make_model(work / "base", args.tiny)
        data = work / "train.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(20_000)))
        cfg = trainer_config(work / "base", data, args.tiny, args.steps)
        print(f"gpu-check on {device}: {params / 1e6:.0f}M parameters, bf16, FSDP2", flush=True)

        straight = start_trainer(cfg, work / "straight", work / "straight.log")
        straight.wait()
        progress = [e for e in events(work / "straight.log") if e["event"] == "progress"]
        ok = straight.returncode == 0 and bool(progress)
        # The first interval includes compilation and allocator warm-up.
        steady = progress[1:] or progress
        tps = sum(e.get("tokensPerSecond", 0) for e in steady) / max(1, len(steady))
        mfu = [e["mfu"] for e in steady if "mfu" in e]
        summary = f"{tps:,.0f} tokens/s"
        summary += f", MFU {sum(mfu) / len(mfu):.1%}" if mfu else ", MFU unknown for this device"
        losses = [e["loss"] for e in progress]
        if losses:
            summary += f", loss {losses[0]:.2f} -> {losses[-1]:.2f}"
        results.append(("train bf16 FSDP2", ok, summary))

        stopped = start_trainer(cfg, work / "stopped", work / "stopped.log")
        wait_for_step(work / "stopped.log", stopped, args.steps // 3)
        stopped.send_signal(signal.SIGTERM)
        stopped.wait()
        resumed = start_trainer(cfg, work / "stopped", work / "resumed.log")
        resumed.wait()
        final = f"step-{args.steps:08d}"
        stop_step = next(
            (e["step"] for e in events(work / "stopped.log") if e["event"] == "preempted"), None
        )
        if stop_step is None:
            # The run ended before SIGTERM reached it: nothing was resumed, so nothing is shown.
            results.append(("stop + resume", False, "finished before the stop; raise --steps"))
        elif resumed.returncode == 0 and (work / "stopped" / final).is_dir():
            same, detail = same_checkpoints(
                work / "straight" / final, work / "stopped" / final, work
            )
            results.append((f"stop at step {stop_step} + resume", same, detail))
        else:
            results.append(("stop + resume", False, f"see {work}/resumed.log"))

        export = work / "straight" / "hf"
        if importlib.util.find_spec("vllm") is None:
            results.append(("vLLM serves the export", True, "skipped: vllm is not installed"))
        else:
            ok, detail = check_vllm(export, work)
            results.append(("vLLM serves the export", ok, detail))
    finally:
        for name, ok, detail in results:
            print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        if args.keep or not all(ok for _, ok, _ in results):
            print(f"  work directory kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
