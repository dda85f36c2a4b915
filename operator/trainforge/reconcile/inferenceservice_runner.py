"""Runs the InferenceService reconcile: observe (kopf indexes), plan (pure), apply (kube.py).

As for TrainingJobs, two memories bridge the lag of the watch caches behind our own writes:
the status this operator last wrote (it is the only writer), and the children it applied that
the indexes do not show yet. Children are applied server-side (they are mutable); a child
that is missing from the indexes is looked up before it is created, so an object of the same
name that belongs to someone else is reported, never taken over. A child the API server
rejects (an invalid podTemplate overlay, say) is reported too, and retried with a growing
backoff, never in a tight loop (reconcile/children.py, shared with TrainingJobs). The memory,
metrics, status write and error path are the controller core's (reconcile/core.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import trainforge_contract as contract
from trainforge import kube, metrics, workqueue
from trainforge.api import InferenceServiceSpec, InvalidSpec
from trainforge.reconcile import core
from trainforge.reconcile.children import Problem, write_child
from trainforge.reconcile.core import Key
from trainforge.reconcile.inferenceservice import (
    READY,
    ChildView,
    Observed,
    Plan,
    parse_spec,
    plan,
    resolve_model,
)
from trainforge.render.common import RenderSettings

KIND = "InferenceService"
# The latest watched InferenceService or TrainingJob for a key, and a service's children.
ObjectLookup = core.ObjectLookup
ChildrenLookup = Callable[[Key], list[ChildView]]
# (kubelet reason, message) of a service's pods whose container cannot start.
PodProblemsLookup = Callable[[Key], list[tuple[str, str]]]

API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
}
# How long an applied child may stay invisible to the watch before it is applied again.
IN_FLIGHT_SECONDS = 30.0
# What to change when the API server refuses a child.
FIX = "fix spec.podTemplate or spec.autoscaling.metrics"


@dataclass
class Memory(core.Memory):
    """What one service's previous reconciles did that the watch may not show yet."""

    # kind -> (spec hash, monotonic time) of children applied but not yet seen.
    applied: dict[str, tuple[str, float]] = field(default_factory=dict)
    # kind -> (reason, message) for children that could not be applied.
    blocked: dict[str, Problem] = field(default_factory=dict)


class InferenceServiceRunner(core.Runner[Memory, InferenceServiceSpec]):
    kind: ClassVar[str] = KIND

    def __init__(
        self,
        services: ObjectLookup,
        jobs: ObjectLookup,
        children: ChildrenLookup,
        settings: RenderSettings,
        pods_cannot_start: PodProblemsLookup,
        api: kube.Api = kube,
        served: Callable[[str], tuple[int | None, int | None]] = lambda uid: (None, None),
    ) -> None:
        super().__init__(services, Memory, parse_spec, metrics.INFERENCESERVICES, api)
        self._served = served  # served-step hook: the step the servers report (progress/)
        self._jobs = jobs
        self._children = children
        self._pods_cannot_start = pods_cannot_start
        self._settings = settings

    def _reconcile(self, service: dict[str, Any], memory: Memory) -> float | None:
        meta = service["metadata"]
        namespace = meta["namespace"]
        children = [
            child
            for child in self._children((namespace, meta["name"]))
            if child.owner_uid == meta["uid"]
        ]
        spec = self.spec(service, memory)
        job, claim_exists = self._model_source(service, spec)
        observed = Observed(
            service=service,
            now=datetime.now(UTC),
            job=job,
            claim_exists=claim_exists,
            children=children,
            blocked=list(memory.blocked.values()),
            in_flight=self._in_flight(children, memory),
            pods_cannot_start=sorted(self._pods_cannot_start((namespace, meta["name"]))),
            spec=spec,
            served_step=self._served(meta["uid"]),
        )
        result = plan(observed, self._settings)
        self._apply(service, result, memory, {child.kind for child in children})
        if list(memory.blocked.values()) != observed.blocked:
            return 0.0  # report what changed (a new problem, or that it is gone) at once
        if memory.blocked:
            # Only a change by someone can help: try again later, less and less often.
            raise workqueue.Backoff(next(iter(memory.blocked.values()))[1])
        return result.requeue_after

    def _model_source(
        self, service: dict[str, Any], spec: InferenceServiceSpec | InvalidSpec
    ) -> tuple[dict[str, Any] | None, bool | None]:
        """The referenced TrainingJob (from the watch) and whether the claim to mount exists."""
        if isinstance(spec, InvalidSpec):
            return None, None  # the plan reports it
        namespace = service["metadata"]["namespace"]
        job_name = spec.model.from_training_job
        found = self._jobs((namespace, job_name)) if job_name else None
        job = dict(found) if found is not None else None
        mount = resolve_model(namespace, spec, job).mount
        if mount is None:
            return job, None
        claim = kube.Ref("v1", "PersistentVolumeClaim", namespace, mount.claim_name)
        return job, self.api.exists(claim)

    @staticmethod
    def _in_flight(children: list[ChildView], memory: Memory) -> dict[str, str]:
        seen = {child.kind: child.spec_hash for child in children}
        now = time.monotonic()
        for kind, (applied_hash, when) in list(memory.applied.items()):
            if seen.get(kind) == applied_hash or now - when > IN_FLIGHT_SECONDS:
                del memory.applied[kind]
        return {kind: applied_hash for kind, (applied_hash, _) in memory.applied.items()}

    def _apply(
        self, service: dict[str, Any], result: Plan, memory: Memory, present: set[str]
    ) -> None:
        meta = service["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        self.write_status(service, service.get("status") or {}, result.status, memory)
        ready = any(
            c["type"] == READY and c["status"] == "True" for c in result.status["conditions"]
        )
        metrics.INFERENCESERVICES.set(meta["uid"], namespace, str(ready).lower())
        # A child the plan no longer applies (autoscaling turned off, say) blocks nothing.
        applying = {manifest["kind"] for manifest in result.apply}
        memory.blocked = {k: v for k, v in memory.blocked.items() if k in applying}
        for manifest in result.apply:
            kind = manifest["kind"]
            problem = write_child(
                self.api, manifest, service, FIX, update=True, known=kind in present
            )
            if problem:
                memory.blocked[kind] = problem
                continue
            memory.blocked.pop(kind, None)
            if kind == "Deployment":  # announced once it happened, not each time it is tried
                verb = "Updated" if kind in present else "Created"
                self.api.emit_event(service, "Normal", verb, f"{verb.lower()} Deployment {name}")
            spec_hash = manifest["metadata"]["annotations"][contract.ANNOTATION_SPEC_HASH]
            memory.applied[kind] = (spec_hash, time.monotonic())
        for child in result.delete:
            self.api.delete(
                kube.Ref(API_VERSIONS[child.kind], child.kind, namespace, child.name),
                uid=child.uid or None,
            )
        for type_, reason, message in result.events:
            self.api.emit_event(service, type_, reason, message)
