"""InferenceService reconcile: observed state -> plan (pure) -> children to apply + status.

Pure, like the TrainingJob plan: the runner (reconcile/inferenceservice_runner.py) observes
the service, its children and the TrainingJob it serves from, and applies the plan.

Nothing is deployed until the model source resolves: a TrainingJob without a committed
checkpoint, or a claim that does not exist, would only give pods that never get ready. Once
deployed, a source that goes missing is reported (Stalled) but the running servers are left
alone: they keep answering from the checkpoint they loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trainforge_contract as contract
from trainforge.api import InferenceServiceSpec, InvalidSpec, parse_inference_service_spec
from trainforge.reconcile import common
from trainforge.reconcile.children import refusal
from trainforge.reconcile.common import rfc3339
from trainforge.reconcile.conditions import Cond, merge_conditions, stalled_event
from trainforge.render.common import RenderSettings, checkpoint_pvc_name
from trainforge.render.inferenceservice import (
    InferenceRef,
    ModelMount,
    desired_children,
    selector_string,
    url,
)

READY, MODEL_LOADED, RECONCILING, STALLED = "Ready", "ModelLoaded", "Reconciling", "Stalled"
# What to change when the API server refuses the servers' pods.
POD_FIX = (
    "fix spec.podTemplate or spec.resources, or the namespace's policy (ResourceQuota, "
    "LimitRange, Pod Security level) that refuses them"
)
# A TrainingJob in one of these phases will commit no further checkpoint.
FINISHED_JOB_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Rollout:
    """The part of a Deployment's status that says whether it serves the desired replicas."""

    generation: int = 0
    observed_generation: int = 0
    replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    updated_replicas: int = 0
    # Progressing=False with reason ProgressDeadlineExceeded: the rollout is stuck.
    stuck_message: str = ""
    # ReplicaFailure=True: the API server refuses the ReplicaSet's pods (an admission plugin
    # such as Pod Security or a ResourceQuota; the ReplicaSet's FailedCreate events say the
    # same); the message is the server's.
    replica_failure: str = ""


@dataclass(frozen=True)
class ChildView:
    """What the plan needs to know of one existing child (what the operator's indexes keep)."""

    kind: str
    name: str
    uid: str
    owner_uid: str
    spec_hash: str
    rollout: Rollout | None = None


def child_view(obj: dict[str, Any]) -> ChildView:
    meta = obj["metadata"]
    owner = next(
        (o.get("uid", "") for o in meta.get("ownerReferences", []) if o.get("controller")), ""
    )
    rollout = None
    if obj.get("kind") == "Deployment":
        status = obj.get("status", {})
        conditions = {c.get("type"): c for c in status.get("conditions", [])}
        progressing: dict[str, Any] = conditions.get("Progressing", {})
        failure: dict[str, Any] = conditions.get("ReplicaFailure", {})
        stuck = (
            progressing.get("status") == "False"
            and progressing.get("reason") == "ProgressDeadlineExceeded"
        )
        rollout = Rollout(
            generation=int(meta.get("generation", 0)),
            observed_generation=int(status.get("observedGeneration", 0)),
            replicas=int(status.get("replicas", 0)),
            ready_replicas=int(status.get("readyReplicas", 0)),
            available_replicas=int(status.get("availableReplicas", 0)),
            updated_replicas=int(status.get("updatedReplicas", 0)),
            stuck_message=progressing.get("message", "") if stuck else "",
            replica_failure=failure.get("message", "") if failure.get("status") == "True" else "",
        )
    return ChildView(
        kind=obj["kind"],
        name=meta["name"],
        uid=meta.get("uid", ""),
        owner_uid=owner,
        spec_hash=meta.get("annotations", {}).get(contract.ANNOTATION_SPEC_HASH, ""),
        rollout=rollout,
    )


@dataclass(frozen=True)
class Observed:
    service: dict[str, Any]
    now: datetime
    # The TrainingJob named by spec.model.fromTrainingJob; None when absent or not referenced.
    job: dict[str, Any] | None = None
    # Whether the resolved claim exists; None when unknown (not checked, or not allowed to).
    claim_exists: bool | None = None
    # Children controlled by this service (other objects are filtered out by the runner).
    children: list[ChildView] = field(default_factory=list)
    # (reason, message) for children the runner could not apply: their name is taken by an
    # object this service does not control (never adopted), or the API server rejected them
    # (e.g. an invalid podTemplate or autoscaling metric).
    blocked: list[tuple[str, str]] = field(default_factory=list)
    # kind -> spec hash of children applied recently that the watch does not show yet; not
    # applied again (nor announced twice) while they are on their way.
    in_flight: dict[str, str] = field(default_factory=dict)
    # (kubelet reason, message) of server pods whose container cannot start (pods.py).
    pods_cannot_start: list[tuple[str, str]] = field(default_factory=list)
    # The spec as the runner parsed it (once per generation), or why it is invalid; None:
    # the plan parses it.
    spec: InferenceServiceSpec | InvalidSpec | None = None
    # (lowest step the server replicas report serving, newest step one skipped under the
    # reload policy) from progress/store.py; None: unknown.
    served_step: tuple[int | None, int | None] = (None, None)


@dataclass
class Plan(common.Plan):
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[ChildView] = field(default_factory=list)


@dataclass(frozen=True)
class Resolution:
    """Where the model comes from; `mount` is None while it cannot be served (then reason
    and message say why, and `stalled` whether only a change by the user can help)."""

    mount: ModelMount | None
    model: dict[str, Any]
    reason: str = ""
    message: str = ""
    stalled: bool = False


def parse_spec(service: Mapping[str, Any]) -> InferenceServiceSpec:
    return parse_inference_service_spec(service.get("spec", {}))


def resolve_model(
    namespace: str, spec: InferenceServiceSpec, job: dict[str, Any] | None
) -> Resolution:
    """The claim and checkpoint directory to serve, from spec.model (and the TrainingJob)."""
    source = spec.model
    if source.claim_name is not None:
        mount_path = contract.DEFAULT_CHECKPOINT_MOUNT
        directory = f"{mount_path}/{source.path}" if source.path else mount_path
        return Resolution(
            ModelMount(source.claim_name, mount_path, directory),
            {"claimName": source.claim_name, "path": directory},
        )
    job_name = source.from_training_job or ""
    model: dict[str, Any] = {"trainingJob": job_name}
    if job is None:
        return Resolution(
            None,
            model,
            "TrainingJobNotFound",
            f"spec.model.fromTrainingJob: TrainingJob {namespace}/{job_name} does not exist; "
            "create it or fix the name",
            stalled=True,
        )
    # A job with a runtime may have its checkpoint volume from the runtime.
    job_spec = (job.get("status") or {}).get("effectiveSpec") or job.get("spec") or {}
    checkpoint = job_spec.get("checkpoint")
    if not checkpoint:
        return Resolution(
            None,
            model,
            "NoCheckpointVolume",
            f"spec.model.fromTrainingJob: TrainingJob {namespace}/{job_name} has no "
            "spec.checkpoint, so it saves nothing to serve; give the job a checkpoint volume "
            "or serve a PVC with spec.model.claimName",
            stalled=True,
        )
    claim = checkpoint.get("claimName") or checkpoint_pvc_name(job_name)
    mount_path = checkpoint.get("mountPath", contract.DEFAULT_CHECKPOINT_MOUNT)
    model["claimName"] = claim
    committed = (job.get("status") or {}).get("checkpoint")
    if not committed:
        phase = (job.get("status") or {}).get("phase", "")
        if phase in FINISHED_JOB_PHASES:
            return Resolution(
                None,
                model,
                "NoCheckpoint",
                f"spec.model.fromTrainingJob: TrainingJob {namespace}/{job_name} {phase} "
                "without committing a checkpoint; train again with a checkpoint cadence "
                "(spec.checkpoint.everySteps) or serve another job",
                stalled=True,
            )
        return Resolution(
            None,
            model,
            "WaitingForCheckpoint",
            f"TrainingJob {job_name} has not committed a checkpoint yet; the servers are "
            "deployed when it does",
        )
    model["path"] = committed.get("path", mount_path)
    if isinstance(committed.get("step"), int):
        model["step"] = committed["step"]
    return Resolution(ModelMount(claim, mount_path, mount_path), model)


def _missing_claim(namespace: str, spec: InferenceServiceSpec, claim: str) -> str:
    if spec.model.claim_name is not None:
        return (
            f"spec.model.claimName: PersistentVolumeClaim {namespace}/{claim} does not exist; "
            "create it or fix the name"
        )
    return (
        f"spec.model.fromTrainingJob: PersistentVolumeClaim {namespace}/{claim}, the checkpoint "
        f"volume of TrainingJob {spec.model.from_training_job}, does not exist; check the "
        "job's spec.checkpoint"
    )


def plan(obs: Observed, settings: RenderSettings) -> Plan:
    service = obs.service
    meta = service["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    old = service.get("status") or {}
    generation = int(meta.get("generation", 1))
    status: dict[str, Any] = {
        **old,
        "observedGeneration": generation,
        "url": url(name, namespace),
        "selector": selector_string(name),
    }
    status.pop("conditions", None)
    result = Plan(status=status)
    children = {child.kind: child for child in obs.children}
    deployment = children.get("Deployment")
    rollout = deployment.rollout if deployment else None
    status["replicas"] = rollout.replicas if rollout else 0
    status["readyReplicas"] = rollout.ready_replicas if rollout else 0

    def finish(conditions: list[Cond]) -> Plan:
        status["conditions"] = merge_conditions(
            old.get("conditions", []), conditions, generation, rfc3339(obs.now)
        )
        result.events += _transition_events(old, status)
        return result

    spec = obs.spec
    if spec is None:
        try:
            spec = parse_spec(service)
        except InvalidSpec as e:
            spec = e
    if isinstance(spec, InvalidSpec):
        message = "; ".join(spec.messages)
        return finish(
            _kstatus(
                Cond(READY, False, "InvalidSpec", message),
                Cond(MODEL_LOADED, False, "InvalidSpec", message),
                Cond(STALLED, True, "InvalidSpec", message),
            )
        )

    resolution = resolve_model(namespace, spec, obs.job)
    status["model"] = resolution.model
    if resolution.model is not None:  # served-step hook (progress/)
        served, skipped = obs.served_step
        status["model"] = {
            **resolution.model,
            **({"servedStep": served} if served is not None else {}),
            **({"skippedStep": skipped} if skipped is not None else {}),
        }
    mount = resolution.mount
    if mount is not None and obs.claim_exists is False:
        resolution = Resolution(
            None,
            resolution.model,
            "ClaimNotFound",
            _missing_claim(namespace, spec, mount.claim_name),
            stalled=True,
        )
    if resolution.mount is None:
        # Nothing new is deployed; servers already running keep serving what they loaded.
        loaded = Cond(MODEL_LOADED, False, resolution.reason, resolution.message)
        stalled = Cond(
            STALLED,
            resolution.stalled,
            "MissingReference" if resolution.stalled else "NotStalled",
            resolution.message if resolution.stalled else "",
        )
        ready = Cond(READY, False, "ModelNotLoaded", resolution.message)
        return finish(_kstatus(ready, loaded, stalled))

    ref = InferenceRef.from_object(obs.service)
    desired = desired_children(ref, spec, resolution.mount, settings)
    for kind, manifest in desired.by_kind().items():
        have = children.get(kind)
        if manifest is None:
            if have is not None:
                result.delete.append(have)
            continue
        wanted = _hash(manifest)
        if (have is None or have.spec_hash != wanted) and obs.in_flight.get(kind) != wanted:
            result.apply.append(manifest)
    if obs.blocked:
        result.requeue_after = 10.0  # try again: the user may fix it without touching us

    want = spec.desired_replicas
    dep_hash = _hash(desired.deployment)
    ready = _readiness(name, deployment, rollout, dep_hash, want)
    loaded = _model_loaded(spec, resolution, rollout, want)
    problems = list(obs.blocked)
    if rollout and rollout.replica_failure:
        problem = refusal(
            f"the pods of Deployment {namespace}/{name}", rollout.replica_failure, POD_FIX
        )
        problems.append(problem)
        loaded = Cond(
            MODEL_LOADED, False, problem[0], f"no server pod could be created: {problem[1]}"
        )
    if obs.pods_cannot_start:
        problems += obs.pods_cannot_start
        first = obs.pods_cannot_start[0]
        loaded = Cond(MODEL_LOADED, False, first[0], first[1])
    if rollout and rollout.stuck_message:
        problems.append(("ProgressDeadlineExceeded", rollout.stuck_message))
    stalled = Cond(
        STALLED,
        bool(problems),
        problems[0][0] if problems else "NotStalled",
        "; ".join(message for _, message in problems),
    )
    return finish(_kstatus(ready, loaded, stalled))


def _hash(manifest: dict[str, Any]) -> str:
    return str(manifest["metadata"]["annotations"][contract.ANNOTATION_SPEC_HASH])


def _readiness(
    name: str, deployment: ChildView | None, rollout: Rollout | None, wanted_hash: str, want: int
) -> Cond:
    """Ready only when the current Deployment has the desired replicas updated and available."""
    if deployment is None or rollout is None:
        return Cond(READY, False, "Deploying", f"creating Deployment {name}")
    if deployment.spec_hash != wanted_hash or rollout.observed_generation < rollout.generation:
        return Cond(READY, False, "Updating", f"updating Deployment {name} to the current spec")
    if rollout.updated_replicas < want:
        return Cond(
            READY, False, "RollingOut", f"{rollout.updated_replicas}/{want} replicas updated"
        )
    if rollout.available_replicas < want:
        return Cond(
            READY,
            False,
            "ReplicasUnavailable",
            f"{rollout.available_replicas}/{want} replicas available",
        )
    if want == 0:
        return Cond(READY, True, "ScaledToZero", "spec.replicas is 0: no server runs")
    return Cond(READY, True, "Available", f"{rollout.available_replicas}/{want} replicas available")


def _model_loaded(
    spec: InferenceServiceSpec, resolution: Resolution, rollout: Rollout | None, want: int
) -> Cond:
    model = resolution.model
    if spec.model.from_training_job is not None:
        source = (
            f"TrainingJob {spec.model.from_training_job}'s checkpoints (newest committed: "
            f"step {model.get('step')})"
        )
    else:
        source = f"checkpoints in {model['claimName']}:{model['path']}"
    if rollout is not None and rollout.ready_replicas > 0:
        # A server is ready only once it loaded a committed checkpoint (its readiness probe).
        return Cond(MODEL_LOADED, True, "Loaded", f"serving {source}")
    if want == 0:
        return Cond(MODEL_LOADED, False, "ScaledToZero", "spec.replicas is 0: no server runs")
    return Cond(
        MODEL_LOADED,
        False,
        "Loading",
        f"waiting for a server to load {source}; `kubectl logs` of its pods says more if this "
        "takes long",
    )


def _kstatus(ready: Cond, loaded: Cond, stalled: Cond) -> list[Cond]:
    """Ready and ModelLoaded, plus kstatus' Reconciling and Stalled."""
    busy = not ready.status and not stalled.status
    reconciling = Cond(
        RECONCILING,
        busy,
        ready.reason if busy else "Reconciled",
        ready.message if busy else "",
    )
    return [ready, loaded, reconciling, stalled]


def _transition_events(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Events a user should see in `kubectl describe`: problems, and the model changing."""
    before = {c["type"]: c for c in old.get("conditions", [])}
    after = {c["type"]: c for c in new["conditions"]}
    events = []
    stalled = stalled_event(old.get("conditions", []), new["conditions"])
    if stalled:
        events.append(stalled)
    loaded = after[MODEL_LOADED]
    if loaded["status"] == "True" and before.get(MODEL_LOADED, {}).get("status") != "True":
        events.append(("Normal", "ModelLoaded", loaded["message"]))
    old_step = (old.get("model") or {}).get("step")
    new_step = (new.get("model") or {}).get("step")
    if new_step is not None and new_step != old_step:
        events.append(
            (
                "Normal",
                "NewCheckpoint",
                f"TrainingJob {new['model'].get('trainingJob')} committed the checkpoint of step "
                f"{new_step}"
                + ("; running servers load it without a restart" if old_step is not None else ""),
            )
        )
    return events
