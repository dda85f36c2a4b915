"""The trainer's live progress push (rank 0, with the pod's token) and its transport
detection: gloo reports sockets; NCCL's own INFO lines decide between InfiniBand, RoCE and
sockets."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from trainer_harness import Launcher

import trainforge_contract as contract
from trainforge_trainer.transport import transport_from_nccl_log

BASE: dict[str, Any] = {
    "recipe": "mlp",
    "maxSteps": 20,
    "seed": 3,
    "batchSize": 8,
    "logEverySteps": 5,
    "evalEverySteps": 10,
    "checkpoint": {"everySteps": 10},
    "model": {"inputDim": 16, "hiddenDim": 32, "layers": 2, "numClasses": 4},
    "data": {"samples": 512},
}


@pytest.fixture
def operator_endpoint() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """Stands in for the operator's progress endpoint: records (Authorization, body)."""
    received: list[tuple[str, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Authorization"], json.loads(body)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/progress", received
    server.shutdown()


def test_rank_0_pushes_progress_with_the_pod_token_and_gloo_reports_sockets(
    trainers: Launcher, tmp_path: Path, operator_endpoint: tuple[str, list[Any]]
) -> None:
    url, received = operator_endpoint
    token = tmp_path / "token"
    token.write_text("projected-token\n")
    env = {contract.ENV_PROGRESS_URL: url, contract.ENV_PROGRESS_TOKEN_PATH: str(token)}
    job = trainers.launch(BASE, tmp_path / "ckpt", nprocs=2, extra_env=env)
    assert job.wait(180) == [0, 0], job.log_text()

    assert received, job.log_text()
    assert {auth for auth, _ in received} == {"Bearer projected-token"}
    last = received[-1][1]  # the final push on exit
    assert last["step"] == 20 and last["transport"] == contract.TRANSPORT_SOCKET
    assert last["checkpoint"]["step"] == 20
    assert "etaSeconds" in last
    assert json.loads(job.termination[0].read_text())["transport"] == "Socket"
    # Each checkpoint's manifest carries the validation results of its step (reload gate).
    manifest = json.loads((tmp_path / "ckpt" / "step-00000010" / "manifest.json").read_text())
    assert manifest["metricsStep"] == 10
    assert manifest["metrics"]["val_loss"] > 0 and 0 <= manifest["metrics"]["val_accuracy"] <= 1


# Lines as NCCL 2.18-2.21 prints them with NCCL_DEBUG=INFO (hosts and addresses changed).
NCCL_IB = """\
gpu-a:1234:1234 [0] NCCL INFO Bootstrap : Using eth0:10.0.0.5<0>
gpu-a:1234:1234 [0] NCCL INFO NET/Plugin: No plugin found (libnccl-net.so)
gpu-a:1234:1290 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB eth0:10.0.0.5<0>
gpu-a:1234:1290 [0] NCCL INFO Using network IB
gpu-a:1234:1290 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] [receive] via NET/IB/0
"""
NCCL_ROCE = """\
gpu-b:88:88 [0] NCCL INFO NET/IB : Using [0]mlx5_2:1/RoCE [RO]; OOB net1:192.168.1.7<0>
gpu-b:88:120 [0] NCCL INFO Using network IB
gpu-b:88:120 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [send] via NET/IB/0
"""
NCCL_SOCKET = """\
gpu-c:7:7 [0] NCCL INFO NET/IB : No device found.
gpu-c:7:7 [0] NCCL INFO NET/Socket : Using [0]eth0:10.244.1.9<0>
gpu-c:7:40 [0] NCCL INFO Using network Socket
gpu-c:7:40 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [send] via NET/Socket/0
"""


@pytest.mark.parametrize(
    ("log", "transport"),
    [
        (NCCL_IB, "InfiniBand"),
        (NCCL_ROCE, "RoCE"),
        (NCCL_SOCKET, "Socket"),
        ("gpu-d:1:1 [0] NCCL INFO cudaDriverVersion 12040\n", None),
    ],
)
def test_the_transport_from_nccl_info_lines(log: str, transport: str | None) -> None:
    assert transport_from_nccl_log(log.splitlines()) == transport
