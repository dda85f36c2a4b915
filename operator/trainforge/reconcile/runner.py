"""Runs the TrainingJob reconcile: observe (kopf indexes), plan (pure), apply (kube.py).

Watch caches lag behind our own writes. Two small memories bridge that gap without extra
reads: the status this operator last wrote (it is the only writer of status), and the pods it
created that the pod index has not shown yet ("expectations", as in kube-controller-manager).
Deterministic names make every remaining race harmless: a duplicate create is a 409 (then
checked to be ours: a name taken by someone else's object is reported, never adopted), a
duplicate delete a 404. A child the API server refuses stops the gang's creation; the job is
Stalled with the server's message and the key backs off (reconcile/children.py). The memory,
metrics, status write and error path are the controller core's (reconcile/core.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar

import trainforge_contract as contract
from trainforge import kube, metrics, workqueue
from trainforge.api import InvalidSpec, TrainingJobSpec, runtime as runtime_api
from trainforge.progress.policy import (
    COUNTS_WRITE_INTERVAL_SECONDS,
    WRITE_INTERVAL_SECONDS,
    counts_only,
    next_write_delay,
    progress_only,
)
from trainforge.progress.store import Report
from trainforge.reconcile import core
from trainforge.reconcile.children import Problem, write_child
from trainforge.reconcile.common import parse_time
from trainforge.reconcile.core import Key
from trainforge.reconcile.kueue import KueueView
from trainforge.reconcile.runtime import RuntimeSource
from trainforge.reconcile.trainingjob import (
    TERMINAL,
    Observed,
    Plan,
    PodView,
    parse_spec,
    plan,
)
from trainforge.render.common import RenderSettings
from trainforge.render.kueue import (
    PRIORITY_CLASS_API_VERSION,
    RESOURCE_FLAVOR_API_VERSION,
    WORKLOAD_API_VERSION,
    kueue_managed,
)

logger = logging.getLogger(__name__)

# Each returns the latest watched object(s) for a key: the job's body, its pods as
# (controller uid, PodView) pairs, and its other children as ChildRecords.
JobLookup = core.ObjectLookup
PodsLookup = Callable[[Key], list[tuple[str, PodView]]]


@dataclass(frozen=True)
class ChildRecord:
    """What the runner needs to know of a job's Service, PVC or PodGroup."""

    kind: str
    owner_uid: str
    deleting: bool


ChildrenLookup = Callable[[Key], list[ChildRecord]]


def _controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(
        o.get("uid") == uid and o.get("controller")
        for o in obj.get("metadata", {}).get("ownerReferences", [])
    )


def child_record(obj: Mapping[str, Any]) -> ChildRecord:
    meta = obj.get("metadata", {})
    owner = next((o["uid"] for o in meta.get("ownerReferences", []) if o.get("controller")), "")
    return ChildRecord(obj.get("kind", ""), owner, bool(meta.get("deletionTimestamp")))


@dataclass
class Memory(core.Memory):
    """What one job's previous reconciles did that the watch may not show yet."""

    attempt: int = -1
    created_pods: dict[str, PodView] = field(default_factory=dict)
    # Kinds of other children created that the watch has not shown yet.
    created_kinds: set[str] = field(default_factory=set)
    # What stopped the last attempt to create children (reconcile/children.py).
    rejected: list[Problem] = field(default_factory=list)
    # time.monotonic() of the last status write (the progress write rate-limit).
    last_write: float | None = None


# What to change when the API server refuses a child of this kind.
FIX = {
    "Pod": "fix the TrainingJob's spec (image, env, resources, scheduling, podTemplate) or "
    "the namespace's policy (ResourceQuota, LimitRange, Pod Security level) that refuses it",
    "PersistentVolumeClaim": "fix spec.checkpoint.volumeClaimTemplate",
}
FIX_OTHER = "fix the TrainingJob's spec"


class TrainingJobRunner(core.Runner[Memory, TrainingJobSpec]):
    kind: ClassVar[str] = "TrainingJob"

    def __init__(
        self,
        jobs: JobLookup,
        pods: PodsLookup,
        children: ChildrenLookup,
        settings: RenderSettings,
        api: kube.Api = kube,
        live: Callable[[str], Report | None] = lambda uid: None,
        kueue: bool = False,
    ) -> None:
        self._kueue = kueue  # run --kueue: gang policy Kueue goes through Workloads
        super().__init__(jobs, Memory, parse_spec, metrics.TRAININGJOBS, api)
        self._live = live  # live progress hook: the newest pushed report of a job uid
        self._pods = pods
        self._children = children
        self._settings = settings

    def _reconcile(self, job: dict[str, Any], memory: Memory) -> float | None:
        status = job.get("status") or {}
        attempt = int(status.get("restartAttempt", 0))
        if attempt != memory.attempt:
            memory.attempt, memory.created_pods = attempt, {}
        runtime = self._observe_runtime(job, status)
        spec = self.spec(job, memory, runtime)
        observed = Observed(
            job=job,
            pods=self._observe_pods(job, memory),
            now=datetime.now(UTC),
            missing_references=self._missing_references(job, status, spec),
            children_present=self._children_present(job, memory),
            rejected=memory.rejected,
            runtime=runtime,
            spec=spec,
            live=self._live(job["metadata"]["uid"]),
            kueue=self._observe_kueue(job, spec),
        )
        result = plan(observed, self._settings)
        before = memory.rejected
        self._apply(job, status, result, memory)
        if memory.rejected != before:
            return 0.0  # report what changed (a new refusal, or that it is gone) at once
        if memory.rejected:
            raise workqueue.Backoff(memory.rejected[0][1], result.requeue_after)
        if isinstance(spec, InvalidSpec) and runtime is not None and not runtime.from_snapshot:
            # Nothing watches runtimes: look again, less and less often, until it is fixed.
            raise workqueue.Backoff(spec.messages[0], result.requeue_after)
        return result.requeue_after

    def _observe_runtime(self, job: dict[str, Any], status: dict[str, Any]) -> RuntimeSource | None:
        """The job's runtime: the snapshot in status.runtime once the job has one (a later edit
        of the runtime never changes a started job), read from the API server before that,
        and again while the job is suspended (resuming picks up the runtime's new version)."""
        spec = job.get("spec") or {}
        ref = spec.get("runtimeRef")
        if ref is None:
            if not self._settings.default_runtime:
                return None
            ref = {"kind": runtime_api.CLUSTER_KIND, "name": self._settings.default_runtime}
        kind, name = ref.get("kind", runtime_api.CLUSTER_KIND), ref["name"]
        snapshot = status.get("runtime") or {}
        if (snapshot.get("kind"), snapshot.get("name")) == (kind, name) and not spec.get("suspend"):
            return RuntimeSource(
                kind, name, snapshot.get("generation", 0), snapshot.get("spec", {}), True
            )
        namespace = job["metadata"]["namespace"] if kind == runtime_api.KIND else ""
        found = self.api.get(kube.Ref(contract.API_VERSION, kind, namespace, name))
        if found is None:
            return RuntimeSource(kind, name)
        return RuntimeSource(
            kind, name, int(found["metadata"].get("generation", 0)), found.get("spec") or {}
        )

    def _observe_pods(self, job: dict[str, Any], memory: Memory) -> list[PodView]:
        meta = job["metadata"]
        seen = [
            pod
            for owner, pod in self._pods((meta["namespace"], meta["name"]))
            if owner == meta["uid"]
        ]
        names = {p.name for p in seen}
        for name in list(memory.created_pods):
            if name in names:
                del memory.created_pods[name]
        return seen + list(memory.created_pods.values())

    def _observe_kueue(
        self, job: dict[str, Any], spec: TrainingJobSpec | InvalidSpec
    ) -> KueueView | None:
        """Gang policy Kueue: the job's Workload (read fresh: its admission decides whether
        workers may exist), the ResourceFlavors its admission names and the job's
        PriorityClass value, which the Workload carries for Kueue's preemption."""
        if not self._kueue or isinstance(spec, InvalidSpec) or not kueue_managed(spec):
            return None
        meta = job["metadata"]
        ref = kube.Ref(WORKLOAD_API_VERSION, "Workload", meta["namespace"], meta["name"])
        found = self.api.get(ref)
        workload = found if found and _controlled_by(found, meta["uid"]) else None
        admission = (workload or {}).get("status", {}).get("admission") or {}
        names = {
            name
            for assignment in admission.get("podSetAssignments", [])
            for name in assignment.get("flavors", {}).values()
        }
        flavors = {}
        for name in sorted(names):
            flavor = self.api.get(kube.Ref(RESOURCE_FLAVOR_API_VERSION, "ResourceFlavor", "", name))
            flavors[name] = (flavor or {}).get("spec", {})
        priority = None
        pclass_name = spec.scheduling.priority_class_name
        if workload is None and pclass_name is not None:
            pclass = self.api.get(
                kube.Ref(PRIORITY_CLASS_API_VERSION, "PriorityClass", "", pclass_name)
            )
            priority = int(pclass["value"]) if pclass else None
        return KueueView(workload, flavors, priority)

    def _children_present(self, job: dict[str, Any], memory: Memory) -> frozenset[str]:
        meta = job["metadata"]
        records = [
            r
            for r in self._children((meta["namespace"], meta["name"]))
            if r.owner_uid == meta["uid"]
        ]
        memory.created_kinds -= {r.kind for r in records}
        return frozenset({r.kind for r in records if not r.deleting} | memory.created_kinds)

    def _watched_pod(self, key: Key, ref: kube.Ref) -> dict[str, Any]:
        """The holder of a worker pod name, from the pod watch (which sees every pod with this
        job's labels): a name not there is held by a pod the job never made."""
        for owner, view in self._pods(key):
            if view.name == ref.name:
                return {"metadata": {"ownerReferences": [{"uid": owner, "controller": True}]}}
        return {"metadata": {}}

    def _missing_references(
        self, job: dict[str, Any], status: dict[str, Any], spec: TrainingJobSpec | InvalidSpec
    ) -> list[str]:
        """Check referenced NetworkAttachmentDefinitions and PVCs, only when pods are about to
        be created (a missing one would leave them stuck in ContainerCreating)."""
        if isinstance(spec, InvalidSpec):
            return []  # the plan reports it
        if status.get("phase") in TERMINAL or spec.suspend:
            return []
        namespace = job["metadata"]["namespace"]
        missing = []
        rdma = spec.network.rdma if spec.network else None
        for i, net in enumerate(rdma.networks if rdma else []):
            ref = kube.Ref(
                "k8s.cni.cncf.io/v1",
                "NetworkAttachmentDefinition",
                net.namespace or namespace,
                net.name,
            )
            if self.api.exists(ref) is False:
                missing.append(
                    f"spec.network.rdma.networks[{i}]: NetworkAttachmentDefinition "
                    f"{ref.namespace}/{ref.name} does not exist; create it (see docs/rdma.md) "
                    "or fix the name"
                )
        claim = spec.checkpoint.claim_name if spec.checkpoint else None
        if (
            claim
            and self.api.exists(kube.Ref("v1", "PersistentVolumeClaim", namespace, claim)) is False
        ):
            missing.append(
                f"spec.checkpoint.claimName: PersistentVolumeClaim "
                f"{namespace}/{claim} does not exist; create it or use "
                "spec.checkpoint.volumeClaimTemplate"
            )
        return missing

    def _apply(
        self, job: dict[str, Any], old_status: dict[str, Any], result: Plan, memory: Memory
    ) -> None:
        meta = job["metadata"]
        # A restart (or any deletion) is recorded before pods go, so it is counted once; a
        # plain creation writes status after the pods, one round trip sooner for the gang.
        status_first = bool(result.delete_pods) or (
            result.status["restartAttempt"] != memory.attempt
        )
        if status_first:
            self._write_status(job, old_status, result, memory)
        phase = result.status["phase"]
        metrics.TRAININGJOBS.set(meta["uid"], meta["namespace"], phase)
        if result.counted_restart or result.status["restartAttempt"] != memory.attempt:
            metrics.GANG_RESTARTS.labels(
                meta["namespace"], str(result.counted_restart).lower()
            ).inc()
        if result.became_running and result.status["restartAttempt"] == 0:
            created = parse_time(meta["creationTimestamp"])
            metrics.TIME_TO_RUNNING.observe((datetime.now(UTC) - created).total_seconds())
        for pod in result.delete_pods:
            self.api.delete(kube.Ref("v1", "Pod", meta["namespace"], pod.name), uid=pod.uid or None)
        memory.rejected = []
        key = (meta["namespace"], meta["name"])
        for manifest in result.create:
            kind = manifest["kind"]
            problem = write_child(
                self.api,
                manifest,
                job,
                FIX.get(kind, FIX_OTHER),
                update=False,
                known=False,
                lookup=partial(self._watched_pod, key) if kind == "Pod" else None,
            )
            if problem:
                # A gang without this child cannot run: create nothing more until it is fixed.
                memory.rejected = [problem]
                break
            if kind == "Pod":
                view = PodView(
                    name=manifest["metadata"]["name"],
                    uid="",
                    index=int(manifest["metadata"]["labels"][contract.LABEL_WORKER_INDEX]),
                    attempt=memory.attempt,
                    phase="Pending",
                )
                memory.created_pods[view.name] = view
            else:
                memory.created_kinds.add(kind)
        self._apply_workload(job, result)
        if not status_first:
            self._write_status(job, old_status, result, memory)
        for type_, reason, message in result.events:
            self.api.emit_event(job, type_, reason, message)
        if result.delete_job:
            logger.info(
                "TrainingJob %s/%s: ttlSecondsAfterFinished passed, deleting it",
                meta["namespace"],
                meta["name"],
            )
            self.api.delete(self.ref(job), uid=meta["uid"])

    def _apply_workload(self, job: dict[str, Any], result: Plan) -> None:
        meta = job["metadata"]
        ref = kube.Ref(WORKLOAD_API_VERSION, "Workload", meta["namespace"], meta["name"])
        if result.workload_create is not None:
            self.api.create(result.workload_create)
        if result.workload_delete is not None:
            self.api.delete(ref, uid=result.workload_delete or None)
        if result.workload_active is not None:
            self.api.patch(ref, {"spec": {"active": result.workload_active}})
        if result.workload_status is not None:
            self.api.patch_status(ref, result.workload_status)

    def _write_status(
        self, job: dict[str, Any], old_status: dict[str, Any], result: Plan, memory: Memory
    ) -> None:
        """The core's status write, except that a change of live progress alone waits for the
        per-job write interval, and a change of worker counts alone for a shorter one
        (progress/policy.py): a starting gang is written Pending, then Running."""
        if result.status == old_status:
            return
        if counts_only(old_status, result.status):
            wait = next_write_delay(
                memory.last_write, time.monotonic(), COUNTS_WRITE_INTERVAL_SECONDS
            )
            if wait > 0:
                result.requeue_after = min(wait, result.requeue_after or wait)
                return
        elif progress_only(old_status, result.status):
            wait = next_write_delay(memory.last_write, time.monotonic(), WRITE_INTERVAL_SECONDS)
            if wait > 0:
                metrics.PROGRESS_STATUS_WRITES.labels("postponed").inc()
                result.requeue_after = min(wait, result.requeue_after or wait)
                return
            metrics.PROGRESS_STATUS_WRITES.labels("written").inc()
        memory.last_write = time.monotonic()
        self.write_status(job, old_status, result.status, memory)
