"""What every kind's pure plan shares: the Plan's common part and RFC 3339 timestamps.

Pure (no I/O), like the plans that use it; reconcile/core.py is the impure counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Plan:
    """What every kind's plan returns besides its children: the next status, the Events to
    record, and when to look again."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None
