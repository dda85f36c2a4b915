"""The OpenAI-compatible endpoints, called with the official `openai` client against a
causal-lm checkpoint the real trainer wrote (a tiny Llama made locally)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from serve_helpers import commit, serving

from lm_fixtures import lm_config, make_model_dir, sentences, write_jsonl
from trainforge_trainer import checkpoint as ckpt
from trainforge_trainer.causal_lm import load_tokenizer
from trainforge_trainer.serve import model_store
from trainforge_trainer.serve.app import InferenceServer

pytestmark = pytest.mark.timeout(300)
MODEL = "mlp"  # serve_helpers' model name


@pytest.fixture(scope="module")
def lm_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A causal-lm run fine-tuned on chat data: the assistant always answers with a sentence."""
    work = tmp_path_factory.mktemp("lm")
    base = make_model_dir(work / "base", hidden=64)
    chats = [
        {"messages": [{"role": "user", "content": "say it"}, {"role": "assistant", "content": s}]}
        for s in sentences(300)
    ]
    data = write_jsonl(work / "chat.jsonl", chats)
    cfg = lm_config(
        base,
        data,
        maxSteps=150,
        batchSize=8,
        data={"seqLen": 32},
        checkpoint={"everySteps": 75, "keepLast": 2},
    )
    import os
    import subprocess
    import sys

    env = os.environ | {
        "TRAINFORGE_CONFIG": json.dumps(cfg),
        "TRAINFORGE_CHECKPOINT_DIR": str(work / "ckpt"),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "trainforge_trainer", "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "ckpt"


@pytest.fixture(scope="module")
def server(lm_checkpoints: Path) -> Iterator[InferenceServer]:
    """The server on its own event loop thread (the openai client is synchronous)."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    stop = threading.Event()

    async def run() -> None:
        async with serving(lm_checkpoints, max_batch_size=8) as s:
            await s.wait_ready(60)
            started["server"] = s.server
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    ready = threading.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    assert ready.wait(120), "the server did not start"
    yield started["server"]
    stop.set()
    thread.join(30)


@pytest.fixture
def client(server: InferenceServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused")


def test_chat_completion_answers_with_what_it_learned(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "say it"}],
        max_tokens=20,
        temperature=0,
    )
    text = reply.choices[0].message.content or ""
    assert reply.choices[0].finish_reason == "stop", text
    # The corpus' grammar: subject verb object.
    assert any(text.startswith(s) for s in ("the ", "a ", "every ")), text
    assert text.rstrip().endswith("."), text
    assert reply.usage is not None and reply.usage.completion_tokens > 2
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_gives_the_same_text_as_not_streaming(client: openai.OpenAI) -> None:
    args: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "say it"}],
        "max_tokens": 12,
        "temperature": 0.8,
        "seed": 42,
    }
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1, "not streamed"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # Completions stream too.
    parts = list(
        client.completions.create(
            model=MODEL, prompt="the trainer", max_tokens=8, stream=True, temperature=0
        )
    )
    assert "".join(p.choices[0].text for p in parts).strip()


def test_max_tokens_stop_seed_and_greedy(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="the", max_tokens=3, temperature=0)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 3
    # Stop sequences end the text before them.
    full = client.completions.create(model=MODEL, prompt="the", max_tokens=30, temperature=0)
    text = full.choices[0].text
    word = text.split()[1]
    stopped = client.completions.create(
        model=MODEL, prompt="the", max_tokens=30, temperature=0, stop=[word]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(word)]
    # The same seed gives the same sample; a different one (at temperature 1.5) another.
    samples = [
        client.completions.create(
            model=MODEL, prompt="the", max_tokens=16, temperature=1.5, seed=seed
        )
        .choices[0]
        .text
        for seed in (1, 1, 2, 3)
    ]
    assert samples[0] == samples[1] and len(set(samples)) > 1
    # top_p 0 keeps only the likeliest token: greedy, whatever the temperature.
    nucleus = client.completions.create(
        model=MODEL, prompt="the", max_tokens=8, temperature=1.5, top_p=0, seed=4
    )
    greedy = client.completions.create(model=MODEL, prompt="the", max_tokens=8, temperature=0)
    assert nucleus.choices[0].text == greedy.choices[0].text


def test_concurrent_requests_share_decode_steps(server: InferenceServer) -> None:
    """Requests of different lengths, arriving together, are decoded in shared steps (their
    KV caches padded to one length) and get exactly the text each gets alone."""
    prompts = ["the", "the trainer", "a worker saves the", "every pod", "the model"] * 2

    async def scenario() -> tuple[list[str], list[str], int]:
        aclient = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused"
        )

        async def complete(prompt: str) -> str:
            reply = await aclient.completions.create(
                model=MODEL, prompt=prompt, max_tokens=10, temperature=0
            )
            return reply.choices[0].text

        alone = [await complete(p) for p in prompts]
        before = server.openai.generator.steps
        together = await asyncio.gather(*(complete(p) for p in prompts))
        steps = server.openai.generator.steps - before
        await aclient.close()
        return alone, list(together), steps

    alone, together, steps = asyncio.run(scenario())
    assert together == alone, "batched decoding changed a greedy answer"
    assert steps < len(prompts) * 10 / 2, f"{steps} decode steps for 10 x 10 tokens: not batched"


def test_bad_requests_get_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4", prompt="x")
    assert missing.value.code == "model_not_found"
    bad: list[dict[str, Any]] = [
        {"prompt": "x", "temperature": 3},
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "max_tokens": 100_000},
        {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
        {"prompt": 5},
        {"prompt": "x", "n": 2},
    ]
    for extra in bad:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=MODEL, **extra)
        assert err.value.status_code == 400
        assert isinstance(err.value.body, dict) and err.value.body.get("message"), extra
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])


def test_generation_matches_the_checkpoint_run_directly(
    client: openai.OpenAI, lm_checkpoints: Path
) -> None:
    found = ckpt.latest_committed(lm_checkpoints)
    assert found is not None
    model = model_store.load_model_for_inference(found)
    tokenizer = load_tokenizer(found.manifest["config"]["model"]["path"])
    ids = tokenizer("the trainer")["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    expected = tokenizer.decode(ids[-6:], skip_special_tokens=True)
    got = client.completions.create(model=MODEL, prompt="the trainer", max_tokens=6, temperature=0)
    assert got.choices[0].text == expected


def test_hot_reload_and_drain_apply_to_generation(lm_checkpoints: Path, tmp_path: Path) -> None:
    """A newer checkpoint is picked up without a restart; a stream in flight at shutdown is
    answered to its end."""
    root = tmp_path / "served"
    commit(lm_checkpoints / "step-00000075", root)

    async def scenario() -> None:
        async with serving(root) as s:
            await s.wait_ready(60)
            assert (await s.get("/v1/models"))[1]["data"][0]["step"] == 75
            commit(lm_checkpoints / "step-00000150", root)
            deadline = time.monotonic() + 60
            while (await s.get("/v1/models"))[1]["data"][0]["step"] != 150:
                assert time.monotonic() < deadline, "the newer checkpoint was not loaded"
                await asyncio.sleep(0.1)

            body = {"model": MODEL, "prompt": "the", "max_tokens": 40, "stream": True}
            async with s.http.post("/v1/completions", json=body) as r:
                first = await r.content.readline()
                assert first.startswith(b"data: ")
                shutdown = asyncio.create_task(s.server.shutdown(0))
                rest = (await r.read()).decode()
            await shutdown
            events = [line[6:] for line in rest.splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            finish = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]]
            assert finish[-1] in ("stop", "length")

    asyncio.run(scenario())
