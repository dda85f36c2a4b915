"""`make demo`: train, serve and query a model on this machine, no cluster needed.

1. `trainforge local run examples/trainingjob-cpu.yaml`: 2 workers x 2 processes train the
   byte-level GPT recipe, checkpointing to .demo/gpt-cpu/checkpoints.
2. `python -m trainforge_trainer serve` loads the newest committed checkpoint (the same server
   an InferenceService runs) on 127.0.0.1.
3. Prompts go to its Open Inference Protocol V2 endpoint; each answer is generated greedily,
   one byte per /infer request, and printed. The server is stopped (SIGTERM) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "trainingjob-cpu.yaml"
MODEL = "gpt-cpu"
PROMPTS = ("The model ", "Then the ", "So we ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


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


def generate(base: str, prompt: str, length: int, context: int) -> str:
    """Greedy decoding: append the most likely next byte, `length` times (one /infer request
    each), so the same checkpoint always prints the same answer."""
    tokens = list(prompt.encode())
    for _ in range(length):
        window = tokens[-context:]
        answer = call(
            f"{base}/v2/models/{MODEL}/infer",
            {
                "inputs": [
                    {
                        "name": "tokens",
                        "shape": [1, len(window)],
                        "datatype": "INT64",
                        "data": window,
                    }
                ]
            },
        )
        logits = answer["outputs"][0]["data"]
        vocab = answer["outputs"][0]["shape"][-1]
        last = logits[-vocab:]
        tokens.append(max(range(vocab), key=last.__getitem__))
    return bytes(tokens).decode(errors="replace")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".demo" / MODEL)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="serve the existing checkpoints instead of training again",
    )
    parser.add_argument("--length", type=int, default=48, help="bytes to generate per prompt")
    args = parser.parse_args()

    checkpoints = args.workdir / "checkpoints"
    if not (args.reuse and (checkpoints / "latest").exists()):
        print(f"==> training {EXAMPLE.relative_to(REPO)} locally", flush=True)
        trained = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainforge.cli",
                "local",
                "run",
                str(EXAMPLE),
                f"--workdir={args.workdir}",
            ]
        )
        if trained.returncode != 0:
            return trained.returncode

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TRAINFORGE_CHECKPOINT_DIR": str(checkpoints),
        "TRAINFORGE_SERVE_MODEL_NAME": MODEL,
        "TRAINFORGE_SERVE_HOST": "127.0.0.1",
        "TRAINFORGE_SERVE_PORT": str(port),
    }
    print(f"==> serving {checkpoints} on {base}", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "trainforge_trainer", "serve"], env=env)
    try:
        wait_ready(base, server)
        metadata = call(f"{base}/v2/models/{MODEL}")
        context = metadata["inputs"][0]["shape"][-1]
        context = context if context > 0 else 64
        print(
            f"==> model {metadata['name']} version {metadata['versions']}: "
            f"{json.dumps(metadata['inputs'])}",
            flush=True,
        )
        for prompt in PROMPTS:
            answer = generate(base, prompt, args.length, context)
            print(f"  {prompt!r:14} -> {answer!r}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
