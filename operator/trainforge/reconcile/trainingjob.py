"""TrainingJob reconcile: observed state -> plan (pure) -> actions + the next status.

Everything here is pure (no I/O, the clock comes in `Observed.now`), so every lifecycle rule
is table-tested in tests/unit. The rules are small policies, one module each, run in order
(reconcile/trainingjob_policies/). `reconcile/runner.py` observes, applies and writes status.

The gang's identity is `status.restartAttempt`: pods carry it in a label, and only pods of the
current attempt count. A restart first moves the attempt forward in status (written before any
pod is deleted), so a crash between the two never counts one failure twice, and pods of an
older attempt are simply deleted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

import trainforge_contract as contract
from trainforge.api import InvalidSpec, TrainingJobSpec
from trainforge.api.common import ApiModel
from trainforge.api.trainingjob import CheckpointStatus, Progress
from trainforge.reconcile import common
from trainforge.reconcile.kueue import KueueView
from trainforge.reconcile.pods import cannot_start
from trainforge.reconcile.rdma import NETWORK_STATUS_ANNOTATION, Attachments, parse_network_status
from trainforge.reconcile.runtime import RuntimeSource, effective_spec
from trainforge.reconcile.trainingjob_policies import Context, decide
from trainforge.reconcile.trainingjob_policies.context import (
    CONDITION_TYPES as CONDITION_TYPES,
    FAILED as FAILED,
    PENDING as PENDING,
    PROGRESS_FIELDS as PROGRESS_FIELDS,
    RESTARTING as RESTARTING,
    RUNNING as RUNNING,
    SUCCEEDED as SUCCEEDED,
    SUSPENDED as SUSPENDED,
    TERMINAL as TERMINAL,
)
from trainforge.render.common import RenderSettings

OTHER_CHILD_KINDS = frozenset({"Service", "PersistentVolumeClaim", "PodGroup"})


@dataclass(frozen=True)
class PodView:
    """What the plan needs to know of one worker pod (what the operator's index keeps)."""

    name: str
    uid: str
    index: int
    attempt: int
    phase: str
    deleting: bool = False
    exit_code: int | None = None
    disrupted: bool = False
    unschedulable: str = ""
    spec_hash: str = ""
    progress: dict[str, Any] | None = None
    # (kubelet reason, message) when a container cannot start (reconcile/pods.py).
    cannot_start: tuple[str, str] | None = None
    # Networks Multus attached (reconcile/rdma.py); None without a network-status annotation.
    networks: Attachments | None = None

    @property
    def active(self) -> bool:
        return self.phase in ("Pending", "Running", "Unknown") and not self.deleting


def pod_view(pod: dict[str, Any]) -> PodView:
    meta, status = pod["metadata"], pod.get("status", {})
    labels = meta.get("labels", {})
    terminated = next(
        (
            s["state"]["terminated"]
            for s in status.get("containerStatuses", [])
            if s.get("name") == contract.CONTAINER_NAME and "terminated" in s.get("state", {})
        ),
        None,
    )
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    scheduled = conditions.get("PodScheduled", {})
    disruption = conditions.get("DisruptionTarget", {})
    return PodView(
        name=meta["name"],
        uid=meta.get("uid", ""),
        index=int(labels.get(contract.LABEL_WORKER_INDEX, "0")),
        attempt=int(labels.get(contract.LABEL_RESTART_ATTEMPT, "0")),
        phase=status.get("phase", "Pending"),
        deleting=bool(meta.get("deletionTimestamp")),
        exit_code=terminated.get("exitCode") if terminated else None,
        # Evicted/preempted pods carry DisruptionTarget (k8s >= 1.26); reason=Evicted covers
        # kubelet evictions that predate it.
        disrupted=disruption.get("status") == "True" or status.get("reason") == "Evicted",
        unschedulable=scheduled.get("message", "")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        else "",
        spec_hash=meta.get("annotations", {}).get(contract.ANNOTATION_SPEC_HASH, ""),
        progress=sanitised_progress(terminated.get("message") if terminated else None),
        cannot_start=cannot_start(pod),
        networks=parse_network_status(
            meta.get("annotations", {}).get(NETWORK_STATUS_ANNOTATION)
        ),  # RDMA readback hook
    )


# The kubelet keeps at most 4 KiB of a termination message; anything longer is not the trainer's.
MAX_TERMINATION_MESSAGE = 4096


def sanitised_progress(message: str | None) -> dict[str, Any] | None:
    """The trainer's progress record from a termination message (trainforge_contract), sanitised.

    The message is written by the worker, so it is untrusted: every field is checked against
    the status schema on its own, and one that does not fit (NaN or Infinity from a diverged
    loss, a wrong type, out of range) is dropped, never copied into status where the API
    server would refuse every later status write. A checkpoint record without a valid step
    and path is dropped whole. The record needs a valid `step` to count at all.
    """
    if not message or len(message) > MAX_TERMINATION_MESSAGE:
        return None
    try:
        record = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    progress = {
        key: record[key]
        for key in PROGRESS_FIELDS
        if key in record and _fits(Progress, {key: record[key]})
    }
    if "step" not in progress:
        return None
    checkpoint = record.get("checkpoint")
    if isinstance(checkpoint, dict):
        fields = {k: checkpoint[k] for k in ("step", "path", "time") if k in checkpoint}
        if not _fits(CheckpointStatus, {"step": fields.get("step"), "path": fields.get("path")}):
            fields = {}
        elif "time" in fields and not _fits(CheckpointStatus, fields):
            del fields["time"]
        if fields:
            progress["checkpoint"] = fields
    return progress


def _fits(model: type[ApiModel], fields: dict[str, Any]) -> bool:
    try:
        model.model_validate(fields)
    except ValidationError:
        return False
    return True


@dataclass(frozen=True)
class Observed:
    job: dict[str, Any]
    pods: list[PodView]
    now: datetime
    # "spec.field: what is missing and how to fix it", for referenced objects that do not exist.
    missing_references: list[str] = field(default_factory=list)
    # Kinds of the non-pod children (OTHER_CHILD_KINDS) that exist, controlled by this job
    # and not being deleted, or were just created; a missing one is created again, except a
    # checkpoint claim that held committed checkpoints.
    children_present: frozenset[str] = frozenset()
    # (reason, message) of the last attempt to create children, when it was stopped: the API
    # server refused one (validation, an admission plugin) or its name is taken by an object
    # this job does not control (reconcile/children.py).
    rejected: list[tuple[str, str]] = field(default_factory=list)
    # The runtime the job resolves against (reconcile/runtime.py): its snapshot in status, or
    # as read when the job starts; None: the job has no runtime.
    runtime: RuntimeSource | None = None
    # The effective spec as the runner parsed it (once per generation and runtime), or why it
    # is invalid; None: the plan parses it.
    spec: TrainingJobSpec | InvalidSpec | None = None
    # The newest pushed live report (restart attempt, sanitised record): progress/store.py.
    live: tuple[int, dict[str, Any]] | None = None
    # Gang policy Kueue: the job's Workload and what its admission refers to; None otherwise.
    kueue: KueueView | None = None


@dataclass
class Plan(common.Plan):
    create: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[PodView] = field(default_factory=list)
    delete_job: bool = False
    counted_restart: bool = False
    became_running: bool = False
    # Gang policy Kueue (reconcile/kueue.py): the Workload to create, the spec.active to set,
    # the status patch to write, the uid of a stale one to delete.
    workload_create: dict[str, Any] | None = None
    workload_delete: str | None = None
    workload_active: bool | None = None
    workload_status: dict[str, Any] | None = None


def parse_spec(job: Mapping[str, Any], runtime: RuntimeSource | None) -> TrainingJobSpec:
    """The spec the operator runs: the job's over its runtime's template (reconcile/runtime.py)."""
    return effective_spec(job.get("spec", {}), runtime)


def plan(obs: Observed, settings: RenderSettings) -> Plan:
    """The lifecycle rules, in order, as small policies (reconcile/trainingjob_policies/):
    the first that decides the job's phase ends the plan."""
    ctx = Context(obs, settings, Plan(status={}))
    return ctx.finish(*decide(ctx))
