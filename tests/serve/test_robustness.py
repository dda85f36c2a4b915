"""Failures the server meets in the field end in a clear answer, never a stall or a 500."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_helpers import INPUT_DIM, MODEL, commit, free_port, infer_body, serving

import trainforge_contract as contract
from trainforge_trainer import checkpoint as ckpt
from trainforge_trainer.serve import model_store

pytestmark = pytest.mark.timeout(120)
INFER = "/v2/models/mlp/infer"


def _deleted_while_loading(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> list[int]:
    """Make the loads of `steps` meet their checkpoint deleted mid-load (keepLast pruning it
    after the server verified it): the real DCP load then fails as it does in the field."""
    real = model_store.load_model_for_inference
    hit: list[int] = []

    def racing(checkpoint: ckpt.CommittedCheckpoint) -> Any:
        if checkpoint.step in steps:
            steps.discard(checkpoint.step)
            hit.append(checkpoint.step)
            for data in checkpoint.path.glob("*.distcp"):
                data.unlink()
        return real(checkpoint)

    monkeypatch.setattr(model_store, "load_model_for_inference", racing)
    return hit


def test_a_checkpoint_deleted_while_loading_is_skipped_and_reload_goes_on(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ckpt"
    x = np.zeros((1, INPUT_DIM), dtype=np.float32)
    hit = _deleted_while_loading(monkeypatch, {2, 4})

    async def scenario() -> None:
        async with serving(root, reload_interval_seconds=0.1) as s:
            # The first load fails: the server retries instead of never becoming ready.
            step2 = commit(trained / "step-00000002", root)
            await asyncio.sleep(0.5)
            assert hit == [2]
            assert (await s.get("/v2/health/ready"))[0] == 503
            assert (await s.get("/v2/health/live"))[0] == 200
            shutil.rmtree(step2)
            commit(trained / "step-00000002", root)  # the same step committed again
            await s.wait_ready(timeout=20)
            # A later load fails the same way: skipped, the served step stays, polls go on.
            step4 = commit(trained / "step-00000004", root)
            await asyncio.sleep(0.6)
            assert hit == [2, 4]
            status, resp = await s.post(INFER, json=infer_body(x))
            assert status == 200 and resp["model_version"] == "2"
            assert await s.metric('trainforge_serve_model_loads_total{result="failed"}') == 2
            assert await s.metric("trainforge_serve_reload_watcher_up") == 1
            assert (await s.get("/v2/health/live"))[0] == 200
            # The trainer's next commit (here step 4's weights under a newer name) loads.
            shutil.rmtree(step4)
            staged = commit(trained / "step-00000004", tmp_path / "staging")
            os.rename(staged, root / "step-00000006")
            deadline = time.monotonic() + 20
            while (await s.get("/v2/models/mlp"))[1]["versions"] != ["4"]:
                assert time.monotonic() < deadline, "the watcher stopped reloading"
                await asyncio.sleep(0.1)
        # The shutdown was clean (no CheckpointException left to re-raise).

    asyncio.run(scenario())


def test_a_dead_watcher_fails_liveness_and_its_metric(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit(trained / "step-00000002", tmp_path)

    class Bug(BaseException):  # not an error a load can meet: a defect in the server
        pass

    def broken(_self: model_store.ModelStore) -> bool:
        raise Bug("watcher bug")

    async def scenario() -> None:
        async with serving(tmp_path, reload_interval_seconds=0.1) as s:
            await s.wait_ready()
            assert (await s.get("/v2/health/live"))[0] == 200
            monkeypatch.setattr(model_store.ModelStore, "check", broken)
            await asyncio.sleep(0.5)
            status, body = await s.get("/v2/health/live")
            assert status == 503 and "the checkpoint watcher stopped" in body["error"]
            assert await s.metric("trainforge_serve_reload_watcher_up") == 0
            s.server._watcher = None  # the defect is reported; let shutdown be clean

    asyncio.run(scenario())


def _raw(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """Send raw bytes; return the status and the JSON error body (it must be JSON)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(request)
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert b"application/json" in head, reply[:400]
    return int(head.split()[1]), json.loads(payload)


def test_malformed_http_and_abusive_json_get_json_4xx_errors(trained: Path, tmp_path: Path) -> None:
    commit(trained / "step-00000004", tmp_path)
    good = infer_body(np.zeros((1, INPUT_DIM), dtype=np.float32))
    nested = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    ragged = infer_body(np.zeros((2, INPUT_DIM), dtype=np.float32))
    ragged["inputs"][0]["data"] = [[0.0] * (INPUT_DIM - 1), [0.0] * (INPUT_DIM + 1)]
    booleans = infer_body(np.zeros((1, INPUT_DIM), dtype=np.float32))
    booleans["inputs"][0]["data"] = [True] * INPUT_DIM
    overflow = infer_body(np.zeros((1, INPUT_DIM), dtype=np.float32))
    overflow["inputs"][0]["data"] = [1e39] * INPUT_DIM

    async def scenario() -> None:
        async with serving(tmp_path) as s:
            await s.wait_ready()
            cases = [
                (await s.post(INFER, data=nested), "malformed JSON: nested too deeply"),
                (await s.post(INFER, json=ragged), "inputs[0].data: ragged nesting"),
                (await s.post(INFER, json=booleans), "must be numbers, not true/false"),
                (await s.post(INFER, json=overflow), "values must be finite FP32 numbers"),
            ]
            raw_good = json.dumps(good).encode()
            for length in ("99999", "-1", "\u00b2"):
                headers = {"Inference-Header-Content-Length": length}
                cases.append(
                    (
                        await s.post(INFER, data=raw_good, headers=headers),
                        "Inference-Header-Content-Length: must be the byte length",
                    )
                )
            for (status, body), want in cases:
                assert status == 400 and want in body["error"], (body, want)
            port = s.server.port
            assert port is not None
            head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\n"
            raw_cases = [
                (head + "X-Big: " + "a" * 20_000 + "\r\n\r\n", "bad HTTP request"),
                (head + "Content-Length: banana\r\n\r\n", "bad HTTP request"),
                (head + "Content-Length: -5\r\n\r\n", "bad HTTP request"),
            ]
            for request, want in raw_cases:
                status, body = await asyncio.to_thread(_raw, port, request.encode())
                assert status == 400 and want in body["error"], body
            assert (await s.post(INFER, json=good))[0] == 200  # unharmed

    asyncio.run(scenario())


def test_an_output_json_cannot_carry_is_a_clear_error_never_bare_nan(
    trained: Path, tmp_path: Path
) -> None:
    commit(trained / "step-00000004", tmp_path)
    # Finite FP32 inputs whose logits overflow to Infinity (and Infinity - Infinity = NaN).
    x = np.full((1, INPUT_DIM), 3e38, dtype=np.float32)

    async def scenario() -> None:
        async with serving(tmp_path) as s:
            await s.wait_ready()
            async with s.http.post(INFER, json=infer_body(x)) as r:
                text = await r.text()
                status = r.status
            body = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
            assert status == 500, body
            assert "non-finite values (NaN or Infinity), which JSON cannot carry" in body["error"]

    asyncio.run(scenario())


def test_a_stalled_upload_times_out_and_neither_slows_others_nor_shutdown(
    trained: Path, tmp_path: Path
) -> None:
    commit(trained / "step-00000004", tmp_path)
    body = json.dumps(infer_body(np.zeros((1, INPUT_DIM), dtype=np.float32))).encode()
    head = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    def stalled(port: int) -> tuple[int, dict[str, Any]]:
        return _raw(port, head + body[:10], timeout=30)

    async def scenario() -> None:
        async with serving(tmp_path, max_batch_delay_ms=300, body_timeout_seconds=2) as s:
            await s.wait_ready()
            port = s.server.port
            assert port is not None
            # One upload stalls: it is answered 408 once its body timeout passes ...
            first = asyncio.ensure_future(asyncio.to_thread(stalled, port))
            await asyncio.sleep(0.5)
            # ... and meanwhile a lone client does not wait the 300 ms batch delay each time.
            latencies = []
            for _ in range(5):
                started = time.perf_counter()
                assert (await s.post(INFER, data=body))[0] == 200
                latencies.append(time.perf_counter() - started)
            assert sorted(latencies)[2] < 0.15, latencies
            status, error = await first
            assert status == 408 and "not received within 2 s" in error["error"]
            # A stall at shutdown delays it by at most the body timeout, not drain + 40 s.
            second = asyncio.ensure_future(asyncio.to_thread(stalled, port))
            await asyncio.sleep(0.3)
            started = time.perf_counter()
            await s.server.shutdown(0)
            assert time.perf_counter() - started < 4
            assert (await second)[0] == 408

    asyncio.run(scenario())


def test_a_users_model_refusing_the_input_shape_is_a_400_for_that_request_only(
    trained_entrypoint: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ckpt"
    commit(trained_entrypoint / "step-00000002", root)
    good = infer_body(np.ones((1, 4), dtype=np.float32))
    wrong = infer_body(np.ones((1, 5), dtype=np.float32))

    async def scenario() -> None:
        async with serving(root, max_batch_delay_ms=50) as s:
            await s.wait_ready()
            replies = await asyncio.gather(
                *(s.post(INFER, json=wrong if i % 3 == 0 else good) for i in range(9))
            )
            for i, (status, body) in enumerate(replies):
                if i % 3 == 0:
                    assert status == 400, body
                    assert "the model refused an input of shape [1, 5]" in body["error"]
                    assert "mat1 and mat2 shapes cannot be multiplied" in body["error"]
                else:
                    assert status == 200 and body["outputs"][0]["shape"] == [1, 2], body

    asyncio.run(scenario())


def _serve_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainforge_trainer", "serve", *args],
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_flags_and_addresses_exit_78_with_one_line(tmp_path: Path) -> None:
    base = ["--checkpoint-dir", str(tmp_path), "--model-name", MODEL]
    unknown = _serve_cli(*base, "--max-batch", "4")
    assert unknown.returncode == contract.EXIT_CONFIG_ERROR
    assert unknown.stderr.startswith(
        "trainforge serve: unrecognized arguments: --max-batch 4; see --help\n"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = _serve_cli(*base, "--host", "127.0.0.1", "--port", str(port))
    assert taken.returncode == contract.EXIT_CONFIG_ERROR, taken.stderr
    lines = [ln for ln in taken.stderr.splitlines() if not ln.startswith("{")]
    assert lines == [
        f"trainforge serve: --host/--port: cannot listen on 127.0.0.1:{port}: "
        "address already in use"
    ], taken.stderr
    bad_host = _serve_cli(*base, "--host", "no-such-host.invalid", "--port", str(free_port()))
    assert bad_host.returncode == contract.EXIT_CONFIG_ERROR, bad_host.stderr
    assert "Traceback" not in bad_host.stderr
    assert "cannot listen on no-such-host.invalid:" in bad_host.stderr
