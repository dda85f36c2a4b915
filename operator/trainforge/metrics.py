"""The operator's Prometheus metrics (served on --metrics-port at /metrics)."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter("trainforge_reconcile_total", "Reconciles run, by kind.", ["kind"])
RECONCILE_ERRORS = Counter(
    "trainforge_reconcile_errors_total", "Reconciles that raised an error, by kind.", ["kind"]
)
RECONCILE_SECONDS = Histogram(
    "trainforge_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GANG_RESTARTS = Counter(
    "trainforge_gang_restarts_total",
    "Whole-gang restarts of TrainingJobs, by whether they counted against maxRestarts.",
    ["namespace", "counted"],
)
TIME_TO_RUNNING = Histogram(
    "trainforge_trainingjob_time_to_running_seconds",
    "Seconds from a TrainingJob's creation until all its workers ran.",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
PROGRESS_REPORTS = Counter(
    "trainforge_progress_reports_total",
    "Live progress pushes received, by HTTP answer (200 accepted; 401/403 refused, 503 not "
    "the leader).",
    ["code"],
)
PROGRESS_STATUS_WRITES = Counter(
    "trainforge_progress_status_writes_total",
    "TrainingJob status writes that changed only live progress or checkpoint (rate-limited "
    "per job), and those postponed by the limit.",
    ["result"],
)


class PhaseGauge(Collector):
    """trainforge_trainingjobs{namespace, phase}: jobs the operator knows, by phase (or
    another state label).

    Computed at scrape time from the state each object last had, so a deleted object
    disappears from the series instead of leaving a stale gauge behind."""

    def __init__(self, name: str, documentation: str, label: str = "phase") -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self._phases: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def set(self, uid: str, namespace: str, phase: str) -> None:
        with self._lock:
            self._phases[uid] = (namespace, phase)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            tally = Tally(self._phases.values())
        family = GaugeMetricFamily(
            self._name, self._documentation, labels=["namespace", self._label]
        )
        for (namespace, phase), count in sorted(tally.items()):
            family.add_metric([namespace, phase], count)
        yield family


TRAININGJOBS = PhaseGauge("trainforge_trainingjobs", "TrainingJobs by namespace and phase.")
REGISTRY.register(TRAININGJOBS)

INFERENCESERVICES = PhaseGauge(
    "trainforge_inferenceservices",
    "InferenceServices by namespace and whether their Ready condition is true.",
    label="ready",
)
REGISTRY.register(INFERENCESERVICES)
