"""Real checkpoints and in-process servers for the inference-server tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import torch

import trainforge_contract as contract
from trainforge_trainer import checkpoint as ckpt
from trainforge_trainer.serve import model_store
from trainforge_trainer.serve.app import InferenceServer
from trainforge_trainer.serve.settings import ServeSettings

MODEL = "mlp"
INPUT_DIM = 8
NUM_CLASSES = 3
# A tiny mlp with a checkpoint at step 2 and step 4 (different weights).
TRAIN_CONFIG = f"""
recipe: mlp
maxSteps: 4
batchSize: 16
lr: 0.05
logEverySteps: 2
model: {{inputDim: {INPUT_DIM}, hiddenDim: 32, layers: 2, numClasses: {NUM_CLASSES}}}
data: {{samples: 64}}
checkpoint: {{everySteps: 2, keepLast: 5}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def commit(step_dir: Path, root: Path) -> Path:
    """Put a trained step directory into `root` the way the trainer commits: rename, latest."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{contract.CHECKPOINT_TMP_PREFIX}{step_dir.name}-copy"
    shutil.copytree(step_dir, tmp)
    final = root / step_dir.name
    os.rename(tmp, final)
    (root / contract.CHECKPOINT_LATEST).write_text(final.name + "\n")
    return final


def reference_logits(step_dir: Path, x: np.ndarray) -> np.ndarray:
    """The checkpoint's model run directly, one request at a time (no server, no batching)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        model = model_store.load_model_for_inference(ckpt.read_checkpoint(step_dir))
    with torch.inference_mode():
        return np.asarray(model(torch.from_numpy(x)).numpy())


def infer_body(x: np.ndarray, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def output_array(response: dict[str, Any]) -> np.ndarray:
    out = response["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@dataclass
class Running:
    server: InferenceServer
    http: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(path) as r:
            return r.status, await _body(r)

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.post(path, **kwargs) as r:
            return r.status, await _body(r)

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.get("/v2/health/ready"))[0] == 200:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the server was not ready within {timeout} s")

    async def metric(self, name: str) -> float:
        """The value of one sample of the Prometheus exposition (e.g. 'x_count')."""
        async with self.http.get("/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {name!r} in /metrics")


async def _body(r: aiohttp.ClientResponse) -> Any:
    if r.content_type == "application/json":
        return await r.json()
    return await r.text()


def settings(checkpoint_dir: Path, **overrides: Any) -> ServeSettings:
    base = ServeSettings(
        checkpoint_dir=checkpoint_dir,
        model_name=MODEL,
        host="127.0.0.1",
        port=0,
        device="cpu",
        reload_interval_seconds=0.2,
        drain_seconds=0,
    )
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def serving(checkpoint_dir: Path, **overrides: Any) -> AsyncIterator[Running]:
    server = InferenceServer(settings(checkpoint_dir, **overrides))
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession(base) as http:
            yield Running(server, http)
    finally:
        if not server.draining:
            await server.shutdown(0)
