"""The inference server: `python -m trainforge_trainer serve` (see docs/serving.md).

Serves the newest committed checkpoint of a checkpoint directory over the Open Inference
Protocol (V2 REST) with dynamic batching, hot reload, optional int8 quantization, Prometheus
metrics and a graceful drain on SIGTERM.
"""

from __future__ import annotations

from trainforge_trainer.serve.cli import main

__all__ = ["main"]
