"""Gang policy Kueue, pure parts: the Workload a job owns, where an admission puts the workers,
the Workload status writes, and the two policies (reconcile/trainingjob_policies/kueue_*).

tests/cluster/test_kueue.py proves the same against a real Kueue manager.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import trainforge_contract as contract
from trainforge.api import parse_training_job_spec
from trainforge.reconcile import kueue
from trainforge.reconcile.kueue import KueueView
from trainforge.reconcile.trainingjob import Observed, Plan, PodView, plan
from trainforge.render.common import RenderSettings
from trainforge.render.kueue import Placement, place, placements, topology_domains, workload
from trainforge.render.trainingjob import JobRef, worker_pod

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
JOB = JobRef(name="llm", namespace="ml", uid="u")
SCHEDULING = {"gang": {"policy": "Kueue"}, "queueName": "team"}


def spec(**scheduling: Any) -> Any:
    return parse_training_job_spec(
        {
            "workers": 3,
            "image": "trainer:1",
            "resources": {"gpusPerWorker": 8},
            "scheduling": {**SCHEDULING, **scheduling},
        }
    )


def rendered_workload(**scheduling: Any) -> dict[str, Any]:
    s = spec(**scheduling)
    return workload(JOB, s, worker_pod(JOB, s, 0, 0, RenderSettings()), 1000)


def test_workload_is_one_pod_set_of_the_whole_gang_in_the_local_queue() -> None:
    wl = rendered_workload()
    assert wl["metadata"]["name"] == "llm"
    assert wl["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
    assert wl["metadata"]["ownerReferences"][0]["controller"] is True
    assert wl["spec"]["queueName"] == "team"
    assert wl["spec"]["active"] is True
    [pod_set] = wl["spec"]["podSets"]
    assert pod_set["count"] == 3
    container = pod_set["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    # A per-worker name would make Kueue's pod set describe worker 0 only.
    assert "hostname" not in pod_set["template"]["spec"]
    assert "priorityClassRef" not in wl["spec"]


def test_workload_carries_the_priority_and_the_topology_request() -> None:
    wl = rendered_workload(
        priorityClassName="urgent", topology={"key": "example.com/rack", "mode": "Preferred"}
    )
    assert wl["spec"]["priority"] == 1000
    assert wl["spec"]["priorityClassRef"]["name"] == "urgent"
    assert wl["spec"]["podSets"][0]["topologyRequest"] == {"preferred": "example.com/rack"}


def test_kueue_topology_is_not_pod_affinity() -> None:
    s = spec(topology={"key": "example.com/rack"})
    assert "podAffinity" not in worker_pod(JOB, s, 0, 0, RenderSettings())["spec"].get(
        "affinity", {}
    )


def test_placements_bring_flavor_labels_tolerations_and_each_workers_domain() -> None:
    admission = {
        "clusterQueue": "cq",
        "podSetAssignments": [
            {
                "name": "workers",
                "flavors": {"nvidia.com/gpu": "h100", "cpu": "h100"},
                "topologyAssignment": {
                    "levels": ["rack", "kubernetes.io/hostname"],
                    "slices": [
                        {
                            "domainCount": 2,
                            "valuesPerLevel": [
                                {"universal": "rack-a"},
                                {"individual": {"prefix": "node-", "roots": ["1", "2"]}},
                            ],
                            "podCounts": {"individual": [2, 1]},
                        }
                    ],
                },
            }
        ],
    }
    toleration = {"key": "pool", "operator": "Exists", "effect": "NoSchedule"}
    flavors = {"h100": {"nodeLabels": {"pool": "h100"}, "tolerations": [toleration]}}
    spots = placements(admission, flavors, 3)
    assert [p.node_selector for p in spots] == [
        {"pool": "h100", "rack": "rack-a", "kubernetes.io/hostname": "node-1"},
        {"pool": "h100", "rack": "rack-a", "kubernetes.io/hostname": "node-1"},
        {"pool": "h100", "rack": "rack-a", "kubernetes.io/hostname": "node-2"},
    ]
    assert all(p.tolerations == (toleration,) for p in spots)


def test_topology_domains_of_several_slices_with_universal_counts() -> None:
    assignment = {
        "levels": ["rack"],
        "slices": [
            {
                "domainCount": 1,
                "valuesPerLevel": [{"universal": "a"}],
                "podCounts": {"universal": 2},
            },
            {
                "domainCount": 2,
                "valuesPerLevel": [{"individual": {"roots": ["b", "c"], "suffix": "-x"}}],
                "podCounts": {"universal": 1},
            },
        ],
    }
    assert topology_domains(assignment) == [
        {"rack": "a"},
        {"rack": "a"},
        {"rack": "b-x"},
        {"rack": "c-x"},
    ]
    assert topology_domains(None) == []


def test_place_keeps_the_users_node_labels_and_the_rendered_hash() -> None:
    pod = {
        "metadata": {"annotations": {contract.ANNOTATION_SPEC_HASH: "h"}},
        "spec": {"nodeSelector": {"pool": "mine"}, "tolerations": [{"key": "a"}]},
    }
    placed = place(pod, Placement({"pool": "h100", "rack": "r1"}, ({"key": "a"}, {"key": "b"})))
    assert placed["spec"]["nodeSelector"] == {"pool": "mine", "rack": "r1"}
    assert placed["spec"]["tolerations"] == [{"key": "a"}, {"key": "b"}]
    assert placed["metadata"] == pod["metadata"]


# --- Workload status writes -------------------------------------------------------------------


def wl_status(*conditions: tuple[str, str, str], admission: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {"queueName": "team", "active": True},
        "status": {
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": f"{r} message"}
                | {"lastTransitionTime": "2026-11-30T11:00:00Z"}
                for t, s, r in conditions
            ],
            **({"admission": {"clusterQueue": "cq", "podSetAssignments": []}} if admission else {}),
        },
    }


ADMITTED = (("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"))
PREEMPTED = (*ADMITTED, ("Evicted", "True", "Preempted"))


def test_release_clears_the_admission_and_requeues_after_a_preemption() -> None:
    patch = kueue.release_status(wl_status(*PREEMPTED), "2026-11-30T12:00:00Z")
    assert patch is not None
    assert patch["admission"] is None
    by_type = {c["type"]: c for c in patch["conditions"]}
    assert by_type["QuotaReserved"]["status"] == "False"
    assert by_type["QuotaReserved"]["reason"] == "Pending"
    assert by_type["Admitted"]["status"] == "False"
    assert by_type["Requeued"]["status"] == "True"
    assert by_type["Evicted"]["status"] == "True"  # Kueue's own condition stays
    assert by_type["QuotaReserved"]["observedGeneration"] == 2


@pytest.mark.parametrize(
    ("conditions", "admission"),
    [(ADMITTED, True), ((("Evicted", "True", "Preempted"),), False)],
)
def test_release_writes_nothing_unless_evicted_with_a_reservation(
    conditions: tuple[tuple[str, str, str], ...], admission: bool
) -> None:
    assert kueue.release_status(wl_status(*conditions, admission=admission), "now") is None


def test_finished_is_written_once() -> None:
    patch = kueue.finished_status(wl_status(*ADMITTED), True, "done", "2026-11-30T12:00:00Z")
    assert patch is not None
    assert {"type": "Finished", "status": "True", "reason": "Succeeded"}.items() <= next(
        c for c in patch["conditions"] if c["type"] == "Finished"
    ).items()
    assert kueue.finished_status(wl_status(("Finished", "True", "Succeeded")), True, "", "") is None


# --- the policies, through plan ---------------------------------------------------------------


def job(status: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": "llm", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": {"workers": 2, "image": "trainer:1", "scheduling": SCHEDULING, **extra},
        "status": status or {},
    }


def run(job_: dict[str, Any], pods: list[PodView], view: KueueView | None) -> Plan:
    return plan(Observed(job=job_, pods=pods, now=NOW, kueue=view), RenderSettings())


def cond(result: Plan, type_: str) -> dict[str, Any]:
    return next(c for c in result.status["conditions"] if c["type"] == type_)


def pod(index: int, attempt: int = 0, **kw: Any) -> PodView:
    return PodView(f"llm-worker-{index}", f"u{index}", index, attempt, "Running", **kw)


def test_new_job_creates_its_workload_and_no_worker() -> None:
    result = run(job(), [], KueueView(None))
    assert result.workload_create is not None
    assert result.workload_create["spec"]["podSets"][0]["count"] == 2
    assert not [m for m in result.create if m["kind"] == "Pod"]
    assert result.status["phase"] == "Suspended"
    assert cond(result, "Suspended")["reason"] == "WaitingForKueue"


def test_queued_job_says_why_in_kueues_words() -> None:
    pending = wl_status(("QuotaReserved", "False", "Pending"), admission=False)
    result = run(job(), [], KueueView(pending))
    assert result.workload_create is None
    assert "LocalQueue team: Pending message" in cond(result, "Suspended")["message"]
    assert cond(result, "Ready")["status"] == "True"  # as for spec.suspend: a state reached


def test_admitted_job_creates_its_gang_on_the_flavors_nodes() -> None:
    admitted = wl_status(*ADMITTED)
    admitted["status"]["admission"]["podSetAssignments"] = [
        {"name": "workers", "flavors": {"cpu": "pool-a"}}
    ]
    view = KueueView(admitted, {"pool-a": {"nodeLabels": {"pool": "a"}}})
    result = run(job(), [], view)
    created = [m for m in result.create if m["kind"] == "Pod"]
    assert len(created) == 2
    assert all(p["spec"]["nodeSelector"] == {"pool": "a"} for p in created)


def test_preemption_stops_the_gang_as_an_uncounted_restart() -> None:
    result = run(job({"phase": "Running"}), [pod(0), pod(1)], KueueView(wl_status(*PREEMPTED)))
    assert result.status["phase"] == "Suspended"
    assert cond(result, "Suspended")["reason"] == "EvictedByKueue"
    assert {p.name for p in result.delete_pods} == {"llm-worker-0", "llm-worker-1"}
    assert result.status["restarts"] == 0
    assert result.status["restartAttempt"] == 1
    assert not result.counted_restart
    # The quota is handed back only once the workers are gone (they checkpoint first).
    assert result.workload_status is None


def test_evicted_job_hands_its_quota_back_once_every_worker_is_gone() -> None:
    stopping = [pod(0, deleting=True)]
    status = {"phase": "Suspended", "restartAttempt": 1}
    assert run(job(status), stopping, KueueView(wl_status(*PREEMPTED))).workload_status is None
    result = run(job(status), [], KueueView(wl_status(*PREEMPTED)))
    assert result.workload_status is not None
    assert result.workload_status["admission"] is None


def test_spec_suspend_deactivates_the_workload() -> None:
    result = run(job(suspend=True), [], KueueView(wl_status(*ADMITTED)))
    assert result.workload_active is False
    assert cond(result, "Suspended")["reason"] == "SpecSuspended"


def test_finished_job_marks_its_workload_finished() -> None:
    status = {
        "phase": "Succeeded",
        "conditions": [
            {"type": "Succeeded", "status": "True", "reason": "AllSucceeded"}
            | {"lastTransitionTime": "2026-11-30T11:00:00Z", "message": "all done"}
        ],
    }
    result = run(job(status), [], KueueView(wl_status(*ADMITTED)))
    assert result.workload_status is not None
    assert any(c["type"] == "Finished" for c in result.workload_status["conditions"])


def test_without_the_integration_the_job_stalls_with_the_fix() -> None:
    result = run(job(), [], None)
    assert cond(result, "Stalled")["reason"] == "KueueNotEnabled"
    assert "kueue.enabled=true" in cond(result, "Stalled")["message"]
    assert not result.create


def queued_workload(workers: int) -> dict[str, Any]:
    """The Workload the operator made for `workers` workers, as Kueue left it: queued."""
    made = run(job(workers=workers), [], KueueView(None)).workload_create
    assert made is not None
    made["metadata"]["uid"] = "wl-uid"
    made["status"] = {"conditions": [{"type": "QuotaReserved", "status": "False"}]}
    return made


def test_queued_workload_of_an_edited_job_is_replaced() -> None:
    assert run(job(workers=2), [], KueueView(queued_workload(2))).workload_delete is None
    assert run(job(workers=3), [], KueueView(queued_workload(2))).workload_delete == "wl-uid"
    reserved = queued_workload(2)
    reserved["status"]["conditions"][0]["status"] = "True"
    assert run(job(workers=3), [], KueueView(reserved)).workload_delete is None
