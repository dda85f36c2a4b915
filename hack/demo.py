"""`make demo`: fine-tune a causal LM, serve it with OpenAI-compatible endpoints, chat with it.

Everything runs on this machine, no cluster and no downloads:

1. A base model directory like the ones a platform team stages onto a PVC: a small
   Llama-architecture model (random weights, built from a config) and a BPE tokenizer trained
   on the corpus, both written with save_pretrained. With a real model you skip this step
   and point model.path at it.
2. The causal-lm recipe fine-tunes it on a chat dataset (JSONL `messages`: questions about
   trainforge and their answers; loss on the answers only), checkpointing as in a cluster,
   and exports a Hugging Face directory (checkpoints/hf).
3. `python -m trainforge_trainer serve` (what an InferenceService runs) loads the newest
   checkpoint; the demo asks it questions through POST /v1/chat/completions, streams one
   answer over server-sent events, and stops the server (SIGTERM, graceful drain).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from chat_tokenizer import save_chat_tokenizer

REPO = Path(__file__).resolve().parent.parent
MODEL = "trainforge-assistant"

# The corpus: what the assistant should learn to answer.
FACTS = [
    ("What is trainforge?", "A Kubernetes operator for training and serving models on GPUs."),
    ("What does a TrainingJob run?", "A gang of worker pods running the distributed trainer."),
    ("What happens when a worker fails?", "The whole gang restarts from the last checkpoint."),
    ("Where do checkpoints go?", "To a persistent volume, one step directory at a time."),
    ("How is a checkpoint committed?", "Written to a temporary directory, then renamed."),
    ("What does SIGTERM do to the trainer?", "It saves a checkpoint and exits cleanly."),
    ("What does an InferenceService create?", "A Deployment and a Service for the server."),
    ("Which protocols does the server speak?", "Open Inference Protocol and OpenAI chat."),
    ("What is FSDP?", "Fully sharded data parallel: each rank holds a shard of the weights."),
    ("What is LoRA?", "Small low-rank adapters trained instead of all the weights."),
    ("How does the server batch requests?", "Concurrent requests share every decode step."),
    ("What does hot reload mean?", "The server loads a newer checkpoint without a restart."),
    ("How do I serve with vLLM?", "Set spec.server.runtime to vllm and give a vLLM image."),
    ("What is the export?", "A Hugging Face directory with safetensors and the tokenizer."),
    ("Can a job resume exactly?", "Yes, the data position and every RNG are checkpointed."),
    ("What does MFU measure?", "Model FLOPs utilisation: achieved FLOPs over the peak."),
]
ASK = [FACTS[0][0], FACTS[2][0], FACTS[9][0]]
STREAM = FACTS[12][0]


def write_corpus(path: Path) -> None:
    rng = random.Random(0)
    lines = []
    for _ in range(12):  # each fact many times, in shuffled order
        facts = FACTS[:]
        rng.shuffle(facts)
        for question, answer in facts:
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            lines.append(json.dumps({"messages": messages}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def make_base_model(out: Path) -> None:
    """A small Llama (about 3M parameters) and a tokenizer trained on the corpus."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    tokenizer = save_chat_tokenizer(out, [f"{q} {a}" for q, a in FACTS] * 4, 700, specials)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)


def trainer_config(base: Path, data: Path, steps: int) -> dict[str, Any]:
    return {
        "recipe": "causal-lm",
        "maxSteps": steps,
        "batchSize": 8,
        "lr": 2e-3,
        "warmupSteps": 10,
        "minLrRatio": 0.05,
        "logEverySteps": 25,
        "model": {"path": str(base)},
        "data": {"path": str(data), "seqLen": 64, "valFraction": 0.0},
        "checkpoint": {"everySteps": 100, "keepLast": 2},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def stream(url: str, body: dict[str, Any]) -> None:
    """Print the answer as its server-sent events arrive."""
    request = urllib.request.Request(
        url,
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                print(choice["delta"].get("content") or "", end="", flush=True)
    print(flush=True)


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise SystemExit(f"the server was not ready after {timeout:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".demo" / "llm")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    parser.add_argument(
        "--reuse", action="store_true", help="serve the existing checkpoints, do not train"
    )
    args = parser.parse_args()
    work = args.workdir.resolve()
    base, data, checkpoints = work / "models" / "base", work / "data" / "chat.jsonl", work / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}

    if not (args.reuse and (checkpoints / "latest").exists()):
        print(f"==> 1/3 base model and corpus in {work}", flush=True)
        if not (base / "config.json").exists():
            make_base_model(base)
        write_corpus(data)
        config = work / "trainer.json"
        config.write_text(json.dumps(trainer_config(base, data, args.steps), indent=1))
        print(f"==> 2/3 fine-tuning (causal-lm recipe, {args.steps} steps)", flush=True)
        started = time.monotonic()
        trained = subprocess.run(
            [sys.executable, "-m", "trainforge_trainer", "train", "--config", str(config)],
            env={**env, "TRAINFORGE_CHECKPOINT_DIR": str(checkpoints)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in trained.stdout.splitlines():
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "progress":
                print(
                    f"   step {event['step']:4d}  loss {event['loss']:.3f}  "
                    f"{event.get('tokensPerSecond', 0):.0f} tokens/s",
                    flush=True,
                )
            elif event.get("event") == "exported":
                print(f"   exported a Hugging Face directory: {event['path']}", flush=True)
        if trained.returncode != 0:
            print(trained.stdout[-3000:], file=sys.stderr)
            return trained.returncode
        print(f"   trained in {time.monotonic() - started:.0f} s", flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"==> 3/3 serving {checkpoints} on {url} (OpenAI-compatible)", flush=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "trainforge_trainer", "serve"],
        env={
            **env,
            "TRAINFORGE_CHECKPOINT_DIR": str(checkpoints),
            "TRAINFORGE_SERVE_MODEL_NAME": MODEL,
            "TRAINFORGE_SERVE_HOST": "127.0.0.1",
            "TRAINFORGE_SERVE_PORT": str(port),
            "TRAINFORGE_SERVE_DRAIN_SECONDS": "0",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(url, server)
        for question in ASK:
            reply = post(
                f"{url}/v1/chat/completions",
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 40,
                    "temperature": 0,
                },
            )
            answer = reply["choices"][0]["message"]["content"]
            print(f"   user: {question}\n   assistant: {answer}", flush=True)
        print(f"   user: {STREAM}\n   assistant (streamed): ", end="", flush=True)
        stream(
            f"{url}/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": STREAM}],
                "max_tokens": 40,
                "temperature": 0,
            },
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(
        f"""
Next:
  - the same with your model and data: docs/trainer.md ("Fine-tune a Hugging Face model and
    serve it"): stage the model on a PVC, kubectl apply -f examples/trainingjob-llm.yaml
  - serve it: kubectl apply -f examples/inferenceservice-llm.yaml (bundled server) or
    examples/inferenceservice-vllm.yaml (vLLM on a GPU); docs/serving.md
  - the export ({checkpoints / "hf"}) loads as it is:
      AutoModelForCausalLM.from_pretrained("{checkpoints / "hf"}")
  - any committed checkpoint exports with
      python -m trainforge_trainer export --checkpoint {checkpoints} --out DIR""",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
