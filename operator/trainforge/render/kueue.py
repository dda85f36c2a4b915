"""A Kueue-managed TrainingJob's Workload, and where Kueue's admission puts its workers.

trainforge is a Kueue "external framework" (Kueue's integrations.externalFrameworks): like
Kueue's own job integrations (pkg/controller/jobframework), the operator owns one Workload
per job whose single pod set is the gang, starts the workers only once Kueue admits it, and
injects what the admission assigns (the flavors' node labels and tolerations, the topology
domain of each worker). Pure functions; reconcile/kueue.py reads the Workload's status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trainforge_contract as contract
from trainforge.api.trainingjob import TrainingJobSpec
from trainforge.render.common import OwnerRef, child_metadata

WORKLOAD_API_VERSION = "kueue.x-k8s.io/v1beta2"
RESOURCE_FLAVOR_API_VERSION = "kueue.x-k8s.io/v1beta2"
PRIORITY_CLASS_API_VERSION = "scheduling.k8s.io/v1"
POD_SET = "workers"
# Pod fields that name one worker, not the pod set Kueue counts quota for.
_PER_WORKER_FIELDS = ("hostname",)


def kueue_managed(spec: TrainingJobSpec) -> bool:
    return spec.scheduling.gang.policy == "Kueue"


def workload_name(job_name: str) -> str:
    return job_name


def workload(
    job: OwnerRef,
    spec: TrainingJobSpec,
    worker: Mapping[str, Any],
    priority: int | None,
) -> dict[str, Any]:
    """The job's Workload: one pod set of `spec.workers` copies of `worker` (a rendered worker
    pod), in the LocalQueue spec.scheduling.queueName. `priority` is the value of
    spec.scheduling.priorityClassName (Kueue's webhook would fill it in; it is not relied on).
    spec.suspend deactivates the Workload, so a suspended job releases its quota."""
    pod_spec = {k: v for k, v in worker["spec"].items() if k not in _PER_WORKER_FIELDS}
    pod_set: dict[str, Any] = {
        "name": POD_SET,
        "count": spec.workers,
        "template": {"spec": pod_spec},
    }
    topology = spec.scheduling.topology
    if topology is not None:
        pod_set["topologyRequest"] = {topology.mode.lower(): topology.key}
    wl_spec: dict[str, Any] = {
        "queueName": spec.scheduling.queue_name,
        "podSets": [pod_set],
        "active": not spec.suspend,
    }
    if spec.scheduling.priority_class_name is not None and priority is not None:
        wl_spec["priorityClassRef"] = {
            "group": "scheduling.k8s.io",
            "kind": "PriorityClass",
            "name": spec.scheduling.priority_class_name,
        }
        wl_spec["priority"] = priority
    labels = {
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
        contract.LABEL_JOB_NAME: job.name,
    }
    return {
        "apiVersion": WORKLOAD_API_VERSION,
        "kind": "Workload",
        "metadata": child_metadata(job, workload_name(job.name), labels),
        "spec": wl_spec,
    }


def shape(wl: Mapping[str, Any]) -> tuple[Any, ...]:
    """What Kueue admits a Workload by: its queue, priority, pod count, each container's
    requests and the topology request. A queued Workload whose shape no longer matches the
    job's spec is replaced (Kueue's jobframework does the same for its kinds)."""
    spec = wl.get("spec", {})
    pod_sets = [
        (
            p.get("count"),
            [
                c.get("resources", {}).get("requests", {})
                for c in p.get("template", {}).get("spec", {}).get("containers", [])
            ],
            p.get("topologyRequest"),
        )
        for p in spec.get("podSets", [])
    ]
    priority_class = spec.get("priorityClassRef", {}).get("name")
    return spec.get("queueName"), priority_class, spec.get("priority"), pod_sets


@dataclass(frozen=True)
class Placement:
    """What an admission adds to one worker pod."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()


def placements(
    admission: Mapping[str, Any], flavors: Mapping[str, Mapping[str, Any]], workers: int
) -> list[Placement]:
    """One Placement per worker index from the Workload's status.admission: every flavor's
    nodeLabels and tolerations (ResourceFlavor specs by name, as jobframework's PodSetInfo),
    plus, under Topology-Aware Scheduling, the node labels of the worker's assigned domain."""
    assignment: Mapping[str, Any] = next(
        (a for a in admission.get("podSetAssignments", []) if a.get("name") == POD_SET), {}
    )
    selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    for name in sorted(set(assignment.get("flavors", {}).values())):
        flavor = flavors.get(name, {})
        selector.update(flavor.get("nodeLabels", {}))
        tolerations += [t for t in flavor.get("tolerations", []) if t not in tolerations]
    domains = topology_domains(assignment.get("topologyAssignment"))
    result = []
    for index in range(workers):
        per_pod = dict(selector)
        if domains:
            per_pod.update(domains[min(index, len(domains) - 1)])
        result.append(Placement(per_pod, tuple(tolerations)))
    return result


def topology_domains(assignment: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """Kueue's v1beta2 TopologyAssignment expanded to one {level label: value} per pod, in
    order: `slices` each hold `domainCount` domains, whose values per level and pod counts
    are either one `universal` value or `individual` ones (roots with a common prefix and
    suffix)."""
    if not assignment:
        return []
    levels: Sequence[str] = assignment.get("levels", [])
    pods: list[dict[str, str]] = []
    for piece in assignment.get("slices", []):
        count = int(piece.get("domainCount", 0))
        values = [_expand(level, count) for level in piece.get("valuesPerLevel", [])]
        counts = _expand(piece.get("podCounts", {}), count)
        for d in range(count):
            domain = {levels[i]: str(values[i][d]) for i in range(len(levels))}
            pods += [domain] * int(counts[d])
    return pods


def _expand(values: Mapping[str, Any], count: int) -> list[Any]:
    if "universal" in values:
        return [values["universal"]] * count
    individual = values.get("individual", {})
    if isinstance(individual, list):  # pod counts: a plain list
        return list(individual)
    prefix, suffix = individual.get("prefix", ""), individual.get("suffix", "")
    return [f"{prefix}{root}{suffix}" for root in individual.get("roots", [])]


def place(pod: dict[str, Any], placement: Placement) -> dict[str, Any]:
    """`pod` with the admission's node labels and tolerations added (the pod's own win on a
    conflicting node label: the user asked for it). Its spec hash stays the rendered one, so
    an admission is not a spec change."""
    spec = dict(pod["spec"])
    if placement.node_selector:
        spec["nodeSelector"] = {**placement.node_selector, **spec.get("nodeSelector", {})}
    if placement.tolerations:
        own = spec.get("tolerations", [])
        spec["tolerations"] = [*own, *(t for t in placement.tolerations if t not in own)]
    return {**pod, "spec": spec}
