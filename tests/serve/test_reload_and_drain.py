"""Hot reload under load, and the graceful drain (in process and on a real SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import (
    INPUT_DIM,
    MODEL,
    commit,
    free_port,
    infer_body,
    output_array,
    reference_logits,
    serving,
)

import trainforge_contract as contract

pytestmark = pytest.mark.timeout(120)
INFER = "/v2/models/mlp/infer"


def test_hot_reload_under_concurrent_load_loses_no_request_and_switches_the_step(
    trained: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ckpt"
    commit(trained / "step-00000002", root)
    x = np.random.default_rng(3).standard_normal((2, INPUT_DIM)).astype(np.float32)
    want = {
        "2": reference_logits(trained / "step-00000002", x),
        "4": reference_logits(trained / "step-00000004", x),
    }
    assert not np.allclose(want["2"], want["4"])  # the switch is visible in the answers

    async def scenario() -> None:
        async with serving(root, reload_interval_seconds=0.1, max_batch_delay_ms=2) as s:
            await s.wait_ready()
            answers: list[tuple[int, str, np.ndarray]] = []
            stop = asyncio.Event()

            async def client(worker: int) -> None:
                deadline = time.monotonic() + 30
                while not stop.is_set() and time.monotonic() < deadline:
                    status, resp = await s.post(INFER, json=infer_body(x))
                    assert status == 200, resp
                    answers.append((worker, resp["model_version"], output_array(resp)))

            clients = [asyncio.ensure_future(client(w)) for w in range(8)]
            await asyncio.sleep(0.5)
            before = len(answers)
            await asyncio.to_thread(commit, trained / "step-00000004", root)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if sum(v == "4" for _, v, _ in answers) >= 50:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*clients)  # raises if any request failed

            assert before > 0
            versions = [v for _, v, _ in answers]
            assert {"2", "4"} <= set(versions), versions[-5:]
            # Each client sees the switch once: never the old step after the new one.
            for w in range(8):
                mine = [v for worker, v, _ in answers if worker == w]
                assert mine == sorted(mine, key=int), mine
            # Each answer came from the checkpoint it names.
            for _, version, out in answers:
                np.testing.assert_allclose(out, want[version], rtol=1e-5, atol=1e-5)
            meta = (await s.get("/v2/models/mlp"))[1]
            assert meta["versions"] == ["4"] and meta["parameters"]["step"] == 4
            assert await s.metric("trainforge_serve_model_step") == 4
            assert await s.metric('trainforge_serve_model_loads_total{result="loaded"}') == 2

    asyncio.run(scenario())


def test_a_corrupt_newer_checkpoint_is_skipped_and_the_served_one_stays(
    trained: Path, tmp_path: Path
) -> None:
    commit(trained / "step-00000002", tmp_path)
    x = np.zeros((1, INPUT_DIM), dtype=np.float32)

    async def scenario() -> None:
        async with serving(tmp_path, reload_interval_seconds=0.1) as s:
            await s.wait_ready()
            bad = commit(trained / "step-00000004", tmp_path / "staging")
            data = next(p for p in bad.iterdir() if p.suffix == ".distcp")
            data.write_bytes(b"\0" * data.stat().st_size)  # same size, wrong sha256
            os.rename(bad, tmp_path / bad.name)
            await asyncio.sleep(0.6)
            status, resp = await s.post(INFER, json=infer_body(x))
            assert status == 200 and resp["model_version"] == "2"
            assert (await s.get("/v2/health/ready"))[0] == 200

    asyncio.run(scenario())


def test_drain_fails_readiness_but_keeps_answering_until_it_stops(
    trained: Path, tmp_path: Path
) -> None:
    commit(trained / "step-00000004", tmp_path)
    x = np.zeros((1, INPUT_DIM), dtype=np.float32)

    async def scenario() -> None:
        async with serving(tmp_path) as s:
            await s.wait_ready()
            draining = asyncio.ensure_future(s.server.shutdown(drain_seconds=1.0))
            await asyncio.sleep(0.1)
            status, body = await s.get("/v2/health/ready")
            assert status == 503 and body["error"] == "the server is shutting down"
            assert (await s.get("/v2/models/mlp/ready"))[0] == 503
            assert (await s.get("/v2/health/live"))[0] == 200
            assert (await s.post(INFER, json=infer_body(x)))[0] == 200
            await asyncio.wait_for(draining, 10)

    asyncio.run(scenario())


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited early"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if c.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def test_sigterm_finishes_in_flight_requests_then_exits_zero(trained: Path, tmp_path: Path) -> None:
    step4 = commit(trained / "step-00000004", tmp_path)
    port = free_port()
    env = os.environ | {
        contract.ENV_CHECKPOINT_DIR: str(tmp_path),
        contract.ENV_SERVE_MODEL_NAME: MODEL,
        contract.ENV_SERVE_HOST: "127.0.0.1",
        contract.ENV_SERVE_PORT: str(port),
        contract.ENV_SERVE_DRAIN_SECONDS: "0",
    }
    # The real entry point, configured the way the operator does it: by env.
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainforge_trainer", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(port, proc)
        x = np.random.default_rng(4).standard_normal((4, INPUT_DIM)).astype(np.float32)
        body = json.dumps(infer_body(x)).encode()
        head = (
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        # A request in flight at SIGTERM: headers and half the body sent, the rest after.
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
            c.sendall(head + body[: len(body) // 2])
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            # No new connections once draining stopped the listener.
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            c.sendall(body[len(body) // 2 :])
            reply = b""
            while chunk := c.recv(65536):
                reply += chunk
        status_line, _, payload = reply.partition(b"\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 200"), reply[:300]
        out = output_array(json.loads(payload))
        np.testing.assert_allclose(out, reference_logits(step4, x), rtol=1e-5, atol=1e-5)
        assert proc.wait(timeout=30) == 0
        events = [json.loads(line)["event"] for line in proc.stderr or [] if line.startswith(b"{")]
        assert events[-3:] == ["signal", "draining", "stopped"], events
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
