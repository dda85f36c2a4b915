"""JSON log lines on stderr: one object per line with time, level, rank, event and fields.

Log collectors (and `trainforge local run`) parse them without regexes; `event` is a stable
snake_case name, the other keys depend on the event.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

_LOGGER = logging.getLogger("trainforge_trainer")


def json_safe(value: Any, nonfinite: Callable[[float], Any] = lambda _: None) -> Any:
    """`value` with every NaN/Infinity float replaced by `nonfinite(x)` (JSON has no such
    numbers: Python would write bare NaN, which other parsers, the API server's among them,
    refuse). Mappings and lists are copied; anything else is returned as it is."""
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite(value)
    if isinstance(value, Mapping):
        return {k: json_safe(v, nonfinite) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, nonfinite) for v in value]
    return value


def _spelled(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


class _JsonFormatter(logging.Formatter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "rank": self.rank,
            "event": record.getMessage(),
        }
        # A diverged loss stays readable in the log: "NaN" as a string, still valid JSON.
        line.update(json_safe(getattr(record, "fields", {}), _spelled))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, allow_nan=False)


def configure(rank: int, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(rank))
    _LOGGER.handlers[:] = [handler]
    _LOGGER.setLevel(level)
    _LOGGER.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    _LOGGER.log(level, name, extra={"fields": fields})


def warning(name: str, **fields: Any) -> None:
    event(name, logging.WARNING, **fields)


def error(name: str, **fields: Any) -> None:
    event(name, logging.ERROR, **fields)
