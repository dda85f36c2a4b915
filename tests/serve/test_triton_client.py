"""The official Triton HTTP client (tritonclient) against the server: JSON and binary data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from serve_helpers import INPUT_DIM, MODEL, commit, reference_logits, serving

pytestmark = pytest.mark.timeout(120)


def _client_session(port: int, x: np.ndarray) -> dict[str, np.ndarray]:
    """What a user's script does: health, metadata, then infer in binary (the client's
    default) and in JSON, and with binary input but JSON output."""
    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert meta["inputs"][0]["shape"] == [-1, INPUT_DIM]
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        results: dict[str, np.ndarray] = {}
        for input_binary, output_binary in ((True, True), (False, False), (True, False)):
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=input_binary)
            wanted = triton.InferRequestedOutput("logits", binary_data=output_binary)
            reply = client.infer(MODEL, [tensor], outputs=[wanted], request_id="t1")
            assert reply.get_response()["id"] == "t1"
            out = reply.as_numpy("logits")
            assert out is not None
            results[f"in={input_binary},out={output_binary}"] = out
        # No outputs named: the client asks for every output in binary.
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        out = client.infer(MODEL, [tensor]).as_numpy("logits")
        assert out is not None
        results["default"] = out
        # A client mistake reaches the user as the server's message.
        bad = triton.InferInput("input", [1, INPUT_DIM + 1], "FP32")
        bad.set_data_from_numpy(np.zeros((1, INPUT_DIM + 1), dtype=np.float32))
        with pytest.raises(triton.InferenceServerException, match=r"model expects \[-1, 8\]"):
            client.infer(MODEL, [bad])
        # Logits that overflow FP32: binary output carries them, JSON output says why not.
        huge = triton.InferInput("input", [1, INPUT_DIM], "FP32")
        huge.set_data_from_numpy(np.full((1, INPUT_DIM), 3e38, dtype=np.float32))
        out = client.infer(MODEL, [huge]).as_numpy("logits")
        assert out is not None and not np.isfinite(out).all()
        as_json = triton.InferRequestedOutput("logits", binary_data=False)
        with pytest.raises(triton.InferenceServerException, match="JSON cannot carry"):
            client.infer(MODEL, [huge], outputs=[as_json])
        return results
    finally:
        client.close()


def test_tritonclient_infers_in_binary_and_json(trained: Path, tmp_path: Path) -> None:
    step4 = commit(trained / "step-00000004", tmp_path)
    x = np.random.default_rng(5).standard_normal((3, INPUT_DIM)).astype(np.float32)
    want = reference_logits(step4, x)

    async def scenario() -> dict[str, np.ndarray]:
        async with serving(tmp_path) as s:
            await s.wait_ready()
            assert s.server.port is not None
            return await asyncio.to_thread(_client_session, s.server.port, x)

    results = asyncio.run(scenario())
    assert len(results) == 4
    for how, out in results.items():
        assert out.dtype == np.float32 and out.shape == want.shape, how
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5, err_msg=how)
