"""The inference server's Prometheus metrics (GET /metrics on the serving port).

Names start with `trainforge_serve_`. Each server keeps its own registry, so tests and the
benchmark can run several servers in one process without their counters mixing.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    powers = [float(2**i) for i in range(13) if 2**i < max_batch_size]
    return (*powers, float(max_batch_size))


class ServeMetrics:
    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        p, r = "trainforge_serve_", self.registry
        self.requests = Counter(
            p + "requests",
            "HTTP requests answered, by route and status code.",
            ["route", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            p + "request_duration_seconds",
            "Inference request latency, from the handler start to the response.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            p + "queue_duration_seconds",
            "Time an inference request waited for its batch to start.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            p + "batch_compute_duration_seconds",
            "Model forward time of one batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_size",
            "Rows (samples) per model forward.",
            buckets=_batch_buckets(max_batch_size),
            registry=r,
        )
        self.in_flight = Gauge(
            p + "in_flight_requests", "Inference requests being handled.", registry=r
        )
        self.model_step = Gauge(
            p + "model_step",
            "Training step of the served checkpoint (-1: none loaded).",
            registry=r,
        )
        self.model_step.set(-1)
        self.reloads = Counter(
            p + "model_loads",
            "Checkpoint loads, by result (loaded, failed, or skipped by the reload policy).",
            ["result"],
            registry=r,
        )
        self.skipped_step = Gauge(
            p + "skipped_step",
            "Newest checkpoint step the reload policy refused as worse (-1: none).",
            registry=r,
        )
        self.skipped_step.set(-1)
        self.load_seconds = Histogram(
            p + "model_load_duration_seconds",
            "Time to load and warm up a checkpoint.",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(p + "ready", "1 when the server accepts inference requests.", registry=r)
        self.watcher_up = Gauge(
            p + "reload_watcher_up",
            "1 while the checkpoint watcher runs (0: it died; liveness fails too).",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
