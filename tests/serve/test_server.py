"""The server over real HTTP on 127.0.0.1, serving checkpoints the real trainer wrote."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from serve_helpers import (
    INPUT_DIM,
    NUM_CLASSES,
    commit,
    infer_body,
    output_array,
    reference_logits,
    serving,
)

from trainforge_trainer import checkpoint as ckpt
from trainforge_trainer.serve.model_store import load, quantize_int8

pytestmark = pytest.mark.timeout(120)
INFER = "/v2/models/mlp/infer"


def requests_total(code: int) -> str:
    return f'trainforge_serve_requests_total{{code="{code}",route="/v2/models/{{name}}/infer"}}'


def test_every_endpoint_answers_per_the_open_inference_protocol(
    trained: Path, tmp_path: Path
) -> None:
    step4 = commit(trained / "step-00000004", tmp_path)
    x = np.random.default_rng(0).standard_normal((3, INPUT_DIM)).astype(np.float32)

    async def scenario() -> None:
        async with serving(tmp_path) as s:
            await s.wait_ready()
            assert await s.get("/v2/health/live") == (200, {"live": True})
            assert await s.get("/v2/health/ready") == (200, {"ready": True})
            status, server_meta = await s.get("/v2")
            assert status == 200 and server_meta["name"] == "trainforge"
            assert set(server_meta) == {"name", "version", "extensions"}
            status, meta = await s.get("/v2/models/mlp")
            assert status == 200
            assert meta["name"] == "mlp" and meta["versions"] == ["4"]
            assert meta["inputs"] == [
                {"name": "input", "datatype": "FP32", "shape": [-1, INPUT_DIM]}
            ]
            assert meta["outputs"] == [
                {"name": "logits", "datatype": "FP32", "shape": [-1, NUM_CLASSES]}
            ]
            assert meta["parameters"]["step"] == 4
            assert meta["parameters"]["checkpoint"] == str(step4)
            assert await s.get("/v2/models/mlp/ready") == (
                200,
                {"name": "mlp", "ready": True, "version": "4"},
            )
            status, resp = await s.post(INFER, json=infer_body(x, "req-1"))
            assert status == 200
            assert resp["model_name"] == "mlp" and resp["model_version"] == "4"
            assert resp["id"] == "req-1"
            assert resp["outputs"][0]["name"] == "logits"
            assert resp["outputs"][0]["datatype"] == "FP32"
            np.testing.assert_allclose(
                output_array(resp), reference_logits(step4, x), rtol=1e-5, atol=1e-6
            )
            # The versioned routes of the protocol, for the served version only.
            assert (await s.get("/v2/models/mlp/versions/4"))[0] == 200
            assert (await s.get("/v2/models/mlp/versions/4/ready"))[0] == 200
            assert (await s.post("/v2/models/mlp/versions/4/infer", json=infer_body(x)))[0] == 200
            status, err = await s.get("/v2/models/mlp/versions/3")
            assert status == 404 and "unknown version '3'" in err["error"]
            assert await s.metric("trainforge_serve_model_step") == 4
            assert await s.metric(requests_total(200)) == 1
            assert await s.metric("trainforge_serve_batch_size_count") >= 2
            assert await s.metric("trainforge_serve_request_duration_seconds_count") == 2
            assert await s.metric("trainforge_serve_queue_duration_seconds_count") == 2

    asyncio.run(scenario())


def test_every_bad_request_class_is_a_4xx_json_error_never_a_500(
    trained: Path, tmp_path: Path
) -> None:
    commit(trained / "step-00000004", tmp_path)
    good = infer_body(np.zeros((1, INPUT_DIM), dtype=np.float32))
    wrong_shape = infer_body(np.zeros((1, INPUT_DIM + 1), dtype=np.float32))
    wrong_dtype = {"inputs": [dict(good["inputs"][0], datatype="INT32")]}
    too_big = infer_body(np.zeros((200, INPUT_DIM), dtype=np.float32))

    async def scenario() -> None:
        async with serving(tmp_path, max_request_bytes=4096) as s:
            await s.wait_ready()
            cases = [
                (await s.post(INFER, json=wrong_shape), 400, "model expects [-1, 8]"),
                (await s.post(INFER, json=wrong_dtype), 400, "model expects FP32 (got 'INT32')"),
                (await s.post("/v2/models/other/infer", json=good), 404, "unknown model 'other'"),
                (await s.get("/v2/models/other"), 404, "unknown model 'other'"),
                (await s.get("/v2/models/other/ready"), 404, "unknown model 'other'"),
                (await s.post(INFER, data=b'{"inputs": [}'), 400, "malformed JSON"),
                (await s.post(INFER, data=b"\xff\xfe"), 400, "malformed JSON"),
                (await s.post(INFER, json=too_big), 413, "request body too large: the limit"),
                (await s.post(INFER, json={"inputs": "x"}), 400, "inputs: must be a list"),
                (await s.get(INFER), 405, "Method Not Allowed"),
                (await s.get("/v2/nothing"), 404, "Not Found"),
            ]
            for (status, body), want_status, want_text in cases:
                assert status == want_status, (body, want_text)
                assert want_text in body["error"], (body, want_text)
            # The server is unharmed.
            assert (await s.post(INFER, json=good))[0] == 200
            too_large = (
                'trainforge_serve_requests_total{code="413",route="/v2/models/{name}/infer"}'
            )
            assert await s.metric(too_large) == 1

    asyncio.run(scenario())


def test_not_ready_until_a_committed_checkpoint_is_loaded(trained: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as s:
            assert (await s.get("/v2/health/live"))[0] == 200
            status, body = await s.get("/v2/health/ready")
            assert status == 503 and "waiting for a committed checkpoint" in body["error"]
            assert (await s.get("/v2/models/mlp/ready"))[0] == 503
            x = np.zeros((1, INPUT_DIM), dtype=np.float32)
            status, body = await s.post(INFER, json=infer_body(x))
            assert status == 503 and "not loaded yet" in body["error"]
            # A save in progress is never loaded.
            (tmp_path / ".tmp-step-00000009-0").mkdir()
            await asyncio.sleep(0.5)
            assert (await s.get("/v2/health/ready"))[0] == 503
            commit(trained / "step-00000002", tmp_path)
            await s.wait_ready(timeout=20)
            assert (await s.get("/v2/models/mlp"))[1]["versions"] == ["2"]

    asyncio.run(scenario())


def test_batched_results_equal_unbatched_ones(trained: Path, tmp_path: Path) -> None:
    step4 = commit(trained / "step-00000004", tmp_path)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1 + i % 3, INPUT_DIM)).astype(np.float32) for i in range(24)]
    expected = [reference_logits(step4, x) for x in inputs]

    async def scenario() -> None:
        async with serving(tmp_path, max_batch_size=16, max_batch_delay_ms=50) as s:
            await s.wait_ready()
            replies = await asyncio.gather(
                *(s.post(INFER, json=infer_body(x, f"r{i}")) for i, x in enumerate(inputs))
            )
            for i, ((status, resp), want) in enumerate(zip(replies, expected, strict=True)):
                assert status == 200 and resp["id"] == f"r{i}"
                np.testing.assert_allclose(output_array(resp), want, rtol=1e-5, atol=1e-5)
            # Batching did happen: fewer forwards than requests, none above the limit.
            forwards = await s.metric("trainforge_serve_batch_size_count")
            assert forwards < len(inputs)
            assert await s.metric('trainforge_serve_batch_size_bucket{le="16.0"}') == forwards
            rows = sum(x.shape[0] for x in inputs)
            assert await s.metric("trainforge_serve_batch_size_sum") == rows

    asyncio.run(scenario())


def test_int8_quantized_outputs_are_close_to_fp32(trained: Path, tmp_path: Path) -> None:
    step4 = commit(trained / "step-00000004", tmp_path)
    x = np.random.default_rng(2).standard_normal((64, INPUT_DIM)).astype(np.float32)
    fp32 = reference_logits(step4, x)
    # The quantized model really is different (int8 Linear layers), yet close.
    quantized = quantize_int8(load(ckpt.read_checkpoint(step4), "none", torch.device("cpu")).module)
    assert "DynamicQuantizedLinear" in repr(quantized)

    async def scenario() -> None:
        async with serving(tmp_path, quantize="int8") as s:
            await s.wait_ready()
            status, meta = await s.get("/v2/models/mlp")
            assert status == 200 and meta["parameters"]["quantize"] == "int8"
            status, resp = await s.post(INFER, json=infer_body(x))
            assert status == 200
            int8 = output_array(resp)
            scale = float(np.abs(fp32).max())
            assert float(np.abs(int8 - fp32).max()) < 0.05 * scale
            assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9
            assert not np.array_equal(int8, fp32)

    asyncio.run(scenario())
