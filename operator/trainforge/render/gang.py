"""Gang scheduling integrations behind one table: what each gang policy puts on the worker
pods (labels, annotations, scheduler name) and the PodGroup object it needs, if any.

Each entry follows the integration's own API contract (Volcano, scheduler-plugins'
Coscheduling); adding one is one entry here. Kueue is not here: it admits the whole job
through a Workload the operator owns (render/kueue.py), so its pods carry nothing of Kueue's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainforge.api.trainingjob import TrainingJobSpec

VOLCANO_API_VERSION = "scheduling.volcano.sh/v1beta1"
VOLCANO_SCHEDULER = "volcano"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
COSCHEDULING_API_VERSION = "scheduling.x-k8s.io/v1alpha1"
COSCHEDULING_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"

# (group name, spec) -> labels or annotations on every worker pod.
PodMetadata = Callable[[str, TrainingJobSpec], dict[str, str]]


def _none(group: str, spec: TrainingJobSpec) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Gang:
    labels: PodMetadata = _none
    annotations: PodMetadata = _none
    # The scheduler the integration requires; None: spec.scheduling.schedulerName (if any).
    scheduler_name: str | None = None
    # The PodGroup's apiVersion and spec; None: the integration needs no PodGroup object.
    pod_group_api_version: str | None = None
    pod_group_spec: Callable[[TrainingJobSpec], dict[str, Any]] | None = None


def _volcano_group(spec: TrainingJobSpec) -> dict[str, Any]:
    group: dict[str, Any] = {"minMember": spec.workers}
    if spec.scheduling.queue_name is not None:
        group["queue"] = spec.scheduling.queue_name
    if spec.scheduling.priority_class_name is not None:
        group["priorityClassName"] = spec.scheduling.priority_class_name
    if spec.resources.gpus_per_worker:
        # Lets Volcano hold the whole gang in its queue until the GPUs for all of it are
        # free; CPU and memory are left to the per-pod scheduling.
        group["minResources"] = {
            spec.resources.gpu_resource: str(spec.workers * spec.resources.gpus_per_worker)
        }
    return group


def _coscheduling_group(spec: TrainingJobSpec) -> dict[str, Any]:
    group: dict[str, Any] = {"minMember": spec.workers}
    if spec.scheduling.gang.schedule_timeout_seconds is not None:
        group["scheduleTimeoutSeconds"] = spec.scheduling.gang.schedule_timeout_seconds
    return group


GANGS: dict[str, Gang] = {
    "Volcano": Gang(
        annotations=lambda group, spec: {VOLCANO_GROUP_ANNOTATION: group},
        scheduler_name=VOLCANO_SCHEDULER,
        pod_group_api_version=VOLCANO_API_VERSION,
        pod_group_spec=_volcano_group,
    ),
    "Coscheduling": Gang(
        labels=lambda group, spec: {COSCHEDULING_GROUP_LABEL: group},
        pod_group_api_version=COSCHEDULING_API_VERSION,
        pod_group_spec=_coscheduling_group,
    ),
}
NO_GANG = Gang()


def gang(spec: TrainingJobSpec) -> Gang:
    """The integration of spec.scheduling.gang.policy (None and Kueue: nothing on the pods)."""
    return GANGS.get(spec.scheduling.gang.policy, NO_GANG)
