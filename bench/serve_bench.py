"""Benchmark of the inference server: throughput and latency on loopback, vs KServe.

    .venv/bin/python bench/serve_bench.py [--seconds 6] [--kserve-python PYTHON]

Trains the `mlp` recipe for a few steps with the real trainer, then serves that checkpoint
(all three on 127.0.0.1, measured in turn) with:

  - trainforge, batching on  (max batch 32, max delay 5 ms)
  - trainforge, batching off (max batch 1)
  - KServe's Python model server (V2 REST), when `kserve` is installed in a separate venv
    (`python3 -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install kserve`); the
    same torch model, loaded with the same trainer code, run under torch.inference_mode.

A load generator in a separate process keeps N requests in flight (closed loop, keep-alive
connections, 1 row per request) for a fixed time and reports requests/s and p50/p99 latency.
Prints a Markdown table for bench/REPORT.md. Not a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 8, 64)
INPUT_DIM = 32
TRAIN_CONFIG = f"""
recipe: mlp
maxSteps: 20
batchSize: 32
logEverySteps: 10
model: {{inputDim: {INPUT_DIM}, hiddenDim: 256, layers: 2, numClasses: 4}}
checkpoint: {{everySteps: 20}}
"""
# Intra-op threads of every server (trainforge's default; KServe's model sets the same).
TORCH_THREADS = 1
# Packages the KServe venv borrows from this venv instead of downloading torch again.
TORCH_PACKAGES = (
    "torch",
    "torchgen",
    "functorch",
    "triton",
    "nvidia",
    "cuda",
    "sympy",
    "mpmath",
    "networkx",
    "jinja2",
    "markupsafe",
    "fsspec",
    "filelock",
)

KSERVE_MODEL = """
import sys, warnings
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.utils.utils import generate_uuid
from trainforge_trainer import checkpoint as ckpt
from trainforge_trainer.serve import model_store


class TorchModel(Model):
    def __init__(self, name: str, checkpoint_dir: str) -> None:
        super().__init__(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = model_store.load_model_for_inference(ckpt.latest_committed(checkpoint_dir))
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x)).numpy()
        tensor = InferOutput(name="logits", shape=list(out.shape), datatype="FP32")
        tensor.set_data_from_numpy(out, binary_data=False)
        # KServe's V2 response needs an id; its own examples generate one when none was sent.
        response_id = payload.id or generate_uuid()
        return InferResponse(model_name=self.name, infer_outputs=[tensor], response_id=response_id)


if __name__ == "__main__":
    port, checkpoint_dir, threads = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)  # the same intra-op threads as the trainforge server
    ModelServer(
        http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False
    ).start([TorchModel("mlp", checkpoint_dir)])
"""


# --- load generator (runs in its own process) ---------------------------------------------


async def _load(url: str, body: bytes, concurrency: int, warmup: float, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, measure_to = start + warmup, start + warmup + seconds
    headers = {"Content-Type": "application/json"}

    sent = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, sent
        while (t0 := time.perf_counter()) < measure_to:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                ok = r.status == 200
            t1 = time.perf_counter()
            sent += 1
            if t0 >= measure_from:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "sent": sent,
        "errors": errors,
        "rps": len(latencies) / seconds,
        "p50_ms": pct(0.50) if latencies else float("nan"),
        "p99_ms": pct(0.99) if latencies else float("nan"),
    }


def _loadgen_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--warmup", type=float, default=1.0)
    a = p.parse_args(argv)
    row = [round(0.01 * i, 3) for i in range(INPUT_DIM)]
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, INPUT_DIM], "datatype": "FP32", "data": row}]}
    ).encode()
    print(json.dumps(asyncio.run(_load(a.url, body, a.concurrency, a.warmup, a.seconds))))


# --- orchestration ----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        if _get(url)[0] == 200:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready within {timeout} s")


def _train(work: Path) -> Path:
    config = work / "mlp.yaml"
    config.write_text(TRAIN_CONFIG)
    root = work / "checkpoints"
    env = os.environ | {
        "TRAINFORGE_CHECKPOINT_DIR": str(root),
        "TRAINFORGE_TERMINATION_MESSAGE_PATH": str(work / "termination-log"),
    }
    subprocess.run(
        [sys.executable, "-m", "trainforge_trainer", "train", "--config", str(config)],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return root


def _torch_link_dir(work: Path) -> Path:
    """A directory of symlinks to this venv's torch (and its imports) for the KServe venv."""
    import torch

    site = Path(torch.__file__).resolve().parent.parent
    links = work / "borrowed-torch"
    links.mkdir()
    for name in TORCH_PACKAGES:
        if (site / name).exists():
            (links / name).symlink_to(site / name)
    return links


def _metric_sums(base: str) -> tuple[float, float]:
    status, text = _get(base + "/metrics")
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines() if status == 200 else []:
        for kind in values:
            if line.startswith(f"trainforge_serve_batch_size_{kind} "):
                values[kind] = float(line.split()[1])
    return values["sum"], values["count"]


def _run_loadgen(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "loadgen",
            "--url",
            url,
            "--concurrency",
            str(concurrency),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed against {url}:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@dataclass
class _Server:
    label: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start(server: _Server, work: Path) -> None:
    with open(work / f"{server.label.replace(' ', '-')}.log", "wb") as out:
        server.proc = subprocess.Popen(
            server.cmd, env=server.env, stdout=out, stderr=subprocess.STDOUT
        )
    _wait_ready(server.base + "/v2/models/mlp/ready", server.proc)


def _stop(server: _Server) -> None:
    if server.proc is None or server.proc.poll() is not None:
        return
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, total, grew = {pid}, 0.0, True
    while grew:
        before = len(tree)
        tree |= {p for p, (ppid, _) in stats.items() if ppid in tree}
        grew = len(tree) > before
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


def _measure(server: _Server, concurrency: int, seconds: float) -> dict[str, Any]:
    assert server.proc is not None
    before = _metric_sums(server.base)
    cpu_before = _cpu_seconds(server.proc.pid)
    result = _run_loadgen(server.base + "/v2/models/mlp/infer", concurrency, seconds)
    cpu = _cpu_seconds(server.proc.pid) - cpu_before
    after = _metric_sums(server.base)
    forwards = after[1] - before[1]
    result["mean_batch"] = (after[0] - before[0]) / forwards if forwards else None
    # Server CPU per answered request (warm-up included): what a dedicated core would
    # sustain, and far less sensitive than requests/s to other load on a shared machine.
    result["cpu_ms"] = 1000 * cpu / max(1, result["sent"])
    row = {"server": server.label, "concurrency": concurrency, **result}
    print(json.dumps(row), file=sys.stderr)
    return row


def _trainforge(label: str, root: Path, batch: int) -> _Server:
    port = _free_port()
    env = os.environ | {
        "TRAINFORGE_CHECKPOINT_DIR": str(root),
        "TRAINFORGE_SERVE_MODEL_NAME": "mlp",
        "TRAINFORGE_SERVE_HOST": "127.0.0.1",
        "TRAINFORGE_SERVE_PORT": str(port),
        "TRAINFORGE_SERVE_MAX_BATCH_SIZE": str(batch),
        "TRAINFORGE_SERVE_MAX_BATCH_DELAY_MS": "5",
        "TRAINFORGE_SERVE_RELOAD_INTERVAL_SECONDS": "0",
        "TRAINFORGE_SERVE_DRAIN_SECONDS": "0",
        "TRAINFORGE_SERVE_TORCH_THREADS": str(TORCH_THREADS),
    }
    return _Server(label, [sys.executable, "-m", "trainforge_trainer", "serve"], env, port)


def _kserve(python: str, root: Path, work: Path) -> tuple[_Server | None, str | None]:
    probe = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('kserve'))"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return None, f"kserve is not installed in {python}: {probe.stderr.strip()[-500:]}"
    script = work / "kserve_model.py"
    script.write_text(KSERVE_MODEL)
    path = [str(_torch_link_dir(work)), str(REPO / "operator"), str(REPO / "trainer_image")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(path)}
    port = _free_port()
    cmd = [python, str(script), str(port), str(root), str(TORCH_THREADS)]
    return _Server(f"kserve {probe.stdout.strip()}", cmd, env, port), None


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | concurrency | requests/s | p50 ms | p99 ms | mean batch "
        "| server CPU ms/request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        batch = f"{r['mean_batch']:.1f}" if r.get("mean_batch") else "-"
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {batch} | {r['cpu_ms']:.2f} | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["loadgen"]:
        _loadgen_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per point")
    p.add_argument("--kserve-python", default="/tmp/kserve-venv/bin/python")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        root = _train(work)
        servers = [
            _trainforge("trainforge batching on", root, 32),
            _trainforge("trainforge batching off", root, 1),
        ]
        note = None
        if Path(a.kserve_python).exists():
            kserve, note = _kserve(a.kserve_python, root, work)
            servers += [kserve] if kserve else []
        else:
            note = f"no KServe venv at {a.kserve_python}"
        rows = []
        try:
            for server in servers:
                _start(server, work)
            # Interleaved, so a burst of load from elsewhere on the machine hits every
            # server alike rather than one of them.
            for concurrency in CONCURRENCY:
                for server in servers:
                    rows.append(_measure(server, concurrency, a.seconds))
        finally:
            for server in servers:
                _stop(server)
    import torch

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({TORCH_THREADS} intra-op thread), {a.seconds:g} s per "
        f"point after 1 s warm-up, 1 row x {INPUT_DIM} FP32 per request; load average "
        f"{os.getloadavg()[0]:.1f} at the end\n"
    )
    print(_table(rows))
    if note:
        print(f"\nKServe: {note}")


if __name__ == "__main__":
    main()
