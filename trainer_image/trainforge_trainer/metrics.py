"""Prometheus metrics and the progress record (rank 0 serves both on TRAINFORGE_METRICS_PORT).

GET /metrics   Prometheus text format (names below, prefix `trainforge_trainer_`)
GET /progress  the progress record as JSON: {step, totalSteps, loss, samplesPerSecond,
               checkpoint: {step, path, time}} (contract.PROGRESS_KEYS)

The same record is rewritten in place into the container's termination-message file, which
the kubelet copies into the pod status when the container ends: that is how the operator
learns an attempt's last step and checkpoint without the pod holding any API credentials.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)

import trainforge_contract as contract
from trainforge_trainer.logs import json_safe

_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_CKPT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

_TERMINATION_MESSAGE_LIMIT = 4096
# The WSGI app's signature, spelt out because wsgiref's types are only in typeshed.
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class TrainerMetrics:
    """The trainer's metrics in a registry of their own (several trainers can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        p, r = "trainforge_trainer_", self.registry
        self.step = Gauge(p + "step", "Optimizer steps completed.", registry=r)
        self.total_steps = Gauge(p + "total_steps", "maxSteps of this run.", registry=r)
        self.loss = Gauge(p + "loss", "Training loss (mean over the last interval).", registry=r)
        self.samples_per_second = Gauge(
            p + "samples_per_second", "Training samples per second, all ranks.", registry=r
        )
        self.tokens_per_second = Gauge(
            p + "tokens_per_second", "Training tokens per second, all ranks.", registry=r
        )
        self.mfu = Gauge(
            p + "mfu",
            "Model FLOPs utilisation: achieved training FLOP/s over the GPUs' bf16 peak.",
            registry=r,
        )
        self.step_seconds = Histogram(
            p + "step_seconds",
            "Wall time of one optimizer step.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.data_wait_seconds = Histogram(
            p + "data_wait_seconds",
            "Time one optimizer step waited for its batches.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            p + "checkpoint_seconds",
            "Time from the start of a save to its commit.",
            buckets=_CKPT_BUCKETS,
            registry=r,
        )
        self.checkpoint_blocking_seconds = Counter(
            p + "checkpoint_blocking_seconds",
            "Time the training loop waited for checkpointing (rate: fraction of time).",
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            p + "checkpoint_bytes", "Size of the last committed checkpoint.", registry=r
        )
        self.checkpoint_bytes_total = Counter(
            p + "checkpoint_written_bytes", "Checkpoint bytes written.", registry=r
        )
        self.last_committed_step = Gauge(
            p + "last_committed_step", "Step of the newest committed checkpoint.", registry=r
        )
        self.eval_loss = Gauge(
            p + "eval_loss", "Loss of the last evaluation.", ["split"], registry=r
        )
        self.eval_metric = Gauge(
            p + "eval_metric",
            "Accuracy or perplexity of the last evaluation.",
            ["split", "metric"],
            registry=r,
        )


class _NoOp:
    """A metric that records nothing (Gauge, Counter and Histogram updates alike)."""

    def set(self, value: float) -> None:
        pass

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def labels(self, *values: str) -> _NoOp:
        return self


_NOOP = _NoOp()


class NullMetrics:
    """TrainerMetrics where nothing is exported (ranks other than 0, metrics turned off):
    every metric is a no-op, so the loop updates them without asking whether they exist."""

    def __getattr__(self, name: str) -> _NoOp:
        return _NOOP


# Dense bf16/fp16 tensor-core peak per GPU (FLOP/s, vendor datasheets), by device name.
_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def peak_flops(device_name: str) -> float | None:
    """The GPU's bf16 peak, when known (MFU is reported only then)."""
    for key, flops in _PEAK_FLOPS:
        if key in device_name:
            return flops
    return None


class Progress:
    """The progress record (contract.PROGRESS_KEYS), shared by the loop and the HTTP thread."""

    def __init__(self, total_steps: int, termination_path: Path | None) -> None:
        self._lock = threading.Lock()
        self._record: dict[str, Any] = {
            "step": 0,
            "totalSteps": total_steps,
            "loss": None,
            "samplesPerSecond": None,
        }
        self._path = termination_path

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._record.update(fields)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._record)

    def write(self) -> None:
        """Rewrite the termination-message file in place (kubelet bind-mounts it: no rename)."""
        if self._path is not None:
            write_termination_message(self._path, self.snapshot())


def termination_message_path(env: Mapping[str, str]) -> Path | None:
    """Where the progress record goes: the env override, or the kubelet's file if it exists."""
    if env.get(contract.ENV_TERMINATION_MESSAGE_PATH):
        return Path(env[contract.ENV_TERMINATION_MESSAGE_PATH])
    path = Path(contract.TERMINATION_MESSAGE_PATH)
    # Outside Kubernetes nothing created it, and we must not litter /dev.
    return path if path.is_file() else None


def record_json(record: Mapping[str, Any]) -> str:
    """The progress record as strict JSON: a diverged (non-finite) loss is written as null,
    which the operator's status schema accepts; bare NaN would make its status patch fail."""
    return json.dumps(json_safe(record), separators=(",", ":"), allow_nan=False)


def write_termination_message(path: Path, record: Mapping[str, Any]) -> None:
    text = record_json(record)
    # The kubelet keeps at most 4096 bytes, and cut JSON is no JSON: shorten the one field
    # that can be long (a config error's lines) instead. ASCII only, so chars are bytes.
    over = len(text) - _TERMINATION_MESSAGE_LIMIT
    if over > 0 and isinstance(record.get(contract.PROGRESS_ERROR_KEY), str):
        error = record[contract.PROGRESS_ERROR_KEY]
        cut = error[: max(0, len(error) - over - 3)] + "..."
        text = record_json({**record, contract.PROGRESS_ERROR_KEY: cut})
    with open(path, "w") as f:
        f.write(text)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every few seconds would drown the JSON log.
        pass


def serve(port: int, metrics: TrainerMetrics, progress: Progress) -> WSGIServer:
    """Serve /metrics and /progress on a daemon thread; returns the server (for shutdown)."""
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/progress":
            body = record_json(progress.snapshot()).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        return metrics_app(environ, start_response)

    server = make_server("", port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
