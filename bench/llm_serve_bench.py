"""Benchmark of LLM serving: generated tokens/s through the OpenAI endpoints, batched vs not.

    .venv/bin/python bench/llm_serve_bench.py [--seconds 8] [--max-tokens 32]

Builds `make demo`'s small Llama (about 3M parameters; random weights after one training
step, so generations rarely stop early at EOS), commits a checkpoint with the real trainer,
then serves it with the bundled server twice, both on 127.0.0.1, measured in turn for each
concurrency:

  - decode batching on  (--max-batch-size 32: every active request shares each decode step)
  - decode batching off (--max-batch-size 1: one sequence per forward, requests take turns)

A closed-loop load generator keeps N requests in flight (POST /v1/completions, a 5-token
prompt, max_tokens tokens, temperature 0) for a fixed time and reports generated tokens/s
(from the usage counts) and p50 request latency. Prints a Markdown table for bench/REPORT.md.
Not a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))
from demo import make_base_model, trainer_config, write_corpus  # noqa: E402

CONCURRENCY = (1, 8, 32)
MODEL = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(checkpoints: Path, max_batch: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "TRAINFORGE_CHECKPOINT_DIR": str(checkpoints),
        "TRAINFORGE_SERVE_MODEL_NAME": MODEL,
        "TRAINFORGE_SERVE_HOST": "127.0.0.1",
        "TRAINFORGE_SERVE_PORT": str(port),
        "TRAINFORGE_SERVE_MAX_BATCH_SIZE": str(max_batch),
        "TRAINFORGE_SERVE_DRAIN_SECONDS": "0",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "trainforge_trainer", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit("the server did not become ready")


async def load(url: str, concurrency: int, seconds: float, max_tokens: int) -> tuple[float, float]:
    """Generated tokens/s and p50 latency (s) with `concurrency` requests in flight."""
    body = {
        "model": MODEL,
        "prompt": "What is trainforge",
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    tokens = 0
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as http:
        # One request first: the first forward warms up the allocator.
        async with http.post("/v1/completions", json=body) as r:
            await r.read()
        start = time.perf_counter()
        stop_at = start + seconds

        async def client() -> None:
            nonlocal tokens
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                async with http.post("/v1/completions", json=body) as r:
                    answer = await r.json()
                latencies.append(time.perf_counter() - t)
                tokens += answer["usage"]["completion_tokens"]

        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return tokens / elapsed, statistics.median(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trainforge-llm-bench-"))
    base, data, checkpoints = work / "base", work / "chat.jsonl", work / "ckpt"
    make_base_model(base)
    write_corpus(data)
    config = work / "trainer.json"
    config.write_text(json.dumps({**trainer_config(base, data, 1), "lr": 1e-6, "warmupSteps": 0}))
    trained = subprocess.run(
        [sys.executable, "-m", "trainforge_trainer", "train", "--config", str(config)],
        env={**os.environ, "TRAINFORGE_CHECKPOINT_DIR": str(checkpoints)},
        capture_output=True,
        text=True,
    )
    if trained.returncode != 0:
        print(trained.stderr[-3000:], file=sys.stderr)
        return 1

    rows: dict[tuple[str, int], tuple[float, float]] = {}
    labels = {"batched (max batch 32)": 32, "unbatched (max batch 1)": 1}
    # Both servers up at once (an idle one costs nothing) and measured in turn for each
    # concurrency, so a change in the machine's load hits both alike.
    servers = {label: start_server(checkpoints, size) for label, size in labels.items()}
    try:
        for n in CONCURRENCY:
            for label, (_, url) in servers.items():
                rows[label, n] = asyncio.run(load(url, n, args.seconds, args.max_tokens))
                tps, p50 = rows[label, n]
                print(f"{label:26} concurrency {n:2}: {tps:8.1f} tokens/s  p50 {p50:.2f} s")
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(30)

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"prompt 5 tokens, max_tokens {args.max_tokens}, greedy; {args.seconds:g} s per cell\n"
    )
    print("| server | " + " | ".join(f"c={n} tokens/s (p50 s)" for n in CONCURRENCY) + " |")
    print("|---|" + "---|" * len(CONCURRENCY))
    for label in ("batched (max batch 32)", "unbatched (max batch 1)"):
        cells = [f"{rows[label, n][0]:.0f} ({rows[label, n][1]:.2f})" for n in CONCURRENCY]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
